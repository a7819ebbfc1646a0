"""Fair share across queues and aging within a queue: the orders of one admission pass.

The share of a queue is its weighted dominant share of GPUs: over every pool with ready GPUs, the
queue's decayed GPU usage in that pool (``AdmissionSnapshot.usage``, kept by ``decay_usage``) plus the
GPUs this pass has admitted or reserved for it there, divided by the pool's capacity; the largest of
those fractions, divided by the queue's weight. The queue with the lowest share offers the next head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["decay_usage", "dominant_share", "effective_priority", "is_starving"]

Key = tuple[str, str]  # (queue, pool)


def decay_usage(
    previous: Mapping[Key, float], held: Mapping[Key, int], dt: float, half_life_s: float
) -> dict[Key, float]:
    """Exponentially weighted GPUs in use per (queue, pool): after ``dt`` seconds holding ``held``, the
    old value has moved toward ``held`` by half every ``half_life_s``. Entries below 0.01 GPU are dropped."""
    keep = 0.5 ** (max(dt, 0.0) / half_life_s) if half_life_s > 0 else 0.0
    usage: dict[Key, float] = {}
    for key in previous.keys() | held.keys():
        value = held.get(key, 0) + (previous.get(key, 0.0) - held.get(key, 0)) * keep
        if value >= 0.01:  # below a hundredth of a GPU: forgotten
            usage[key] = value
    return usage


def dominant_share(
    queue: str,
    weight: float,
    usage: Mapping[Key, float],
    in_pass: Mapping[Key, int],
    capacity: Mapping[str, int],
) -> float:
    """The queue's weighted dominant share (see the module docstring)."""
    share = 0.0
    for pool, gpus in capacity.items():
        if gpus > 0:
            share = max(share, (usage.get((queue, pool), 0.0) + in_pass.get((queue, pool), 0)) / gpus)
    return share / weight


def effective_priority(priority: int, queued_since: float, now: float, aging_s: float) -> int:
    """Priority + one level per ``aging_s`` seconds waited: a low-priority run is not passed over forever."""
    waited = max(0.0, now - queued_since)
    return priority + (math.floor(waited / aging_s) if aging_s > 0 else 0)


def is_starving(queued_since: float, now: float, starvation_s: float) -> bool:
    return now - queued_since > starvation_s

"""When a restartable process (an engine) that exited is started again: pure, shared by the Ray member
actor (``backends/ray/member.py``) and the colocated-engine launcher in a trainer pod
(``worker/colocated.py``), so both give up on a crash loop at the same bound as Kubernetes engine pods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RestartPolicy", "restart_delay"]


@dataclass(frozen=True)
class RestartPolicy:
    """When an exited process is started again: after ``backoff_s`` doubled per recent exit (at most
    ``max_backoff_s``), unless it exited ``max_restarts`` + 1 times within ``window_s``."""

    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0


def restart_delay(exits: Sequence[float], now: float, policy: RestartPolicy) -> float | None:
    """Seconds to wait before the next start, given the times of every exit so far; None: give up."""
    recent = sum(1 for at in exits if now - at <= policy.window_s)
    if recent > policy.max_restarts:
        return None
    return min(policy.max_backoff_s, policy.backoff_s * 2 ** max(0, recent - 1))

"""GRPO-RoC: Resample-on-Correct down-sampling of an oversampled group, then group-normalised advantages.

rStar2-Agent's GRPO-RoC (Shang et al., "rStar2-Agent: Agentic Reasoning Technical Report",
arXiv 2508.20722) rolls out more trajectories per prompt than it trains on and down-samples them
*asymmetrically*: negatives uniformly at random, so the batch keeps diverse failure modes, and positives
preferring those with fewer tool-call errors and format issues, so a correct answer reached through
crashing code is not reinforced as much as a clean one. The group advantage is then GRPO's on the kept group.

The tool-error term follows the authors' release (github.com/microsoft/rStar at a275839,
``rstar2-agent/down_sample/``, ``calc_error_ratio_weight``): the share of tool responses that report an
error, and 0.5 for a trajectory that called no tool at all. The rest is orch's choice, where the release
differs: it keeps the original positive/negative ratio (with minimum counts) and takes the lowest-penalty
trajectories of each side in order, and computes no format term; orch follows the paper's description
instead (uniform negatives, positives drawn by quality, a format term) with at most half negatives:

- **Split.** A trajectory is negative when ``reward <= 0`` (the release's test), positive otherwise.
- **How many of each,** for a target ``size`` ``G``: negatives ``n = min(#neg, G // 2)``, positives
  ``p = min(#pos, G - n)``; when positives run short the remaining ``G - n - p`` slots go to further
  negatives. So the kept group holds more than ``G // 2`` negatives only when fewer than ``G - G // 2``
  positives exist, fewer than ``G // 2`` only when that few negatives exist, and is smaller than ``G``
  only when the whole group is (then everything is kept).
- **Negatives** are drawn uniformly without replacement.
- **Positives** are drawn without replacement, each draw picking a remaining trajectory with probability
  proportional to ``1 / (PENALTY_FLOOR + penalty)``, where ``penalty = p_err + p_format``:
  ``p_err = tool_errors / tool_calls`` (0.5 with no tool call) and
  ``p_format = min(1, format_issues / max(1, turns))``. The penalty lies in [0, 2]; the floor (0.1) keeps
  every weight finite, so a clean trajectory (penalty 0, weight 10) is 6x as likely per draw as one
  with half its calls failing (weight ~1.67) and 21x one that fails everything and has a format issue
  every turn (weight ~0.48).
- **Advantages:** ``(reward - mean) / (std + ADVANTAGE_EPS)`` over the kept group, with the population
  standard deviation; a group whose rewards are all equal gets all-zero advantages.

Everything is deterministic given the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

__all__ = [
    "ADVANTAGE_EPS",
    "NO_TOOL_ERROR_RATIO",
    "PENALTY_FLOOR",
    "RocGroup",
    "Scored",
    "group_advantages",
    "penalty",
    "resample_on_correct",
]

PENALTY_FLOOR = 0.1
NO_TOOL_ERROR_RATIO = 0.5
ADVANTAGE_EPS = 1e-6


class Scored(Protocol):
    """What RoC reads of a trajectory: its reward and how clean its tool use and format were."""

    @property
    def reward(self) -> float: ...
    @property
    def tool_calls(self) -> int: ...
    @property
    def tool_errors(self) -> int: ...
    @property
    def format_issues(self) -> int: ...
    @property
    def turns(self) -> int: ...


T = TypeVar("T", bound=Scored)


@dataclass(frozen=True)
class RocGroup(Generic[T]):
    """The kept trajectories (positives first, each side in draw order) and their advantages."""

    kept: tuple[T, ...]
    advantages: tuple[float, ...]
    positives: int
    negatives: int
    dropped: int


def penalty(trajectory: Scored) -> float:
    """``p_err + p_format`` in [0, 2] (see the module docstring)."""
    if trajectory.tool_calls > 0:
        p_err = min(1.0, trajectory.tool_errors / trajectory.tool_calls)
    else:
        p_err = NO_TOOL_ERROR_RATIO
    p_format = min(1.0, trajectory.format_issues / max(1, trajectory.turns))
    return p_err + p_format


def resample_on_correct(group: Sequence[T], size: int, rng: random.Random) -> RocGroup[T]:
    """Down-sample one prompt's oversampled ``group`` to ``size`` trajectories and score them."""
    if size < 1:
        raise ValueError(f"RoC target group size must be at least 1, got {size}")
    positives = [item for item in group if item.reward > 0]
    negatives = [item for item in group if item.reward <= 0]
    n_neg = min(len(negatives), size // 2)
    n_pos = min(len(positives), size - n_neg)
    n_neg = min(len(negatives), size - n_pos)
    kept_pos = _weighted_without_replacement(
        positives, [1.0 / (PENALTY_FLOOR + penalty(item)) for item in positives], n_pos, rng
    )
    kept_neg = rng.sample(negatives, n_neg)
    kept = (*kept_pos, *kept_neg)
    return RocGroup(
        kept=kept,
        advantages=group_advantages([item.reward for item in kept]),
        positives=n_pos,
        negatives=n_neg,
        dropped=len(group) - len(kept),
    )


def group_advantages(rewards: Sequence[float]) -> tuple[float, ...]:
    """GRPO's ``(r - mean) / (std + eps)`` with the population standard deviation."""
    if not rewards:
        return ()
    mean = math.fsum(rewards) / len(rewards)
    std = math.sqrt(math.fsum((reward - mean) ** 2 for reward in rewards) / len(rewards))
    return tuple((reward - mean) / (std + ADVANTAGE_EPS) for reward in rewards)


def _weighted_without_replacement(
    items: Sequence[T], weights: Sequence[float], count: int, rng: random.Random
) -> list[T]:
    """``count`` successive draws, each picking a remaining item with probability ∝ its weight."""
    pool = list(zip(items, weights, strict=True))
    chosen: list[T] = []
    for _ in range(count):
        target = rng.random() * math.fsum(weight for _, weight in pool)
        index = len(pool) - 1  # rounding can leave target just above the running sum
        running = 0.0
        for position, (_, weight) in enumerate(pool):
            running += weight
            if target < running:
                index = position
                break
        chosen.append(pool.pop(index)[0])
    return chosen

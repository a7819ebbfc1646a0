"""Off-policy trajectories (``rollout.max_staleness``): which ones are too old to train on (pure).

Each engine request of a trajectory records the weights version the engine answered with
(``Trajectory.weights_versions``; None where the engine does not say). The trainer's *current* version is
the newest any engine has reported (it only grows: the trainer loads newer weights, never older ones). A
trajectory is stale when any of its turns was generated with a known version older than
``current - max_staleness``; a turn of unknown version is trusted. With no known current version nothing
is stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the rollout stack (aiohttp, sandboxes) is not needed to decide
    from orchestrator.worker.rollouts import Trajectory

__all__ = ["StaleSplit", "current_version", "split_stale", "stale_engines"]


def current_version(previous: int | None, trajectories: Iterable[Trajectory]) -> int | None:
    """The newest weights version known: ``previous`` or any reported by ``trajectories``."""
    known = [v for t in trajectories for v in t.weights_versions if v is not None]
    if previous is not None:
        known.append(previous)
    return max(known, default=None)


def _too_old(version: int | None, current: int | None, max_staleness: int) -> bool:
    return version is not None and current is not None and version < current - max_staleness


@dataclass(frozen=True)
class StaleSplit:
    """Trajectories that may be trained on (``fresh``) and those too old (``stale``), in input order."""

    fresh: tuple[Trajectory, ...]
    stale: tuple[Trajectory, ...]


def split_stale(trajectories: Sequence[Trajectory], current: int | None, max_staleness: int) -> StaleSplit:
    """Split ``trajectories`` by whether any turn came from weights older than ``current - max_staleness``."""
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
    fresh, stale = [], []
    for t in trajectories:
        old = any(_too_old(v, current, max_staleness) for v in t.weights_versions)
        (stale if old else fresh).append(t)
    return StaleSplit(tuple(fresh), tuple(stale))


def stale_engines(trajectories: Iterable[Trajectory], current: int | None, max_staleness: int) -> list[int]:
    """The engines (indices, sorted) that answered a request with too old weights: those to re-sync."""
    found = {
        engine
        for t in trajectories
        for engine, version in zip(t.engines, t.weights_versions, strict=False)
        if _too_old(version, current, max_staleness)
    }
    return sorted(found)

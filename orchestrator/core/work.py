"""Work the controller asks a training executor to do, and what comes back: plain values."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckpointPlan", "FilterOutcome", "FilterPlan", "StepOutcome", "StepPlan", "Work"]


@dataclass(frozen=True)
class StepPlan:
    """One training step: a rollout phase at the stage's limits, then a train phase."""

    run_id: str
    step: int
    stage_index: int
    attempt: int
    max_response_tokens: int
    max_turns: int
    checkpoint_after: bool
    checkpoint_uri: str
    dropped_problems: frozenset[int] = frozenset()


@dataclass(frozen=True)
class StepOutcome:
    rollouts: int
    generated_tokens: int
    rollout_seconds: float
    train_seconds: float
    checkpoint_seconds: float
    preemptions: int
    correct: int
    gpu_busy_seconds: float
    gpu_held_seconds: float
    # Per engine, when the executor knows: share of the rollout phase it generated, and its KV headroom
    # at its fullest; the dispatcher's central queue at its longest.
    engine_busy_ratio: tuple[float, ...] = ()
    engine_kv_free_ratio: tuple[float, ...] = ()
    queue_peak: int = 0
    # What the scored rollouts (``rollouts``) did: turns, tool calls (and those that did not end "ok"),
    # their rewards summed; trajectories masked for infrastructure faults; off-policy trajectories
    # (``rollout.max_staleness``) regenerated, and dropped when still stale; the weights version the
    # rollouts were generated with when the engines report one (the newest).
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    reward_sum: float = 0.0
    infra_masked: int = 0
    stale_dropped: int = 0
    stale_regenerated: int = 0
    weights_version: int | None = None

    @property
    def seconds(self) -> float:
        return self.rollout_seconds + self.train_seconds + self.checkpoint_seconds


@dataclass(frozen=True)
class CheckpointPlan:
    """Save a checkpoint now, outside the every-N-steps rhythm (a stage boundary asked for it)."""

    run_id: str
    step: int
    attempt: int
    checkpoint_uri: str


@dataclass(frozen=True)
class FilterPlan:
    """Sample every still-active problem ``samples`` times with the current policy."""

    run_id: str
    stage_index: int
    attempt: int
    step: int
    samples: int
    threshold: int
    dropped_problems: frozenset[int] = frozenset()


@dataclass(frozen=True)
class FilterOutcome:
    correct: dict[int, int]  # problem id -> correct samples
    seconds: float
    gpu_busy_seconds: float
    gpu_held_seconds: float


Work = StepPlan | CheckpointPlan | FilterPlan

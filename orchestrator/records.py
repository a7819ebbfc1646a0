"""Value types shared by every layer: run state as frozen dataclasses, never ORM rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from orchestrator.errors import EXIT_CHECKS_FAILED

__all__ = [
    "Check",
    "CheckOutcome",
    "Checkpoint",
    "Event",
    "GpuReading",
    "GpuSample",
    "NewEvent",
    "Phase",
    "PreemptionRecord",
    "ProblemResult",
    "ProcessMemory",
    "Run",
    "RunPatch",
    "Stage",
    "StageUpdate",
    "Step",
    "WaitRecord",
    "Workload",
    "WorkloadStatus",
    "checks_exit_code",
]


class Phase(str, Enum):
    """Where a run is in its lifecycle (see ``orchestrator.core.lifecycle``)."""

    PENDING = "Pending"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    RESUMING = "Resuming"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)

    def __str__(self) -> str:
        return self.value


class WorkloadStatus(str, Enum):
    PENDING = "Pending"  # recorded in SQL, not yet seen running in the cluster
    RUNNING = "Running"
    FAILED = "Failed"
    DELETED = "Deleted"

    @property
    def live(self) -> bool:
        return self in (WorkloadStatus.PENDING, WorkloadStatus.RUNNING)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Run:
    id: str
    name: str
    spec: dict[str, Any]
    phase: Phase
    stage_index: int
    steps_done: int
    attempt: int
    advance_requested: bool
    sim_seconds: float
    gpu_busy_seconds: float
    gpu_held_seconds: float
    message: str
    version: int
    queue: str
    priority: int
    created_at: float
    updated_at: float
    external_ref: str | None = None  # namespace/name/uid of the TrainingRun it mirrors, if any
    suspend_requested: bool = False  # the idle policy asked to suspend at the next checkpoint
    lease_owner: str | None = None  # the controller that drives the run, while its lease lasts
    lease_expires_at: float = 0.0  # wall time the lease lapses unless its owner renews it
    failures: int = 0  # failures in a row at ``failed_step`` (see orchestrator.core.failures)
    failed_step: int = 0  # the step the run was working towards when it last failed
    last_error: str = ""  # one line: the last failure's reason
    suspend_reason: str = ""  # why it was asked to suspend, or is Suspended: idle | user | preempted
    admitted_at: float | None = None  # when it was admitted (controller clock); None: holds no quota
    sim_ready_at: float = 0.0  # simulated pool: the virtual time its work in progress finishes

    @property
    def gpu_busy_fraction(self) -> float:
        return self.gpu_busy_seconds / self.gpu_held_seconds if self.gpu_held_seconds else 0.0

    def progress(self) -> dict[str, Any]:
        """How far the run has got, as ``orch list``/``status`` and a TrainingRun's ``.status`` all show it:
        phase, stage (1-based, as people count), steps done, attempt and last message."""
        return {
            "phase": self.phase.value,
            "stage": self.stage_index + 1,
            "step": self.steps_done,
            "attempt": self.attempt,
            "message": self.message,
        }


@dataclass(frozen=True)
class Stage:
    run_id: str
    index: int
    name: str
    max_response_tokens: int
    max_turns: int
    planned_steps: int | None
    start_after_step: int | None  # None: not started yet
    end_step: int | None  # None: not finished
    problems_in: int | None = None
    problems_kept: int | None = None

    @property
    def started(self) -> bool:
        return self.start_after_step is not None


@dataclass(frozen=True)
class Workload:
    name: str
    run_id: str
    role: str
    index: int
    attempt: int
    pool: str
    node: str
    gpus: int
    status: WorkloadStatus
    reason: str = ""
    env: dict[str, str] = field(default_factory=dict)
    image: str = ""

    @property
    def colocated(self) -> bool:
        """An engine that runs inside a trainer member's pod and shares its GPUs."""
        return "ORCH_COLOCATED_WITH" in self.env


@dataclass(frozen=True)
class Step:
    run_id: str
    step: int
    stage_index: int
    attempt: int
    max_response_tokens: int
    max_turns: int
    rollouts: int
    generated_tokens: int
    rollout_seconds: float
    train_seconds: float
    preemptions: int
    correct: int
    superseded: bool
    engines: tuple[dict[str, float], ...] = ()  # per engine: busy_ratio, kv_free_ratio
    queue_peak: int = 0
    turns: int = 0  # over the scored rollouts, like tool_calls, tool_errors and reward_sum
    tool_calls: int = 0
    tool_errors: int = 0
    reward_sum: float = 0.0
    infra_masked: int = 0  # trajectories masked out for infrastructure faults
    stale_dropped: int = 0  # off-policy trajectories dropped (still stale after one regeneration)
    stale_regenerated: int = 0
    weights_version: int | None = None  # the weights the rollouts were generated with, if engines say

    @property
    def solve_rate(self) -> float:
        """Share of the scored rollouts that were correct (0 when none were scored)."""
        return self.correct / self.rollouts if self.rollouts else 0.0

    @property
    def reward_mean(self) -> float:
        """Mean reward of the scored rollouts (0 when none were scored)."""
        return self.reward_sum / self.rollouts if self.rollouts else 0.0


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    step: int
    uri: str
    sim_seconds: float


@dataclass(frozen=True)
class Event:
    id: int
    run_id: str | None
    at: float
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewEvent:
    reason: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageUpdate:
    index: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class ProblemResult:
    stage_index: int
    problem_id: int
    samples: int
    correct: int
    dropped: bool


@dataclass(frozen=True)
class RunPatch:
    """Everything one decision changes about a run, applied by the store as one transaction.

    ``expected_version`` makes the write optimistic: if anyone changed the run since it was
    read, the whole patch is rejected and the controller decides again from fresh state.
    """

    run_id: str
    expected_version: int
    run: dict[str, Any] = field(default_factory=dict)
    stages: tuple[StageUpdate, ...] = ()
    workloads: tuple[Workload, ...] = ()
    step: Step | None = None
    checkpoint: Checkpoint | None = None
    supersede_steps_after: int | None = None
    problems: tuple[ProblemResult, ...] = ()
    events: tuple[NewEvent, ...] = ()
    clear_preemption: bool = False  # the run has stopped for the preemption asked of it

    def __bool__(self) -> bool:
        return bool(
            self.clear_preemption
            or self.run
            or self.stages
            or self.workloads
            or self.step
            or self.checkpoint
            or self.supersede_steps_after is not None
            or self.problems
            or self.events
        )


@dataclass(frozen=True)
class PreemptionRecord:
    """A run asked to stop at its next checkpoint so that run ``by`` gets its GPUs."""

    victim: str
    by: str
    reason: str
    at: float


@dataclass(frozen=True)
class WaitRecord:
    """A run waiting in its queue: its place in line and why, as of the last admission pass."""

    run_id: str
    queue: str
    position: int
    reason: str
    since: float
    kind: str = ""  # quota | nodes | held | stopping | queue (orchestrator.core.queueing.Wait.kind)


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuSample:
    """A field that could not be read is None, and ``errors`` says why (field -> short reason)."""

    node: str
    index: int
    uuid: str
    name: str = ""
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    ecc_errors: dict[str, int] = field(default_factory=dict)  # e.g. {"volatile_uncorrected": 0}
    mig_enabled: bool | None = None
    processes: tuple[ProcessMemory, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    pool: str = ""
    run: str = ""
    role: str = ""
    at: float = 0.0  # seconds: wall time for real sources, virtual time for the simulator
    period_s: float = 0.0  # how long this reading stands for (the sampling interval, or a simulated phase)
    virtual_clock: bool = False  # ``at`` is the simulated pool's virtual time, not wall time


@dataclass(frozen=True)
class GpuReading:
    """The newest sample of one GPU and the wall time the store received it (its age comes from that)."""

    sample: GpuSample
    received_at: float


class CheckOutcome(str, Enum):
    """How one ``orch doctor`` check ended; ``skip`` (not configured, or not reachable) is no failure."""

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    """One preflight check: what it looked at, what it found and, when it failed, what to do."""

    name: str
    outcome: CheckOutcome
    detail: str
    fix: str = ""


def checks_exit_code(checks: Sequence[Check]) -> int:
    """0 when no check failed, else ``EXIT_CHECKS_FAILED``."""
    failed = any(check.outcome is CheckOutcome.FAIL for check in checks)
    return EXIT_CHECKS_FAILED if failed else 0

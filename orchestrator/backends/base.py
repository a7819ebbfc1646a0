"""The cluster backend protocol that the simulated pool and Kubernetes both implement.

A backend only knows nodes and workloads: it lists them, creates and deletes workloads by
deterministic name (a create that finds the name taken, or a delete that finds it gone, is
success), and streams changes. Training work (steps, checkpoints, problem evaluation) goes
through a ``TrainingExecutor``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from orchestrator.core.placement import NodeView
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.records import GpuSample, Workload
from orchestrator.spec import PoolSpec, RunSpec
from orchestrator.state.store import Store

__all__ = [
    "BackendParts",
    "ClusterBackend",
    "ClusterEvent",
    "ExecutionInterrupted",
    "GangCreator",
    "RunSource",
    "TelemetryFeed",
    "TrainingExecutor",
    "WorkInProgress",
    "never_transient",
]


class ExecutionInterrupted(OrchError):
    """Work stopped because a workload it ran on failed; the next reconcile sees why."""


class WorkInProgress(OrchError):
    """The executor has the work but no result yet; the controller asks again on a later pass."""


@dataclass(frozen=True)
class ClusterEvent:
    resource_version: int
    type: str  # ADDED | MODIFIED | DELETED
    workload: ObservedWorkload


class ClusterBackend(Protocol):
    name: str

    def prepare_pools(self, pools: Mapping[str, PoolSpec]) -> None:
        """Make sure the pools a run names exist (the simulator creates them; a real cluster checks)."""

    def list_nodes(self) -> list[NodeView]: ...

    def list_workloads(self, run_id: str | None = None) -> list[ObservedWorkload]: ...

    def create_workload(self, workload: Workload) -> bool:
        """Create it; return False if a workload of that name already existed (still success)."""

    def delete_workload(self, name: str) -> bool:
        """Delete it; return False if it was already gone (still success)."""

    def watch(self, since: int, timeout_s: float) -> tuple[int, list[ClusterEvent]]:
        """Changes after resource version ``since`` (waiting up to ``timeout_s``), and the newest version."""

    def sweep(self, finished_runs: Collection[str]) -> int:
        """Delete what the cluster still keeps for runs that finished; return how many objects went."""


@runtime_checkable
class GangCreator(Protocol):
    """A backend that reserves a gang as a whole gets all the members a pass creates in one call."""

    def create_workloads(
        self, workloads: Sequence[Workload], *, spec: RunSpec | None = None, stage_index: int = 0
    ) -> int:
        """Create them (members found by name are success), launching what ``spec`` (their run's, at
        curriculum stage ``stage_index``) says; return how many were created."""


class TelemetryFeed(Protocol):
    """GPU samples the backend collected since the last call, oldest first."""

    def drain(self) -> list[GpuSample]: ...


class RunSource(Protocol):
    """Another door runs come in through (a TrainingRun custom resource), mirrored each pass."""

    def pull(self, store: Store) -> int:
        """Create or cancel SQL runs to match the source; return how many changed."""

    def publish(self, store: Store) -> int:
        """Write the SQL runs' progress back to the source; return how many objects changed."""


class TrainingExecutor(Protocol):
    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        """Run one step, or raise ``WorkInProgress`` until it is done; asking again for a step already
        done by the same attempt returns its outcome again."""

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        """Save a checkpoint now; return the seconds it took."""

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome: ...


def never_transient(error: BaseException) -> bool:
    """For backends whose every error is the run's own."""
    return False


@dataclass(frozen=True)
class BackendParts:
    """The parts a controller drives: the cluster (a ``ClusterBackend``), the training executor, run sources.

    ``transient`` tells errors of the environment (API server, network: retried, never a run's failure)
    from the run's own; ``in_process`` says the cluster lives in this process, its workloads dying with it;
    ``virtual_time``: its runs share one virtual clock (``orchestrator.controller.clock``).
    """

    cluster: ClusterBackend
    executor: TrainingExecutor
    sources: tuple[RunSource, ...] = ()
    closers: tuple[Callable[[], None], ...] = ()
    telemetry: TelemetryFeed | None = None
    transient: Callable[[BaseException], bool] = never_transient
    in_process: bool = False
    virtual_time: bool = False  # the cluster runs on the shared virtual clock (the simulated pool)

    def close(self) -> None:
        """Stop background watches; the backend is unusable afterwards."""
        for close in self.closers:
            close()

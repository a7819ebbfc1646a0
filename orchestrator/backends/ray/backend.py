"""The Ray backend assembled: the cluster side only (the trainer's mailbox on Ray is not wired yet)."""

from __future__ import annotations

from orchestrator.backends.base import BackendParts
from orchestrator.backends.ray.cluster import RayCluster, transient_ray_error
from orchestrator.backends.ray.connect import connect
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.spec import RunSpec

__all__ = ["NoRayExecutor", "make_ray_backend"]


class NoRayExecutor:
    """Stands in for the trainer mailbox on Ray (issue 14 point 2): refuses work with one clear line."""

    def _refuse(self) -> OrchError:
        return OrchError(
            "ray backend: the trainer mailbox on Ray is not built yet; run with --backend sim or kube"
        )

    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        raise self._refuse()

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        raise self._refuse()

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        raise self._refuse()


def make_ray_backend(address: str | None = None, *, pool_label: str | None = None) -> BackendParts:
    """Connect (``ORCH_RAY_ADDRESS`` or a local head) and assemble the Ray backend."""
    connect(address)
    cluster = RayCluster(pool_label=pool_label) if pool_label else RayCluster()
    return BackendParts(cluster, NoRayExecutor(), transient=transient_ray_error)

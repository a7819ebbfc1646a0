"""The Ray backend assembled: the cluster (placement groups + member actors) and the trainer mailbox."""

from __future__ import annotations

from orchestrator.backends.base import BackendParts
from orchestrator.backends.ray.cluster import RayCluster, transient_ray_error
from orchestrator.backends.ray.connect import connect
from orchestrator.backends.ray.mailbox import RayExecutor, default_mailbox_root

__all__ = ["make_ray_backend"]


def make_ray_backend(address: str | None = None, *, pool_label: str | None = None) -> BackendParts:
    """Connect (``ORCH_RAY_ADDRESS`` or a local head) and assemble the Ray backend; the mailboxes live
    under ``ORCH_RAY_MAILBOX_ROOT`` (see ``mailbox.py``)."""
    connect(address)
    root = default_mailbox_root()
    cluster = (
        RayCluster(pool_label=pool_label, mailbox_root=root) if pool_label else RayCluster(mailbox_root=root)
    )
    executor = RayExecutor(cluster.list_workloads, root=root)
    return BackendParts(cluster, executor, transient=transient_ray_error)

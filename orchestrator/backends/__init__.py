"""Cluster backends: one protocol (``base``), the embedded simulated pool (``sim``) and, later, Kubernetes."""

from __future__ import annotations

import os

from orchestrator.backends.base import Backend
from orchestrator.errors import SpecError

__all__ = ["BACKEND_ENV", "make_backend"]

BACKEND_ENV = "ORCH_BACKEND"


def make_backend(name: str | None = None) -> Backend:
    """The backend named by ``name`` or ``ORCH_BACKEND`` (default ``sim``)."""
    name = name or os.environ.get(BACKEND_ENV, "sim")
    if name == "sim":
        from orchestrator.backends.sim import SimCluster
        from orchestrator.backends.sim_training import SimTrainer

        cluster = SimCluster.from_env()
        return Backend(cluster, SimTrainer(cluster))
    raise SpecError(
        f"{BACKEND_ENV}: unknown backend {name!r}; use 'sim' (kube arrives with the Kubernetes backend)"
    )

"""Cluster backends: the protocol (``base``) and the Ray adapter (``ray``); sim is ``orchestrator.sim``.

The Kubernetes adapter lives in ``orchestrator.kube``; ``make_backend`` picks one of them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from orchestrator.backends.base import BackendParts
from orchestrator.errors import SpecError

if TYPE_CHECKING:
    from orchestrator.telemetry.rollout_metrics import RolloutMetrics

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "IMAGE_PULL_SECRET_ENV",
    "NAMESPACE_ENV",
    "POOL_LABEL_ENV",
    "SIM_PACE_ENV",
    "check_backend_name",
    "make_backend",
]

BACKEND_ENV = "ORCH_BACKEND"
NAMESPACE_ENV = "ORCH_NAMESPACE"
POOL_LABEL_ENV = "ORCH_POOL_LABEL"
IMAGE_PULL_SECRET_ENV = "ORCH_IMAGE_PULL_SECRET"  # the Secret pods pull orch's images with (kube)
SIM_PACE_ENV = "ORCH_SIM_PACE"
BACKENDS = ("sim", "kube", "ray")


def check_backend_name(name: str | None = None) -> str:
    """The backend named by ``name`` or ``ORCH_BACKEND`` (default ``sim``); one clear error if unknown."""
    name = name or os.environ.get(BACKEND_ENV, "sim")
    if name not in BACKENDS:
        raise SpecError(
            f"{BACKEND_ENV} / --backend: unknown backend {name!r}; use {' or '.join(map(repr, BACKENDS))}"
        )
    return name


def make_backend(
    name: str | None = None, *, sim_pace: float | None = None, rollout_metrics: RolloutMetrics | None = None
) -> BackendParts:
    """The backend named by ``name`` or ``ORCH_BACKEND`` (default ``sim``); ``ray`` connects to
    ``ORCH_RAY_ADDRESS``, else to a local Ray head (starting one as its own daemon if none runs).

    ``sim_pace``: virtual seconds the simulated pool plays per wall second (default ``ORCH_SIM_PACE``,
    else 0 = as fast as possible).
    """
    name = check_backend_name(name)
    if name == "sim":
        from orchestrator.sim.cluster import SimCluster
        from orchestrator.sim.trainer import SimTrainer, StepSimulator

        cluster = SimCluster.from_env()
        pace = sim_pace if sim_pace is not None else _pace_from_env()
        trainer = SimTrainer(cluster, StepSimulator(rollout_metrics), pace=pace)
        return BackendParts(cluster, trainer, telemetry=cluster.telemetry, in_process=True, virtual_time=True)
    if name == "ray":
        from orchestrator.backends.ray.backend import make_ray_backend

        return make_ray_backend(pool_label=os.environ.get(POOL_LABEL_ENV))
    from orchestrator.kube.backend import make_kube_backend
    from orchestrator.kube.cluster import DEFAULT_NAMESPACE, DEFAULT_POOL_LABEL, api_client_from_environment
    from orchestrator.kube.objects import TRAINER_SERVICE_ACCOUNT, TRAINER_SERVICE_ACCOUNT_ENV

    return make_kube_backend(
        api_client_from_environment(),
        namespace=os.environ.get(NAMESPACE_ENV, DEFAULT_NAMESPACE),
        pool_label=os.environ.get(POOL_LABEL_ENV, DEFAULT_POOL_LABEL),
        trainer_service_account=os.environ.get(TRAINER_SERVICE_ACCOUNT_ENV, "").strip()
        or TRAINER_SERVICE_ACCOUNT,
    )


def _pace_from_env() -> float:
    text = os.environ.get(SIM_PACE_ENV, "").strip() or "0"
    try:
        pace = float(text)
    except ValueError:
        pace = -1.0
    if not pace >= 0:
        raise SpecError(f"{SIM_PACE_ENV}: {text!r} is not a number >= 0 (virtual seconds per wall second)")
    return pace

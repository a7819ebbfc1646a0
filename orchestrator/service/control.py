"""The controller as a front end starts it: one ``build_controller`` for ``orch controller`` and the
embedded runner of ``orch submit --wait``, and the loop with its health endpoint and metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client import REGISTRY

from orchestrator.backends import make_backend
from orchestrator.backends.base import BackendParts
from orchestrator.controller import (
    Controller,
    DatabaseOutage,
    PassReport,
    nothing_to_drive,
    with_database,
)
from orchestrator.controller.clock import SharedVirtualClock, WallClock
from orchestrator.errors import OrchError
from orchestrator.health import HealthServer, LoopHeartbeat
from orchestrator.httpguard import GuardConfig
from orchestrator.service.queues import queue_report
from orchestrator.state.store import Store
from orchestrator.telemetry.exporter import GpuCollector
from orchestrator.telemetry.rollout_metrics import RolloutMetrics
from orchestrator.telemetry.scheduler_metrics import SchedulerCollector

__all__ = ["build_controller", "run_controller", "scheduler_collector"]


def scheduler_collector(store: Store) -> SchedulerCollector:
    """What the controller's ``/metrics`` serves of runs and queues, read from SQL at scrape time."""
    return SchedulerCollector(store, lambda: queue_report(store))


def build_controller(
    store: Store,
    backend: BackendParts,
    *,
    identity: str | None = None,
    lease_seconds: float = 15.0,
    only: frozenset[str] | None = None,
) -> Controller:
    """A controller over ``store`` driving ``backend``'s cluster, executor, sources and telemetry.

    ``only``: reconcile just these runs (``orch submit --wait`` drives its own run, no other)."""
    return Controller(
        store,
        backend.cluster,
        backend.executor,
        identity=identity,
        lease_seconds=lease_seconds,
        sources=backend.sources,
        telemetry=backend.telemetry,
        transient=backend.transient,
        only=only,
        clock=SharedVirtualClock(store) if backend.virtual_time else WallClock(),
    )


def run_controller(
    open_store: Callable[[], Store],
    backend: str,
    *,
    once: bool = False,
    identity: str | None = None,
    lease_seconds: float = 15.0,
    exit_when_idle: bool = False,
    http_port: int | None = None,
    http_guard: GuardConfig | None = None,
    db_outage_seconds: float,
) -> PassReport | None:
    """``orch controller``: one pass (``once``; its report), or the loop until Ctrl-C, until no run is left
    to drive (``exit_when_idle``) or until the database has been away for ``db_outage_seconds``.

    ``open_store`` is retried while the database is unreachable; ``http_port`` serves /healthz, /readyz
    and /metrics on ``http_guard.host`` to the callers it admits (default: loopback, no token; a port in use
    raises ``PortUnavailable``)."""
    rollout_metrics = RolloutMetrics(REGISTRY) if http_port is not None else None
    parts = make_backend(backend, rollout_metrics=rollout_metrics)
    if once and parts.in_process:
        parts.close()
        raise OrchError(
            f"orch controller --once cannot make progress on the {backend!r} backend: its simulated pool "
            "lives in this process and its workloads die when the pass ends; run "
            "`orch controller --exit-when-idle` or `orch submit FILE --wait` instead"
        )
    outage = DatabaseOutage(db_outage_seconds)
    store = with_database(open_store, outage)
    ctl = build_controller(store, parts, identity=identity, lease_seconds=lease_seconds)
    if once:
        try:
            report = ctl.reconcile_once()
            ctl.store.release_leases(ctl.identity)
        finally:
            parts.close()
        return report
    stop = threading.Event()
    until = (lambda: nothing_to_drive(store, parts.cluster)) if exit_when_idle else (lambda: False)
    heartbeat = LoopHeartbeat(stale_after_s=max(60.0, 4 * lease_seconds))
    health = None
    try:
        if http_port is not None:
            REGISTRY.register(scheduler_collector(store))
            REGISTRY.register(GpuCollector(store.latest_gpu_samples))
            guard = http_guard or GuardConfig()
            health = HealthServer(http_port, heartbeat, store.ping, guard.host, guard=guard).start()
        ctl.run(until=until, stop=stop, after_pass=heartbeat.beat, outage=outage)
    except KeyboardInterrupt:
        stop.set()
    finally:
        parts.close()
        if health is not None:
            health.stop()
    return None

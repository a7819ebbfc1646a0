"""The controller's HTTP endpoint: /healthz (the loop is alive), /readyz (the database answers), /metrics.

Served by ``orchestrator.httpserver`` (one thread, timeouts, a bounded pool) behind
``orchestrator.httpguard``; ``/metrics`` is prometheus-client's exposition of the default registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from orchestrator.httpguard import GuardConfig, guard_config
from orchestrator.httpserver import Headers, HttpServer, Reply

__all__ = ["PASSES", "TOKEN_ENV", "HealthServer", "LoopHeartbeat"]

TOKEN_ENV = "ORCH_CONTROLLER_TOKEN"

PASSES = Counter("orch_controller_passes_total", "Reconcile passes the controller completed")
LAST_PASS = Gauge("orch_controller_last_pass_timestamp_seconds", "Unix time of the last completed pass")


class LoopHeartbeat:
    """Records completed passes; the loop counts as alive while one finished within ``stale_after_s``."""

    def __init__(self, stale_after_s: float = 60.0) -> None:
        self.stale_after_s = stale_after_s
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()
        PASSES.inc()
        LAST_PASS.set_to_current_time()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.stale_after_s


class HealthServer:
    """``/healthz`` from the heartbeat, ``/readyz`` from ``ready()``, ``/metrics`` for Prometheus.

    The probes stay open (kubelet cannot send a token) and say only ``ok`` or ``not ok``; ``/metrics`` needs
    the guard's token when one is set."""

    def __init__(
        self,
        port: int,
        heartbeat: LoopHeartbeat,
        ready: Callable[[], bool],
        host: str = "127.0.0.1",
        registry: CollectorRegistry = REGISTRY,
        guard: GuardConfig | None = None,
    ) -> None:
        checks = {"/healthz": heartbeat.alive, "/readyz": ready}
        guard = guard or guard_config(host, None, env_name=TOKEN_ENV)

        def answer(path: str, headers: Headers) -> Reply:
            if path == "/metrics":
                return Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if path in checks:
                ok = _safely(checks[path])
                return Reply(200 if ok else 503, b"ok\n" if ok else b"not ok\n")
            return Reply(404, b"not found\n")

        guard = replace(guard, open_paths=guard.open_paths | frozenset(checks))
        self._server = HttpServer("health checks and metrics", host, port, answer, guard)
        self.port = self._server.port

    def start(self) -> HealthServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def _safely(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False

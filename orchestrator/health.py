"""The controller's HTTP endpoint: /healthz (the loop is alive), /readyz (the database answers), /metrics.

Served from a daemon thread with the standard library; ``/metrics`` is prometheus-client's
exposition of the default registry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from orchestrator.errors import PortUnavailable

__all__ = ["PASSES", "HealthServer", "LoopHeartbeat"]

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
    """``/healthz`` from the heartbeat, ``/readyz`` from ``ready()``, ``/metrics`` for Prometheus."""

    def __init__(
        self,
        port: int,
        heartbeat: LoopHeartbeat,
        ready: Callable[[], bool],
        host: str = "0.0.0.0",
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        checks = {"/healthz": heartbeat.alive, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def log_message(
                self, format: str, *args: object
            ) -> None:  # quiet: probes hit this every few seconds
                pass

            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path in checks:
                    ok = _safely(checks[self.path])
                    self._reply(200 if ok else 503, b"ok\n" if ok else b"not ok\n", "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise PortUnavailable("health checks and metrics", host, port, error) from error
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="orch-health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _safely(check: Callable[[], bool]) -> bool:
    try:
        return bool(check())
    except Exception:
        return False

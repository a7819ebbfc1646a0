"""The controller's probe and metrics endpoint over real HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.health import HealthServer, LoopHeartbeat


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status = error.code
        error.close()
        return status, ""


def test_probes_follow_the_loop_and_the_database_and_metrics_parse() -> None:
    heartbeat = LoopHeartbeat(stale_after_s=60)
    database_up = [True]
    server = HealthServer(0, heartbeat, lambda: database_up[0], host="127.0.0.1").start()
    try:
        heartbeat.beat()
        assert get(server.port, "/healthz")[0] == 200
        assert get(server.port, "/readyz")[0] == 200
        database_up[0] = False
        assert get(server.port, "/readyz")[0] == 503
        heartbeat.last -= 120
        assert get(server.port, "/healthz")[0] == 503
        status, body = get(server.port, "/metrics")
        names = {family.name for family in text_string_to_metric_families(body)}
        assert status == 200 and "orch_controller_passes" in names
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()

"""Who may call orch's HTTP endpoints (issue 15.7): browsers and foreign Host names are refused 403, a token
when set is required (401) everywhere but the probes, no server listens beyond loopback without one, and the
controller's and agent's server survives 2,000 idle connections and trickling clients."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from cli import main
from orchestrator.health import HealthServer, LoopHeartbeat
from orchestrator.httpguard import (
    GuardConfig,
    InsecureEndpoint,
    check_request,
    guard_config,
    read_token,
)
from orchestrator.httpserver import HttpServer, Reply
from orchestrator.rollout.http_engine import HttpEngine
from orchestrator.rollout.router import Router
from orchestrator.telemetry.exporter import MetricsServer
from orchestrator.tools.admission import ToolService
from orchestrator.tools.api import ExecResult, Limits
from orchestrator.tools.http_api import make_app

TOKEN = "s3cret-token"
SERVICE_DNS = "orch-x.orch.svc"

# ---- the checks, as pure functions ------------------------------------------------------------------

GUARDED = GuardConfig("0.0.0.0", TOKEN, frozenset({SERVICE_DNS}), frozenset({"/healthz"}))
RIGHT = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/metrics", {"Host": "10.0.3.7:9400", **RIGHT}, None),  # a pod IP: what Prometheus and kubelet send
        ("/metrics", {"Host": "[fd00::7]:9400", **RIGHT}, None),
        ("/metrics", {"Host": "localhost:9400", **RIGHT}, None),
        ("/metrics", {"Host": f"{SERVICE_DNS}:9400", **RIGHT}, None),
        ("/metrics", {"Host": "attacker.example:9400", **RIGHT}, 403),  # DNS rebinding
        ("/metrics", {"Origin": "https://attacker.example", **RIGHT}, 403),  # CSRF from a page
        ("/metrics", {"Origin": "null", **RIGHT}, 403),
        ("/metrics", {"Sec-Fetch-Site": "cross-site", **RIGHT}, 403),  # a no-cors GET sends no Origin
        ("/metrics", {}, 401),
        ("/metrics", {"Authorization": "Bearer wrong"}, 401),
        ("/metrics", {"Authorization": f"Basic {TOKEN}"}, 401),
        ("/metrics", {"Authorization": f"bearer {TOKEN}"}, None),
        ("/healthz", {}, None),  # probes are open
        ("/healthz", {"Origin": "https://attacker.example"}, 403),
    ],
)
def test_check_request(path: str, headers: dict[str, str], status: int | None) -> None:
    refusal = check_request(path, headers, GUARDED)
    assert (refusal.status if refusal else None) == status


def test_a_server_beyond_loopback_needs_a_token(tmp_path: Path, monkeypatch: Any) -> None:
    for host in ("127.0.0.1", "127.0.0.53", "::1", "localhost"):
        assert guard_config(host, None, env_name="ORCH_X_TOKEN").token is None
    for host in ("0.0.0.0", "", "::", "10.0.0.5", "orch.example"):
        with pytest.raises(InsecureEndpoint, match="ORCH_X_TOKEN or --token-file"):
            guard_config(host, None, env_name="ORCH_X_TOKEN")
    assert guard_config("0.0.0.0", TOKEN, env_name="ORCH_X_TOKEN").token == TOKEN
    monkeypatch.delenv("ORCH_X_TOKEN", raising=False)
    assert read_token("ORCH_X_TOKEN", None) is None
    monkeypatch.setenv("ORCH_X_TOKEN", " from-env\n")
    assert read_token("ORCH_X_TOKEN", None) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert read_token("ORCH_X_TOKEN", tmp_path / "token") == "from-file"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(InsecureEndpoint, match="is empty"):
        read_token("ORCH_X_TOKEN", tmp_path / "empty")
    with pytest.raises(InsecureEndpoint, match="cannot read"):
        read_token("ORCH_X_TOKEN", tmp_path / "missing")


# ---- every server ------------------------------------------------------------------------------------


class _Echo:
    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        return ExecResult("ok", code, "", 0, 0.001, 0.001)


@contextmanager
def _on_a_loop(start: Callable[[], Awaitable[tuple[int, Callable[[], Awaitable[None]]]]]) -> Iterator[int]:
    """Run an aiohttp server on an event loop in a thread, so the test can speak plain HTTP to it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port, stop = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def tools_server(guard: GuardConfig) -> AbstractContextManager[int]:
    async def start() -> tuple[int, Callable[[], Awaitable[None]]]:
        service = ToolService(_Echo(), concurrency=1, max_pending=4)
        await service.__aenter__()
        runner = web.AppRunner(make_app(service, guard), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()

        async def stop() -> None:
            await runner.cleanup()
            await service.__aexit__(None, None, None)

        return runner.addresses[0][1], stop

    return _on_a_loop(start)


def router_server(guard: GuardConfig) -> AbstractContextManager[int]:
    async def start() -> tuple[int, Callable[[], Awaitable[None]]]:
        session = aiohttp.ClientSession()
        engine = HttpEngine("http://127.0.0.1:9", session)  # nothing listens: /health is 503
        try:
            router = Router([engine], "round-robin", 1000, 16, poll_interval=5, guard=guard)
            url = await router.start("127.0.0.1", 0)
        except BaseException:
            await session.close()
            raise

        async def stop() -> None:
            await router.stop()
            await session.close()

        return int(url.rsplit(":", 1)[1]), stop

    return _on_a_loop(start)


@contextmanager
def controller_server(guard: GuardConfig) -> Iterator[int]:
    heartbeat = LoopHeartbeat()
    server = HealthServer(0, heartbeat, lambda: True, "127.0.0.1", CollectorRegistry(), guard).start()
    try:
        yield server.port
    finally:
        server.stop()


@contextmanager
def agent_server(guard: GuardConfig) -> Iterator[int]:
    server = MetricsServer(CollectorRegistry(), 0, "127.0.0.1", guard)
    try:
        yield server.port
    finally:
        server.close()


SERVERS = {
    "tools": (tools_server, "/healthz"),
    "router": (router_server, "/health"),
    "controller": (controller_server, "/healthz"),
    "agent": (agent_server, "/healthz"),
}


def ask(port: int, path: str, headers: dict[str, str], method: str = "GET") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", SERVERS)
def test_each_server_refuses_browsers_foreign_hosts_and_wrong_tokens(name: str) -> None:
    make, probe = SERVERS[name]
    guard = GuardConfig("0.0.0.0", TOKEN, frozenset({SERVICE_DNS}))
    with make(guard) as port:
        assert ask(port, "/metrics", {})[0] == 401
        assert ask(port, "/metrics", {"Authorization": "Bearer not-it"})[0] == 401
        assert ask(port, "/metrics", RIGHT)[0] == 200
        assert ask(port, "/metrics", {**RIGHT, "Host": f"{SERVICE_DNS}:{port}"})[0] == 200
        assert ask(port, "/metrics", {**RIGHT, "Origin": "http://attacker.example"})[0] == 403
        assert ask(port, "/metrics", {**RIGHT, "Host": f"attacker.example:{port}"})[0] == 403
        # a page's POST is refused before anything runs (the tool service would run its code)
        assert ask(port, "/v1/exec", {"Origin": "http://attacker.example"}, "POST")[0] == 403
        # probes are open, and without the token say nothing but whether all is well
        status, body = ask(port, probe, {})
        assert status in (200, 503)
        assert body in (b"ok\n", b"not ok\n") or json.loads(body) == {"ok": status == 200}
        assert ask(port, probe, {"Origin": "http://attacker.example"})[0] == 403


@pytest.mark.parametrize("name", SERVERS)
def test_each_server_on_loopback_without_a_token_still_refuses_browsers(name: str) -> None:
    make, _ = SERVERS[name]
    with make(GuardConfig()) as port:
        assert ask(port, "/metrics", {})[0] == 200
        assert ask(port, "/metrics", {"Origin": "http://attacker.example"})[0] == 403
        assert ask(port, "/metrics", {"Host": f"rebound.attacker.example:{port}"})[0] == 403


def test_no_server_listens_beyond_loopback_without_a_token() -> None:
    with pytest.raises(InsecureEndpoint):
        HealthServer(0, LoopHeartbeat(), lambda: True, host="0.0.0.0")
    with pytest.raises(InsecureEndpoint):
        MetricsServer(CollectorRegistry(), 0, host="0.0.0.0")

    async def router() -> None:
        async with aiohttp.ClientSession() as session:
            await Router([HttpEngine("http://127.0.0.1:9", session)], "round-robin", 1000, 16).start(
                "0.0.0.0"
            )

    with pytest.raises(InsecureEndpoint):
        asyncio.run(router())


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["tools", "serve", "--host", "0.0.0.0", "--port", "0"], "ORCH_TOOLS_TOKEN"),
        (
            ["router", "--engine", "http://127.0.0.1:9", "--host", "0.0.0.0", "--port", "0"],
            "ORCH_ROUTER_TOKEN",
        ),
        (["agent", "--simulate", "--host", "0.0.0.0", "--port", "0"], "ORCH_AGENT_TOKEN"),
        (["controller", "--http-port", "0", "--host", "0.0.0.0"], "ORCH_CONTROLLER_TOKEN"),
    ],
)
def test_each_command_refuses_to_start_beyond_loopback_without_a_token(
    args: list[str], env: str, monkeypatch: Any
) -> None:
    monkeypatch.delenv(env, raising=False)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: --host 0.0.0.0 is reachable from other machines: set {env} or --token-file so callers "
        "must authenticate, or listen on 127.0.0.1"
    ]


# ---- slow and idle clients -------------------------------------------------------------------------


def _ok(path: str, headers: Any) -> Reply:
    return Reply(200, b"ok\n")


def test_two_thousand_idle_connections_cost_no_threads_and_a_request_still_gets_through() -> None:
    server = HttpServer("test", "127.0.0.1", 0, _ok, GuardConfig()).start()
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(2000):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        time.sleep(0.5)  # let the server accept them all
        threads = threading.active_count() - before
        started = time.monotonic()
        assert ask(server.port, "/healthz", {}) == (200, b"ok\n")
        assert time.monotonic() - started < 5
        assert threads <= 4, f"{threads} threads for 2,000 idle connections"
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def _trickle(port: int, stop: threading.Event, cut: list[float]) -> None:
    """Send a request head one byte every 0.1 s (slowloris); record when the server hangs up."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
            if stop.is_set():
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        else:
            return
        cut.append(time.monotonic() - started)


def test_a_trickling_client_is_cut_after_the_header_timeout() -> None:
    server = HttpServer("test", "127.0.0.1", 0, _ok, GuardConfig(), header_timeout=1.0).start()
    stop, cut = threading.Event(), []
    trickler = threading.Thread(target=_trickle, args=(server.port, stop, cut))
    try:
        trickler.start()
        trickler.join(10)
        assert cut and 1.0 <= cut[0] < 4.0, cut  # cut within a few sends of its deadline, not served forever
    finally:
        stop.set()
        server.stop()


def test_a_trickling_client_does_not_delay_shutdown() -> None:
    server = HttpServer("test", "127.0.0.1", 0, _ok, GuardConfig(), header_timeout=60.0).start()
    stop, cut = threading.Event(), []
    trickler = threading.Thread(target=_trickle, args=(server.port, stop, cut))
    trickler.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    stop.set()
    trickler.join(5)
    assert took < 3.0, f"stop() took {took:.1f}s with a trickling client (header timeout 60s)"

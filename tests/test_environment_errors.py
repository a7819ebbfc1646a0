"""Failures of the environment are one line and a non-zero exit (ports, database URLs); servers answer
very deep JSON with a 400 and keep serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from orchestrator.testing.fake_engine import FakeEngine
from orchestrator.tools.admission import ToolService
from tests.conftest import ROOT
from tests.conftest import run_async as run
from tests.test_router import cluster
from tests.test_tool_service import GatedExecutor, served


def orch(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """A real ``orch`` process (this worktree's cli.py)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, stderr exactly one line starting ``error:``, no traceback; the line."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- a port already in use -------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["tools", "serve", "--workers", "1", "--port", "{port}"], "--port"),
        (["router", "--engine", "http://127.0.0.1:9/", "--port", "{port}"], "--port"),
        (["agent", "--simulate", "--host", "127.0.0.1", "--port", "{port}"], "--port"),
        (["controller", "--http-port", "{port}"], "--http-port"),
    ],
    ids=["tools-serve", "router", "agent", "controller"],
)
def test_a_port_in_use_is_one_line_naming_the_port_and_the_option(
    command: list[str], option: str, taken_port: int, tmp_path
) -> None:
    args = [part.format(port=taken_port) for part in command]
    result = orch(*args, env={"ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'orch.db'}"})
    assert_one_error_line(result, f":{taken_port}", "already in use", f"choose another port with {option}")


# ---- Ray, an optional extra -------------------------------------------------------------------------

# Run first in a fresh interpreter: ``import ray`` fails as it does where the extra is not installed.
WITHOUT_RAY = """
import importlib.abc, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ray":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRay())
"""


def without_ray(code: str, tmp_path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root that cannot import ``ray``."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_RAY + code],
        cwd=ROOT,
        env={**os.environ, "ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'orch.db'}"},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_tools_serve_ray_without_ray_installed_is_one_line_naming_the_extra(tmp_path) -> None:
    cli = "import runpy; sys.argv = ['orch', 'tools', 'serve', '--ray', 'auto', '--port', '0']; "
    result = without_ray(cli + "runpy.run_path('cli.py', run_name='__main__')", tmp_path)
    assert_one_error_line(result, "--ray needs Ray, which is not installed", "pip install 'orch[ray]'")
    assert result.returncode == 1


def test_a_ray_tools_service_without_ray_installed_names_the_extra(tmp_path) -> None:
    code = """
import asyncio
from orchestrator.errors import OrchError
from orchestrator.spec import ToolsSpec
from orchestrator.tools.executors import open_executor

async def main():
    async with open_executor(ToolsSpec(service="ray:auto")):
        pass

try:
    asyncio.run(main())
except OrchError as error:
    print(error)
"""
    result = without_ray(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "tools.service 'ray:auto' needs Ray, which is not installed: pip install 'orch[ray]'"
    )


def test_with_ray_installed_ray_pool_class_is_the_ray_pool() -> None:
    from orchestrator.tools.executors import ray_pool_class
    from orchestrator.tools.ray_pool import RayPool

    assert ray_pool_class("--ray") is RayPool


# ---- database URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("not-a-url", ["'not-a-url' is not a database URL", "expected sqlite:///"]),
        ("://", ["'://' is not a database URL", "postgresql://"]),
        ("user:secret@host/db", ["is not a database URL"]),
        ("nosuchdb://host/db", ["unknown database kind 'nosuchdb'", "expected sqlite:///"]),
        ("postgresql+psycopg2://user@127.0.0.1/db", ["'psycopg2'", "not installed", "pip install"]),
        ("mysql://user@127.0.0.1/db", ["'MySQLdb'", "not installed", "pip install 'mysqlclient'"]),
    ],
)
def test_a_bad_database_url_is_one_line_naming_the_setting(url: str, fragments: list[str]) -> None:
    line = assert_one_error_line(orch("list", env={"ORCH_DATABASE_URL": url}), *fragments)
    assert "ORCH_DATABASE_URL / --database-url" in line
    assert "secret" not in line


def test_a_plain_postgresql_url_works_out_of_the_box(postgres_url: str) -> None:
    """``postgresql://`` needs no driver name: the driver is one of orch's own dependencies."""
    from sqlalchemy import make_url

    from tests.conftest import _reset_postgres

    _reset_postgres(postgres_url)
    plain = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    result = orch("list", "-o", "json", env={"ORCH_DATABASE_URL": plain})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---- very deep JSON --------------------------------------------------------------------------------

DEEP_BODIES = {
    "lists": b"[" * 100_000 + b"]" * 100_000,
    "objects": b'{"a": ' * 100_000 + b"1" + b"}" * 100_000,
    "a deep field": b'{"model": "m", "prompt": "hi", "max_tokens": 4, "code": "1", "x": '
    + b"[" * 5_000
    + b"]" * 5_000
    + b"}",
}


@pytest.mark.parametrize("shape", list(DEEP_BODIES))
def test_the_router_answers_very_deep_json_with_a_400_and_keeps_serving(shape: str) -> None:
    async def body() -> None:
        async with cluster([FakeEngine("e")], "kv_aware") as c:
            for path in ("/v1/completions", "/v1/chat/completions"):
                async with c.client.post(c.url + path, data=DEEP_BODIES[shape]) as response:
                    assert response.status == 400
                    error = (await response.json())["error"]
                    assert error["param"] == "body" and "nested too deeply" in error["message"]
            status, _, _ = await c.complete("still here")
            assert status == 200
            c.assert_released()

    run(body)


@pytest.mark.parametrize("shape", list(DEEP_BODIES))
def test_the_tool_service_answers_very_deep_json_with_a_400_and_keeps_serving(shape: str) -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        async with (
            ToolService(executor, concurrency=1) as service,
            served(service) as url,
            aiohttp.ClientSession() as http,
        ):
            for path in ("/v1/exec", "/v1/exec/batch", "/v1/verify", "/v1/verify/batch"):
                async with http.post(url + path, data=DEEP_BODIES[shape]) as response:
                    assert response.status == 400, path
                    assert "nested too deeply" in (await response.json())["error"]
            async with http.post(url + "/v1/exec", json={"code": "ok"}) as response:
                assert response.status == 200
                assert (await response.json())["result"]["stdout"] == "ok"

    run(body)

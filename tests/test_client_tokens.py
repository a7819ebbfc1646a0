"""orch's own clients send the bearer token of the endpoint they call (issue 15.7): the tool-service client a
run's ``tools.service: http://…`` opens, the router's and the controller's scrapes of an agent's /metrics,
and a Ray trainer member using a tool service. A 401 is one ``Unauthorized`` line naming the variable."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.backends.ray.launch import member_launch
from orchestrator.httpguard import GuardConfig, Unauthorized, client_token
from orchestrator.rollout.engine_gpu import parse_engine_gpu
from orchestrator.sim.gpu_source import SimulatedGpuSource
from orchestrator.spec import ToolsSpec
from orchestrator.telemetry.exporter import Agent
from orchestrator.telemetry.scrape import AgentScrapeFeed
from orchestrator.tools import http_api
from orchestrator.tools.client import TOKEN_ENV, ToolClient
from orchestrator.tools.executors import open_executor
from tests.test_httpguard import TOKEN, tools_server
from tests.test_reconcile import SPEC, make_run, placed

GUARD = GuardConfig("127.0.0.1", TOKEN, open_paths=frozenset(http_api.OPEN_PATHS))


@pytest.fixture(autouse=True)
def _no_tokens_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ORCH_TOOLS_TOKEN", "ORCH_TOOLS_TOKEN_FILE", "ORCH_AGENT_TOKEN", "ORCH_AGENT_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_the_client_reads_the_variable_the_service_reads() -> None:
    assert TOKEN_ENV == http_api.TOKEN_ENV


# ---- the tool service --------------------------------------------------------------------------------


async def _exec(url: str, token: str | None) -> str:
    async with aiohttp.ClientSession() as session:
        return (await ToolClient(url, session, token=token).execute("print(1)")).stdout


def test_the_tool_client_with_the_token_runs_code_and_without_it_gets_one_line_naming_the_variable() -> None:
    with tools_server(GUARD) as port:
        url = f"http://127.0.0.1:{port}"
        assert asyncio.run(_exec(url, TOKEN)) == "print(1)"
        started = time.monotonic()
        with pytest.raises(Unauthorized) as missing:
            asyncio.run(_exec(url, None))
        assert time.monotonic() - started < 2, "a 401 is not retried like a busy 429"
        with pytest.raises(Unauthorized) as wrong:
            asyncio.run(_exec(url, "not-it"))
    assert str(missing.value) == (
        f"{url}/v1/exec answered 401: it requires a bearer token; "
        "set ORCH_TOOLS_TOKEN (or ORCH_TOOLS_TOKEN_FILE) to it"
    )
    assert "the token in ORCH_TOOLS_TOKEN (or ORCH_TOOLS_TOKEN_FILE) is not its token" in str(wrong.value)
    assert "\n" not in str(missing.value)


async def _through_the_spec(url: str) -> str:
    async with open_executor(ToolsSpec(service=url)) as executor:
        return (await executor.execute("print(2)")).stdout


def test_a_run_specs_tool_service_gets_the_token_from_the_environment_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with tools_server(GUARD) as port:
        url = f"http://127.0.0.1:{port}"
        with pytest.raises(Unauthorized, match="set ORCH_TOOLS_TOKEN"):  # refused when opened
            asyncio.run(_through_the_spec(url))
        monkeypatch.setenv("ORCH_TOOLS_TOKEN", TOKEN)
        assert asyncio.run(_through_the_spec(url)) == "print(2)"
        (tmp_path / "token").write_text(TOKEN + "\n")
        monkeypatch.setenv("ORCH_TOOLS_TOKEN", "stale")
        monkeypatch.setenv("ORCH_TOOLS_TOKEN_FILE", str(tmp_path / "token"))  # the file wins
        assert asyncio.run(_through_the_spec(url)) == "print(2)"


def test_an_unreadable_or_empty_token_file_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORCH_TOOLS_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(Unauthorized, match=r"ORCH_TOOLS_TOKEN_FILE: cannot read .*missing"):
        client_token(TOKEN_ENV)
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("ORCH_TOOLS_TOKEN_FILE", str(tmp_path / "empty"))
    with pytest.raises(Unauthorized, match="is empty"):
        client_token(TOKEN_ENV)


# ---- an agent's /metrics ------------------------------------------------------------------------------


@contextmanager
def guarded_agent() -> Iterator[str]:
    source = SimulatedGpuSource("gpu-node-7", gpus=2, seed=3)
    source.set_load(1, 0.8, 2**30)
    agent = Agent(source, interval=0.05)
    agent.sample_once()
    server = agent.serve(0, "127.0.0.1", GuardConfig("127.0.0.1", TOKEN, open_paths=frozenset({"/healthz"})))
    try:
        yield server.url
    finally:
        server.close()
        agent.stop()


async def _utilization(text: str, token: str | None) -> float | None:
    async with aiohttp.ClientSession() as session:
        return await parse_engine_gpu(text, token).utilization(session, 2.0)


def test_the_routers_gpu_scrape_sends_the_agents_token() -> None:
    with guarded_agent() as url:
        assert asyncio.run(_utilization(url + "#1", TOKEN)) == pytest.approx(0.8, abs=0.05)
        with pytest.raises(Unauthorized, match="set ORCH_AGENT_TOKEN"):
            asyncio.run(_utilization(url + "#1", None))


def test_the_controllers_agent_scrape_sends_the_token_and_logs_a_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with guarded_agent() as url:
        assert [s.index for s in AgentScrapeFeed([url], token=TOKEN).drain()] == [0, 1]
        refused = AgentScrapeFeed([url])
        with caplog.at_level(logging.WARNING, logger="orch.telemetry"):
            assert refused.drain() == [] and refused.drain() == []
    assert refused.failures == 2
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        f"{url} answered 401: it requires a bearer token; "
        "set ORCH_AGENT_TOKEN (or ORCH_AGENT_TOKEN_FILE) to it"
    ]


# ---- a trainer on Ray ---------------------------------------------------------------------------------


def _trainer_env(service: str, token: str | None) -> dict[str, Any]:
    spec = SPEC.model_copy(update={"tools": ToolsSpec(service=service)})
    trainer = next(w for w in placed(make_run()) if w.role == "trainer")
    return dict(member_launch(trainer, spec, mailbox="/tmp/m", tools_token=token).env)


def test_a_ray_trainer_using_a_tool_service_gets_the_controllers_token_and_no_other_does() -> None:
    assert _trainer_env("http://tools:8900", TOKEN)["ORCH_TOOLS_TOKEN"] == TOKEN
    assert "ORCH_TOOLS_TOKEN" not in _trainer_env("embedded", TOKEN)
    assert "ORCH_TOOLS_TOKEN" not in _trainer_env("http://tools:8900", None)

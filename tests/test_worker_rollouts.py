"""Trainer rollouts end to end: fake engine processes, the embedded sandbox, real grading, infra faults."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from orchestrator.core.work import StepOutcome, StepPlan
from orchestrator.rollout.http_engine import HttpEngine
from orchestrator.rollout.tools import SandboxTools, ToolCall, ToolResult
from orchestrator.spec import RunSpec
from orchestrator.spec.dataset import Problem, read_problems
from orchestrator.spec.files import load_spec
from orchestrator.tools.api import ExecResult, Limits
from orchestrator.worker.protocol import dump_message, plan_message
from orchestrator.worker.rollouts import RecordingTools, Trajectory, run_rollouts
from orchestrator.worker.session import TrainerSession
from orchestrator.worker.transport import DirectoryTransport
from tests.conftest import run_async as run
from tests.conftest import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "examples" / "datasets" / "arith.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return list(read_problems(DATASET)[:16])


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    return load_spec(ROOT / "examples" / "quickstart.yaml")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two fake engine processes on the arithmetic dataset, serving weights versions 1 and 3."""
    processes, urls = [], []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        for version in (1, 3):
            weights = tmp_path_factory.mktemp(f"weights-v{version}")
            (weights / "version").write_text(f"{version}\n")
            port = _free_port()
            command = [
                sys.executable, "-m", "orchestrator.testing.fake_engine", "serve", str(weights),
                "--port", str(port), "--max-model-len", "8192", "--fake-answers", str(DATASET),
            ]  # fmt: skip
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for process, url in zip(processes, urls, strict=True):
            wait_healthy(process, url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


def test_a_trainer_step_rolls_out_on_real_engines_with_sandboxed_tool_calls_and_real_rewards(
    tmp_path: Path, engines: list[str], problems: list[Problem], spec: RunSpec
) -> None:
    mailbox = DirectoryTransport(tmp_path)
    mailbox.post_spec(json.dumps(spec.model_dump(mode="json")))
    plan = StepPlan("run-1", 1, 0, 1, 600, 3, checkpoint_after=False, checkpoint_uri="file:///tmp/c")
    mailbox.post_plan(dump_message(plan_message(plan)))
    session = TrainerSession.from_env(
        {"ORCH_MAILBOX_DIR": str(tmp_path), "ORCH_ENGINE_URLS": ",".join(engines)}
    )
    work = next(session.work(idle_timeout_s=0))

    trajectories: list[Trajectory] = session.rollouts(problems, samples=2)

    assert [(t.problem_id, t.sample) for t in trajectories] == [(p.id, s) for p in problems for s in (0, 1)]
    assert not [t for t in trajectories if t.infra_failed]
    with_tools = [t for t in trajectories if t.tool_calls]
    assert with_tools, "no rollout called the tool"
    assert all("```output\n" in t.response and t.turns == 2 for t in with_tools)
    # the sandbox really ran the code: its output (or the NameError of the broken code) is in the context
    assert any("NameError" in t.response for t in with_tools) or all(t.tool_errors == 0 for t in with_tools)
    assert sum(t.tool_errors for t in with_tools) == sum("NameError" in t.response for t in with_tools)
    rewards = {t.reward for t in trajectories}
    assert rewards == {0.0, 1.0}, "rewards should be real: some right, some wrong"
    for t in trajectories:
        assert t.correct == (t.reward == 1.0)
        assert t.response_tokens > 0 and t.prompt_tokens > 0 and 1 <= t.turns <= 3
        assert len(t.weights_versions) == len(t.engines) >= t.turns
        assert all(v == (1, 3)[e] for v, e in zip(t.weights_versions, t.engines, strict=True))
        assert t.format_issues == (0 if "\\boxed{" in t.response.rsplit("```", 1)[-1] else 1)
    assert {v for t in trajectories for v in t.weights_versions} == {1, 3}, "both engines served"
    # the step's outcome goes back through the mailbox
    work.complete(_step_outcome(trajectories))
    assert session.result(work.message) is not None


def _step_outcome(trajectories: list[Trajectory]) -> StepOutcome:
    correct = sum(t.correct for t in trajectories)
    tokens = sum(t.response_tokens for t in trajectories)
    return StepOutcome(len(trajectories), tokens, 1.0, 0.0, 0.0, 0, correct, 0.0, 0.0)


class _DeadSandbox:
    """A code executor whose every worker dies under the call: the sandbox's fault, never the model's."""

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        return ExecResult.abandoned("sandbox worker 0 died (exit status -9)")


def test_a_tool_call_lost_with_its_sandbox_worker_marks_the_trajectory_infra_failed(
    engines: list[str], problems: list[Problem], spec: RunSpec
) -> None:
    async def body() -> None:
        tools = SandboxTools(_DeadSandbox(), Limits())
        found = await run_rollouts(
            engines, problems, spec, max_response_tokens=600, max_turns=3, samples=2, tools=tools
        )
        failed = [t for t in found if t.infra_failed]
        assert failed and all(t.tool_calls for t in failed)
        assert all(t.infra_reason == "tool sandbox: sandbox worker 0 died (exit status -9)" for t in failed)
        assert all(t.reward == 0.0 and not t.correct for t in failed)
        assert all(not t.infra_failed for t in found if not t.tool_calls)

    run(body)


def test_a_turn_whose_engine_is_lost_is_infra_failed_not_a_zero_reward(
    problems: list[Problem], spec: RunSpec
) -> None:
    async def body() -> None:
        tools = SandboxTools(_DeadSandbox(), Limits())
        dead = [f"http://127.0.0.1:{_free_port()}"]
        found = await run_rollouts(
            dead, problems[:3], spec, max_response_tokens=600, max_turns=3, tools=tools
        )
        assert all(t.infra_failed and t.infra_reason.startswith("engine: ") for t in found)  # type: ignore[union-attr]
        assert all(t.verdict == "error" and t.turns == 0 for t in found)

    run(body)


class _Exits:
    def __init__(self, result: ExecResult) -> None:
        self.result = result

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        return self.result


class _Raises:
    async def run(self, call: ToolCall) -> ToolResult:
        raise ConnectionError("tool server gone")


def test_only_the_sandboxs_own_failures_are_infra_errors() -> None:
    async def body() -> None:
        call = ToolCall(0, 0, "print(1)")
        lost = await SandboxTools(_Exits(ExecResult.abandoned("worker died")), Limits()).run(call)
        assert (lost.verdict, lost.infra_error) == ("error", "worker died")
        signalled = ExecResult("killed", "", "", -9, 0.1, 0.1)  # the code killed itself: the model's fault
        assert (await SandboxTools(_Exits(signalled), Limits()).run(call)).infra_error is None
        crashed = ExecResult("error", "", "NameError", 1, 0.1, 0.1)
        assert (await SandboxTools(_Exits(crashed), Limits()).run(call)).infra_error is None
        recorder = RecordingTools(_Raises())
        broken = await recorder.run(call)
        assert broken.infra_error == "tool failed: ConnectionError: tool server gone"
        assert recorder.results == {0: [broken]}

    run(body)


def test_the_weights_version_header_is_read_when_the_body_has_none() -> None:
    async def completions(request: web.Request) -> web.Response:
        answer = {"choices": [{"text": "hi", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}
        return web.json_response(answer, headers={"X-Weights-Version": "7"})

    async def body() -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as session:
                answer = await HttpEngine(f"http://127.0.0.1:{port}", session).complete({"prompt": "x"})
        finally:
            await runner.cleanup()
        assert answer["weights_version"] == 7

    run(body)

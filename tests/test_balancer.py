"""The rollout balancer end to end: multi-turn rollouts over real HTTP to fake engines on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from orchestrator.core.dispatch import EngineState, make_dispatcher
from orchestrator.rollout.balancer import Balancer, RolloutPrompt, Trajectory, parse_tool_call
from orchestrator.rollout.http_engine import HttpEngine
from orchestrator.rollout.tools import ToolCall, ToolResult
from orchestrator.sim.tools import SimulatedTools
from orchestrator.telemetry.rollout_metrics import RolloutMetrics
from orchestrator.testing.fake_engine import FakeEngine
from tests.conftest import run_async as run

TOKENS_PER_TURN = 40
WANTS = re.compile(r"tools=(\d+)")
PART = re.compile(r"<part (\d+)>")


class AgentEngine(FakeEngine):
    """A FakeEngine that plays an agent: the prompt says ``tools=k``; the first k turns end in a tool call
    (one per ```` ```output ```` block already in the prompt), then it answers. A turn is TOKENS_PER_TURN
    tokens; a request with a smaller ``max_tokens`` is cut (``<part n>``, finish_reason length) and the
    next request continues the turn. Every request's ``max_tokens`` is recorded."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(name, **options)
        self.requests: list[tuple[str, int]] = []  # (prompt, max_tokens)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.received += 1
        self._maybe_schedule_death()
        if self.death_mode:
            return self._refuse(request)
        body = await request.json()
        prompt, max_tokens = body["prompt"], int(body["max_tokens"])
        self.requests.append((prompt, max_tokens))
        answer = _agent_answer(prompt, max_tokens)
        if not await self._run(answer["usage"]["completion_tokens"], len(prompt) // 4 + max_tokens):
            return self._refuse(request)
        self.completed += 1
        return web.json_response(answer)


def _agent_answer(prompt: str, max_tokens: int) -> dict[str, Any]:
    done = prompt.count("```output")
    wants = int(WANTS.search(prompt).group(1))  # type: ignore[union-attr]
    this_turn = prompt[prompt.rfind("```output") :] if done else prompt
    left = TOKENS_PER_TURN - sum(int(n) for n in PART.findall(this_turn))
    tokens = min(left, max_tokens)
    if tokens < left:  # cut off by max_tokens: no closing fence
        text, reason = f"<part {tokens}>", "length"
    elif done < wants:
        text, reason = f"\nstep {done}\n```python\nprint({done})\n```", "stop"
    else:
        text, reason = "\nthe answer is 42", "stop"
    usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": tokens}
    return {"choices": [{"index": 0, "text": text, "finish_reason": reason}], "usage": usage}


@dataclass
class Rig:
    balancer: Balancer
    fakes: list[AgentEngine]
    tools: SimulatedTools

    def assert_released(self) -> None:
        dispatcher = self.balancer.dispatcher
        for engine in range(len(self.fakes)):
            assert dispatcher.reserved_tokens(engine) == 0, f"engine {engine} still holds tokens"
            assert dispatcher.outstanding(engine) == 0, f"engine {engine} still has requests"
        assert dispatcher.queued() == 0


@asynccontextmanager
async def rig(
    fakes: list[AgentEngine],
    *,
    policy: str = "kv_aware",
    kv_total: int = 65536,
    tool_latency: float = 0.1,
    max_response_tokens: int = 1000,
    max_turns: int = 8,
    **options: Any,
) -> AsyncIterator[Rig]:
    urls = [await fake.start() for fake in fakes]
    try:
        async with aiohttp.ClientSession() as session:
            engines = [HttpEngine(url, session, kv_total_tokens=kv_total) for url in urls]
            states = [EngineState(engine=i, kv_total_tokens=kv_total) for i in range(len(fakes))]
            tools = SimulatedTools(lambda call: tool_latency, output_tokens=20)
            balancer = Balancer(
                engines,
                make_dispatcher(policy, states),
                tools,
                max_response_tokens=max_response_tokens,
                max_turns=max_turns,
                **options,
            )
            yield Rig(balancer, fakes, tools)
    finally:
        for fake in fakes:
            await fake.stop()


def prompts(count: int, tools: int = 2) -> list[RolloutPrompt]:
    return [RolloutPrompt(i, f"rollout {i}: solve it. tools={tools}\n") for i in range(count)]


def engines(count: int, latency: float = 0.02) -> list[AgentEngine]:
    return [AgentEngine(f"e{i}", latency=latency) for i in range(count)]


# ---- the tool-call convention ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("let me check\n```python\nprint(1)\n```\n", "print(1)"),
        ("```python\nx = 1\ny = 2\n```", "x = 1\ny = 2"),
        ("the answer is 42", None),
        ("```python\nprint(1)\n```\nso the answer is 1", None),  # code not at the end: an answer
        ("```text\nhello\n```", None),  # a block, but not python
        ("```python\nprint(1)\n```\n```text\nhi\n```", None),  # the last block is not python
    ],
)
def test_a_tool_call_is_a_python_block_at_the_end(text: str, code: str | None) -> None:
    assert parse_tool_call(text) == code


# ---- a step ---------------------------------------------------------------------------------------


def test_all_rollouts_finish_with_their_tool_calls_overlapping_generation() -> None:
    async def body() -> None:
        async with rig(engines(3), tool_latency=0.2) as r:
            started = time.monotonic()
            trajectories = await r.balancer.run_step(prompts(12, tools=2))
            wall = time.monotonic() - started
            assert [t.rollout_id for t in trajectories] == list(range(12))
            for t in trajectories:
                assert t.verdict == "answer", t
                assert (t.turns, t.tool_calls) == (3, 2)
                assert t.completion_tokens == 3 * TOKENS_PER_TURN
                assert len(t.engines) == 3 and t.wall_seconds > 0.4
                assert t.text.count("```output") == 2 and t.text.endswith("the answer is 42")
            tool_seconds = 0.2 * sum(t.tool_calls for t in trajectories)
            assert wall < tool_seconds / 3, (wall, tool_seconds)
            assert r.tools.peak_running > 1  # tools ran side by side, not one after another
            assert {e for t in trajectories for e in t.engines} == {0, 1, 2}
            r.assert_released()

    run(body)


def test_no_request_asks_for_more_than_the_remaining_budget() -> None:
    async def body() -> None:
        async with rig(engines(2), max_response_tokens=100) as r:
            trajectories = await r.balancer.run_step(prompts(6, tools=5))
            for t in trajectories:  # turns of 40, 40, then the last 20 tokens, cut off
                assert t.verdict == "budget", t
                assert (t.turns, t.tool_calls, t.completion_tokens) == (3, 2, 100)
            requests = [request for fake in r.fakes for request in fake.requests]
            assert len(requests) == 18
            for prompt, max_tokens in requests:
                assert max_tokens == 100 - TOKENS_PER_TURN * prompt.count("```output")
            r.assert_released()

    run(body)


def test_max_turns_ends_a_rollout() -> None:
    async def body() -> None:
        async with rig(engines(2), max_turns=2) as r:
            trajectories = await r.balancer.run_step(prompts(4, tools=5))
            assert {(t.verdict, t.turns, t.tool_calls) for t in trajectories} == {("max_turns", 2, 1)}
            r.assert_released()

    run(body)


def test_an_engine_that_dies_mid_step_has_its_turns_retried_elsewhere() -> None:
    async def body() -> None:
        fakes = engines(3, latency=0.15)
        fakes[0].die_on_request(2, after=0.05)  # dies with requests in flight
        async with rig(fakes, policy="least_outstanding", tool_latency=0.05) as r:
            trajectories = await r.balancer.run_step(prompts(9, tools=1))
            assert all(t.verdict == "answer" and t.turns == 2 for t in trajectories), trajectories
            assert r.balancer.healthy == [False, True, True]
            assert r.balancer.retries >= 2
            assert sum(t.retries for t in trajectories) >= 2
            assert fakes[1].completed + fakes[2].completed == 18
            assert all(t.engines[-1] != 0 for t in trajectories)
            r.assert_released()
            fakes[0].revive()  # the next step takes it back
            trajectories = await r.balancer.run_step(prompts(6, tools=1))
            assert r.balancer.healthy == [True, True, True]
            assert all(t.verdict == "answer" for t in trajectories)
            r.assert_released()

    run(body)


def test_when_every_engine_is_lost_every_waiting_turn_fails_at_once_naming_the_loss() -> None:
    async def body() -> None:
        fakes = engines(2, latency=0.2)
        for fake in fakes:
            fake.die_on_request(1, after=0.05)
        # each engine fits one turn at a time: the other turns wait in the central queue when both die
        async with rig(fakes, kv_total=1200, max_response_tokens=1000, request_timeout_s=30) as r:
            trajectories = await asyncio.wait_for(r.balancer.run_step(prompts(6, tools=1)), timeout=10)
            assert {t.verdict for t in trajectories} == {"error"}, trajectories
            assert all("every engine is lost" in (t.error or "") for t in trajectories), trajectories
            assert r.balancer.healthy == [False, False]
            r.assert_released()

    run(body)


def test_every_placement_is_timed_as_a_dispatch_decision() -> None:
    async def body() -> None:
        metrics = RolloutMetrics(CollectorRegistry())
        async with rig(engines(2), metrics=metrics) as r:
            trajectories = await r.balancer.run_step(prompts(5, tools=1))
            assert all(t.verdict == "answer" for t in trajectories)
            timed = metrics.dispatch_seconds.collect()[0].samples
            count = next(sample.value for sample in timed if sample.name.endswith("_count"))
            assert count == r.balancer.flights.decisions == sum(t.turns for t in trajectories) == 10
            r.assert_released()

    run(body)


def test_a_turn_that_times_out_ends_its_rollout_and_releases_it() -> None:
    async def body() -> None:
        async with rig(engines(2, latency=2.0), request_timeout_s=0.2) as r:
            trajectories = await r.balancer.run_step(prompts(4))
            assert {t.verdict for t in trajectories} == {"timeout"}
            r.assert_released()

    run(body)


def test_a_turn_larger_than_every_engine_fails_its_rollout_only() -> None:
    async def body() -> None:
        async with rig(engines(2), kv_total=2000, max_response_tokens=200) as r:
            huge = RolloutPrompt(99, "x" * 10_000 + " tools=1")
            trajectories = await r.balancer.run_step([*prompts(3, tools=1), huge])
            assert [t.verdict for t in trajectories] == ["answer", "answer", "answer", "error"]
            assert "KV tokens" in (trajectories[-1].error or "")
            r.assert_released()

    run(body)


def test_cancelling_a_step_midway_releases_every_turn() -> None:
    async def body() -> None:
        # each engine fits two turns at a time, so some turns wait in the queue when the step is cancelled
        async with rig(engines(2, latency=0.3), kv_total=2400, tool_latency=0.3) as r:
            step = asyncio.ensure_future(r.balancer.run_step(prompts(10, tools=2)))
            await asyncio.sleep(0.45)
            assert r.balancer.dispatcher.queued() > 0 or r.tools.running > 0
            step.cancel()
            with pytest.raises(asyncio.CancelledError):
                await step
            r.assert_released()
            trajectories: list[Trajectory] = await r.balancer.run_step(prompts(2, tools=1))
            assert [t.verdict for t in trajectories] == ["answer", "answer"]
            r.assert_released()

    run(body)


def test_simulated_tools_time_out() -> None:
    async def body() -> None:
        tools = SimulatedTools(lambda call: 5.0, output_tokens=10, timeout_s=0.05)
        result = await tools.run(ToolCall(1, 0, "while True: pass"))
        assert result.verdict == "timeout" and "timed out" in result.output
        fast = await SimulatedTools(lambda call: 0.0, output_tokens=10).run(ToolCall(1, 0, "print(1)"))
        assert (fast.verdict, fast.tokens, len(fast.output)) == ("ok", 10, 40)

    run(body)


class BrokenTools:
    async def run(self, call: ToolCall) -> ToolResult:
        raise RuntimeError("sandbox down")


def test_a_tool_executor_that_raises_shows_the_model_an_error() -> None:
    async def body() -> None:
        async with rig(engines(2)) as r:
            r.balancer.tools = BrokenTools()
            trajectories = await r.balancer.run_step(prompts(2, tools=1))
            assert [t.verdict for t in trajectories] == ["answer", "answer"]
            assert "tool failed: RuntimeError: sandbox down" in trajectories[0].text
            r.assert_released()

    run(body)


def test_chunked_turns_continue_until_the_turn_ends_and_release_every_chunk() -> None:
    async def body() -> None:
        async with rig(engines(3), chunk_tokens=16) as r:
            trajectories = await r.balancer.run_step(prompts(6, tools=2))
            for t in trajectories:
                assert t.verdict == "answer", t
                assert (t.turns, t.tool_calls, t.completion_tokens) == (3, 2, 3 * TOKENS_PER_TURN)
                assert len(t.engines) == 9  # each 40-token turn is three requests: 16 + 16 + 8
                assert t.text.count("<part 16>") == 6 and t.text.endswith("the answer is 42")
            requests = [max_tokens for fake in r.fakes for _, max_tokens in fake.requests]
            assert len(requests) == 54 and max(requests) == 16
            r.assert_released()

    run(body)


def test_a_chunk_cut_at_the_budget_ends_the_rollout_with_budget() -> None:
    async def body() -> None:
        async with rig(engines(2), chunk_tokens=16, max_response_tokens=50) as r:
            trajectories = await r.balancer.run_step(prompts(4, tools=5))
            for t in trajectories:  # 40 tokens (16 + 16 + 8), tool call, then 10 of the next turn
                assert (t.verdict, t.turns, t.tool_calls, t.completion_tokens) == ("budget", 2, 1, 50), t
            r.assert_released()

    run(body)


def test_chunk_tokens_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        Balancer(
            [HttpEngine("http://127.0.0.1:1", None)],  # type: ignore[arg-type]
            make_dispatcher("kv_aware", [EngineState(0, 1000)]),
            SimulatedTools(lambda call: 0.0),
            max_response_tokens=10,
            max_turns=1,
            chunk_tokens=0,
        )

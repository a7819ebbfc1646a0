"""The rollout balancer: multi-turn agentic rollouts on OpenAI-compatible engines, placed by a Dispatcher.

Every engine request of every rollout is a ``core.dispatch.Request``: its ``prompt_tokens`` is the
rollout's current context, its ``max_new_tokens`` what is left of the stage's response budget
(``max_response_tokens`` minus the completion tokens the rollout already generated), capped at
``chunk_tokens`` when that is set, its ``previous_engine`` the engine of the rollout's last request.
Once the dispatcher places the request, the engine gets ``POST /v1/completions`` with ``max_tokens`` =
``max_new_tokens``, so no request can ever ask for more than the stage allows or the reservation covers.
A turn cut at its chunk (``finish_reason="length"`` with budget left) continues at once in a new request
whose prompt holds what was generated; the engine that served it has that prefix cached, and the
dispatcher may keep it there. This is the asyncio twin of
``orchestrator.sim.rollout_phase`` (the same loop on virtual time). Every engine request is a flight of the
ledger it shares with the router (``orchestrator.rollout.flights``): placed by the dispatcher, retried
elsewhere when its engine is lost, failed at once when every engine is, and released exactly once
whatever its ending (answer, engine error, timeout, cancellation of ``run_step``).

Tool-call convention: a completion whose text, trailing whitespace stripped, *ends* with a fenced block
opened by ```` ```python ```` and closed by ```` ``` ```` asks to run the code inside that block. The rollout
then leaves the engine (its reservation is released), the ``ToolExecutor`` runs the code while the engine
serves other rollouts, and the next turn's context is the previous context + the completion + the tool's
output as a block fenced with ```` ```output ````. To make a real engine stop right after the closing fence,
pass e.g. ``sampling={"stop": ["```\\n"], "include_stop_str_in_output": True}`` (vLLM's names).

A rollout ends with a final answer (a completion that ends in no tool call), at ``max_turns`` engine
turns, or when its response budget is spent (the engine stopped with ``finish_reason="length"``, or nothing
is left for another turn). Dispatch decisions are the dispatcher's: O(log n) in engines.

The dispatcher must belong to this balancer alone: ``engine_lost`` hands back every request of an engine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from orchestrator.core.dispatch import Dispatcher, EngineState, Request
from orchestrator.httpguard import Unauthorized
from orchestrator.rollout.engine import COMPLETIONS, EngineRejected, EngineUnavailable, InferenceEngine
from orchestrator.rollout.flights import FlightLedger
from orchestrator.rollout.router import estimate_tokens
from orchestrator.rollout.tools import ToolCall, ToolExecutor, ToolResult

if TYPE_CHECKING:
    from orchestrator.telemetry.rollout_metrics import RolloutMetrics

__all__ = ["Balancer", "RolloutPrompt", "Trajectory", "TrajectoryVerdict", "parse_tool_call"]

log = logging.getLogger(__name__)

TOOL_OPEN = "```python"
FENCE = "```"

TrajectoryVerdict = Literal["answer", "max_turns", "budget", "timeout", "error"]


@dataclass(frozen=True)
class RolloutPrompt:
    """One rollout to run: its id (unique within a step) and its prompt text."""

    rollout_id: int
    prompt: str
    sampling: Mapping[str, Any] | None = None  # this rollout's own sampling fields (e.g. its ``seed``)


@dataclass(frozen=True)
class Trajectory:
    """A finished rollout: its whole transcript and per-rollout metrics."""

    rollout_id: int
    text: str  # prompt + every completion + every tool output
    turns: int  # engine turns that produced a completion
    tool_calls: int
    completion_tokens: int
    wall_seconds: float
    engines: tuple[int, ...]  # the engine of each engine request
    verdict: TrajectoryVerdict
    retries: int = 0  # attempts lost with their engine and retried elsewhere
    error: str | None = None
    # The weights version each engine request was answered with (``weights_version`` in the answer), or
    # None where the engine reports none; aligned with ``engines``.
    weights_versions: tuple[int | None, ...] = ()


def parse_tool_call(text: str) -> str | None:
    """The code of the ```` ```python ```` block that ends ``text``, or None (see the module docstring)."""
    body = text.rstrip()
    if not body.endswith(FENCE):
        return None
    body = body[: -len(FENCE)]
    start = body.rfind(TOOL_OPEN)
    if start < 0:
        return None
    code = body[start + len(TOOL_OPEN) :]
    if FENCE in code:  # the closing fence belongs to some other block
        return None
    return code.strip("\n")


def format_tool_output(result: ToolResult) -> str:
    """How a tool's output is appended to the context."""
    return f"\n{FENCE}output\n{result.output}\n{FENCE}\n"


@dataclass
class _Rollout:
    """A rollout in progress."""

    prompt: RolloutPrompt
    context: str
    context_tokens: int
    started: float
    generated: int = 0
    turns: int = 0
    tool_calls: int = 0
    retries: int = 0
    engines: list[int] = field(default_factory=list)
    versions: list[int | None] = field(default_factory=list)

    def previous_engine(self) -> int | None:
        return self.engines[-1] if self.engines else None

    def count_retry(self) -> None:
        self.retries += 1

    def trajectory(self, verdict: TrajectoryVerdict, error: str | None = None) -> Trajectory:
        return Trajectory(
            rollout_id=self.prompt.rollout_id,
            text=self.context,
            turns=self.turns,
            tool_calls=self.tool_calls,
            completion_tokens=self.generated,
            wall_seconds=time.monotonic() - self.started,
            engines=tuple(self.engines),
            verdict=verdict,
            retries=self.retries,
            error=error,
            weights_versions=tuple(self.versions),
        )


@dataclass(frozen=True)
class _Completion:
    text: str
    tokens: int
    prompt_tokens: int | None  # as the engine counted them
    truncated: bool  # stopped by max_tokens
    weights_version: int | None = None


def _read_completion(body: dict[str, Any], max_tokens: int) -> _Completion:
    """The text and token counts of an OpenAI completion answer."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    text = str(choice.get("text") or "")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    tokens = usage.get("completion_tokens")
    if not isinstance(tokens, int) or tokens < 0:
        tokens = estimate_tokens({"prompt": text}, COMPLETIONS) if text else 0
    prompt_tokens = usage.get("prompt_tokens")
    version = body.get("weights_version")
    return _Completion(
        text=text,
        tokens=min(tokens, max_tokens),
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        truncated=choice.get("finish_reason") == "length" or tokens >= max_tokens,
        weights_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
    )


class Balancer:
    """Runs steps of multi-turn rollouts over ``engines``, each turn placed by ``dispatcher``."""

    def __init__(
        self,
        engines: Sequence[InferenceEngine],
        dispatcher: Dispatcher,
        tools: ToolExecutor,
        *,
        max_response_tokens: int,
        max_turns: int,
        request_timeout_s: float = 600,
        max_attempts: int | None = None,
        sampling: Mapping[str, Any] | None = None,
        chunk_tokens: int | None = None,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        """``metrics``: where dispatch decisions are timed (``orch_dispatch_decision_seconds``)."""
        if not engines:
            raise ValueError("a balancer needs at least one engine")
        if max_response_tokens < 1 or max_turns < 1:
            raise ValueError(
                f"max_response_tokens and max_turns must be >= 1, got {max_response_tokens}, {max_turns}"
            )
        self.engines = list(engines)
        self.dispatcher = dispatcher
        self.tools = tools
        if chunk_tokens is not None and chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1 or None, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self.max_response_tokens = max_response_tokens
        self.max_turns = max_turns
        self.request_timeout_s = request_timeout_s
        self.sampling = dict(sampling or {})
        self.flights = FlightLedger(
            dispatcher,
            self.engines,
            max_attempts=max_attempts,
            observe_decision=None if metrics is None else metrics.dispatch_seconds.observe,
        )

    @property
    def healthy(self) -> list[bool]:
        """Per engine, whether it is healthy as this balancer last saw it."""
        return self.flights.healthy

    @property
    def retries(self) -> int:
        """Turns handed back by a lost engine and resubmitted, over this balancer's life."""
        return self.flights.requeued

    # ---- a step ---------------------------------------------------------------------------------

    async def run_step(self, prompts: Sequence[RolloutPrompt]) -> list[Trajectory]:
        """Run every prompt to the end of its rollout; trajectories in the order of ``prompts``."""
        ids = [prompt.rollout_id for prompt in prompts]
        if len(set(ids)) != len(ids):
            raise ValueError("rollout ids must be unique within a step")
        await self.revive_lost()
        tasks = [asyncio.ensure_future(self._rollout(prompt)) for prompt in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # cancelled, or a bug in one rollout: stop the others, whose finally blocks release all
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def revive_lost(self) -> None:
        """Give back to the dispatcher every lost engine whose ``/metrics`` answers again."""
        await asyncio.gather(*(self._revive(i) for i, ok in enumerate(self.healthy) if not ok))

    async def _revive(self, index: int) -> None:
        engine = self.engines[index]
        try:
            load = await asyncio.wait_for(engine.load(), timeout=min(10.0, self.request_timeout_s))
        except (EngineUnavailable, asyncio.TimeoutError):
            return
        total = load.kv_total_tokens or engine.kv_total_tokens
        self.dispatcher.update(EngineState(engine=index, kv_total_tokens=total, healthy=True))
        self.healthy[index] = True
        log.warning("engine %d (%s) answers again", index, engine.base_url)

    # ---- one rollout ----------------------------------------------------------------------------

    async def _rollout(self, prompt: RolloutPrompt) -> Trajectory:
        tokens = estimate_tokens({"prompt": prompt.prompt}, COMPLETIONS) if prompt.prompt else 0
        rollout = _Rollout(prompt, prompt.prompt, tokens, time.monotonic())
        try:
            return rollout.trajectory(await self._turns(rollout))
        except asyncio.TimeoutError:
            return rollout.trajectory("timeout", f"no answer within {self.request_timeout_s:g}s")
        except (EngineUnavailable, EngineRejected) as error:
            return rollout.trajectory("error", str(error))

    async def _turns(self, rollout: _Rollout) -> TrajectoryVerdict:
        """Turns until the rollout ends; its verdict."""
        while True:
            remaining = self.max_response_tokens - rollout.generated
            if remaining <= 0:
                return "budget"
            if rollout.turns >= self.max_turns:
                return "max_turns"
            completion = await self._turn(rollout)
            code = parse_tool_call(completion.text)
            if code is None:
                return "budget" if completion.truncated else "answer"
            if rollout.turns >= self.max_turns:
                return "max_turns"
            if rollout.generated >= self.max_response_tokens:
                return "budget"
            rollout.tool_calls += 1
            result = await self._run_tool(ToolCall(rollout.prompt.rollout_id, rollout.turns - 1, code))
            rollout.context += format_tool_output(result)
            rollout.context_tokens += result.tokens

    async def _run_tool(self, call: ToolCall) -> ToolResult:
        """The tool's result; a tool executor that raises becomes an ``error`` verdict the model sees, but
        a tool service refusing orch's token (``Unauthorized``) ends the step."""
        try:
            return await self.tools.run(call)
        except Unauthorized:  # every call would fail alike: end the step with the one line that says why
            raise
        except Exception as error:  # a broken executor must not end every rollout of the step
            message = f"tool failed: {type(error).__name__}: {error}"
            tokens = estimate_tokens({"prompt": message}, COMPLETIONS)
            return ToolResult(message, tokens=tokens, verdict="error", infra_error=message)

    async def _turn(self, rollout: _Rollout) -> _Completion:
        """One model turn: engine requests of at most ``chunk_tokens`` until it ends or the budget does."""
        text, tokens = "", 0
        while True:
            remaining = self.max_response_tokens - rollout.generated
            limit = remaining if self.chunk_tokens is None else min(remaining, self.chunk_tokens)
            part = await self._generate(rollout, limit)
            text, tokens = text + part.text, tokens + part.tokens
            if not part.truncated or limit >= remaining or part.tokens == 0:
                break  # the turn ended, or the budget is spent (or the engine gave nothing: do not spin)
        rollout.turns += 1
        return _Completion(text, tokens, None, part.truncated)

    async def _generate(self, rollout: _Rollout, limit: int) -> _Completion:
        """One engine request with at most ``limit`` new tokens; the rollout records its completion."""
        request = Request(
            request_id=self.flights.next_id(),
            rollout_id=rollout.prompt.rollout_id,
            turn=rollout.turns,
            prompt_tokens=rollout.context_tokens,
            max_new_tokens=limit,
            previous_engine=rollout.previous_engine(),
        )
        sampling = {**self.sampling, **(rollout.prompt.sampling or {})}
        payload = {**sampling, "prompt": rollout.context, "max_tokens": limit}
        engine, body = await self._place_and_send(rollout, request, payload)
        completion = _read_completion(body, limit)
        rollout.generated += completion.tokens
        rollout.engines.append(engine)
        rollout.versions.append(completion.weights_version)
        rollout.context += completion.text
        rollout.context_tokens = (completion.prompt_tokens or rollout.context_tokens) + completion.tokens
        return completion

    async def _place_and_send(
        self, rollout: _Rollout, request: Request, payload: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        try:
            flight = self.flights.submit(request)
        except ValueError as error:  # the turn fits no engine's KV cache
            raise EngineRejected(400, str(error)) from error
        return await self.flights.fly(
            flight, payload, timeout_s=self.request_timeout_s, on_retry=rollout.count_retry
        )

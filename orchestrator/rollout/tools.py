"""Tool execution for rollouts: the protocol the balancer calls, and its implementation on sandboxes.

``SandboxTools`` runs the code of each tool call on a ``CodeExecutor`` from ``orchestrator.tools``: the
in-process sandbox pool (embedded), an ``orch tools serve`` over HTTP, or sandbox pools on Ray;
``open_tools`` opens the one a run spec's ``tools`` section asks for.
``orchestrator.sim.tools.SimulatedTools`` is the simulated one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.spec import ToolsSpec
from orchestrator.tools.api import CodeExecutor, ExecResult, Limits
from orchestrator.tools.executors import limits_of, open_executor

__all__ = ["SandboxTools", "ToolCall", "ToolExecutor", "ToolResult", "ToolVerdict", "open_tools"]

CHARS_PER_TOKEN = 4  # the router's estimate, for tool output joining the context

ToolVerdict = Literal["ok", "error", "timeout"]
_TOOL_VERDICTS: dict[str, ToolVerdict] = {"ok": "ok", "timeout": "timeout"}


@dataclass(frozen=True)
class ToolCall:
    """The code a rollout asked to run at the end of one of its turns."""

    rollout_id: int
    turn: int
    code: str


@dataclass(frozen=True)
class ToolResult:
    """What the tool printed (shown to the model), its size in tokens, and how the run ended."""

    output: str
    tokens: int
    verdict: ToolVerdict = "ok"
    # Why the call failed for the sandbox's sake, not the code's (its worker died, the executor broke):
    # the trainer masks such a trajectory out instead of scoring it.
    infra_error: str | None = None


class ToolExecutor(Protocol):
    """Runs one tool call; never raises for a failing program (that is a verdict, not an exception)."""

    async def run(self, call: ToolCall) -> ToolResult: ...


class SandboxTools:
    """Runs each call's code on ``executor`` within ``limits``; shows the model its stdout (and stderr when
    the code failed), at most ``max_output_chars`` of it. At most ``max_concurrent_calls`` calls run at
    once (if set); the others wait their turn here, not in the executor."""

    def __init__(
        self,
        executor: CodeExecutor,
        limits: Limits,
        max_output_chars: int = 4096,
        *,
        max_concurrent_calls: int | None = None,
    ) -> None:
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        if max_concurrent_calls is not None and max_concurrent_calls < 1:
            raise ValueError(f"max_concurrent_calls must be >= 1, got {max_concurrent_calls}")
        self.executor = executor
        self.limits = limits
        self.max_output_chars = max_output_chars
        self.max_concurrent_calls = max_concurrent_calls
        self._slots = asyncio.Semaphore(max_concurrent_calls) if max_concurrent_calls else None

    async def run(self, call: ToolCall) -> ToolResult:
        async with self._slots or contextlib.nullcontext():
            result = await self.executor.execute(call.code, self.limits)
        return self._shown(result)

    def _shown(self, result: ExecResult) -> ToolResult:
        output = result.stdout if result.verdict == "ok" else result.stdout + result.stderr
        if result.verdict == "timeout":
            output += f"\ntimed out after {self.limits.wall_seconds:g}s"
        elif result.verdict not in ("ok", "error"):
            output += f"\n[{result.verdict.replace('_', ' ')}]"
        if len(output) > self.max_output_chars:
            output = output[: self.max_output_chars] + "\n[output truncated]"
        verdict = _TOOL_VERDICTS.get(result.verdict, "error")  # memory, output cut, killed: errors
        # killed with no exit status: no process ran, or it was lost with its worker (ExecResult.abandoned)
        infra = (result.stderr.strip() or "sandbox worker lost") if _abandoned(result) else None
        tokens = max(1, len(output) // CHARS_PER_TOKEN)
        return ToolResult(output, tokens=tokens, verdict=verdict, infra_error=infra)


def _abandoned(result: ExecResult) -> bool:
    return result.verdict == "killed" and result.exit_status is None


@contextlib.asynccontextmanager
async def open_tools(tools: ToolsSpec, *, workers: int | None = None) -> AsyncIterator[SandboxTools]:
    """The tools a run's rollouts call, as its spec's ``tools`` section says: the executor ``tools.service``
    names, the per-call limits, and at most ``tools.max_concurrent_calls`` calls in flight at once."""
    async with open_executor(tools, workers=workers) as executor:
        yield SandboxTools(executor, limits_of(tools), max_concurrent_calls=tools.max_concurrent_calls)

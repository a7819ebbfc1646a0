"""Tool execution for rollouts: the protocol the balancer calls, and its implementation on sandboxes.

``SandboxTools`` runs the code of each tool call on a ``CodeExecutor`` from ``orchestrator.tools``: the
in-process sandbox pool (embedded), an ``orch tools serve`` over HTTP, or sandbox pools on Ray.
``orchestrator.sim.tools.SimulatedTools`` is the simulated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.tools.api import CodeExecutor, Limits

__all__ = ["SandboxTools", "ToolCall", "ToolExecutor", "ToolResult", "ToolVerdict"]

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


class ToolExecutor(Protocol):
    """Runs one tool call; never raises for a failing program (that is a verdict, not an exception)."""

    async def run(self, call: ToolCall) -> ToolResult: ...


class SandboxTools:
    """Runs each call's code on ``executor`` within ``limits``; shows the model its stdout (and stderr when
    the code failed), at most ``max_output_chars`` of it."""

    def __init__(self, executor: CodeExecutor, limits: Limits, max_output_chars: int = 4096) -> None:
        if max_output_chars < 1:
            raise ValueError(f"max_output_chars must be >= 1, got {max_output_chars}")
        self.executor = executor
        self.limits = limits
        self.max_output_chars = max_output_chars

    async def run(self, call: ToolCall) -> ToolResult:
        result = await self.executor.execute(call.code, self.limits)
        output = result.stdout if result.verdict == "ok" else result.stdout + result.stderr
        if result.verdict == "timeout":
            output += f"\ntimed out after {self.limits.wall_seconds:g}s"
        elif result.verdict not in ("ok", "error"):
            output += f"\n[{result.verdict.replace('_', ' ')}]"
        if len(output) > self.max_output_chars:
            output = output[: self.max_output_chars] + "\n[output truncated]"
        verdict = _TOOL_VERDICTS.get(result.verdict, "error")  # memory, output cut, killed: errors
        return ToolResult(output, tokens=max(1, len(output) // CHARS_PER_TOKEN), verdict=verdict)

"""Tool execution for rollouts: the protocol the balancer calls, and its two implementations.

``SandboxTools`` runs the code of each tool call on a ``CodeExecutor`` from ``orchestrator.tools``: the
in-process sandbox pool (embedded), an ``orch tools serve`` over HTTP, or sandbox pools on Ray.
``SimulatedTools`` sleeps for a chosen latency and answers a fixed-size output, for simulations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from orchestrator.tools.api import CodeExecutor, Limits

__all__ = ["SandboxTools", "SimulatedTools", "ToolCall", "ToolExecutor", "ToolResult", "ToolVerdict"]

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


class SimulatedTools:
    """Sleeps ``latency_s(call)`` seconds (at most ``timeout_s``), then prints ``output_tokens`` tokens."""

    def __init__(
        self, latency_s: Callable[[ToolCall], float], output_tokens: int = 100, timeout_s: float = 10
    ) -> None:
        if output_tokens < 0:
            raise ValueError(f"output_tokens must be >= 0, got {output_tokens}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.latency_s = latency_s
        self.output_tokens = output_tokens
        self.timeout_s = timeout_s
        self.calls = 0  # tool calls started
        self.running = 0  # tool calls running now
        self.peak_running = 0  # the most that ever ran at once

    async def run(self, call: ToolCall) -> ToolResult:
        latency = max(0.0, self.latency_s(call))
        self.calls += 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            await asyncio.sleep(min(latency, self.timeout_s))
        finally:
            self.running -= 1
        if latency > self.timeout_s:
            message = f"timed out after {self.timeout_s:g}s"
            return ToolResult(message, tokens=max(1, len(message) // 4), verdict="timeout")
        return ToolResult(_filler(call, self.output_tokens), tokens=self.output_tokens)


def _filler(call: ToolCall, tokens: int) -> str:
    """About ``tokens`` tokens of text (≈4 characters a token)."""
    head = f"rollout {call.rollout_id} turn {call.turn} ok"
    return (head + " " + "." * max(0, 4 * tokens - len(head) - 1))[: max(len(head), 4 * tokens)]

"""Simulated tool calls: ``SimulatedTools`` sleeps for a chosen latency and answers a fixed-size output."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from orchestrator.rollout.tools import ToolCall, ToolResult

__all__ = ["SimulatedTools"]


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

"""Rollout-side scheduler metrics: rollouts and tool calls in flight, KV headroom, dispatch latency."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram

from orchestrator.telemetry.names import SCHEDULER_METRICS

__all__ = ["RolloutMetrics"]

# Decisions are microseconds today (round robin) and must stay far below a decode step (~10 ms).
DISPATCH_BUCKETS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _help(name: str) -> str:
    return SCHEDULER_METRICS[name][1]


class RolloutMetrics:
    """Owned by whatever drives rollouts: the simulated trainer, the balancer, the router."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rollouts_in_flight = Gauge(
            "orch_rollouts_in_flight", _help("orch_rollouts_in_flight"), ["run"], registry=registry
        )
        self.tool_calls_in_flight = Gauge(
            "orch_tool_calls_in_flight", _help("orch_tool_calls_in_flight"), ["run"], registry=registry
        )
        self.kv_cache_free = Gauge(
            "orch_engine_kv_cache_free_ratio",
            _help("orch_engine_kv_cache_free_ratio"),
            ["run", "engine"],
            registry=registry,
        )
        self.engine_busy = Gauge(
            "orch_engine_busy_ratio", _help("orch_engine_busy_ratio"), ["run", "engine"], registry=registry
        )
        self.queue_peak = Gauge(
            "orch_rollout_queue_peak", _help("orch_rollout_queue_peak"), ["run"], registry=registry
        )
        self.dispatch_seconds = Histogram(
            "orch_dispatch_decision_seconds",
            _help("orch_dispatch_decision_seconds"),
            buckets=DISPATCH_BUCKETS,
            registry=registry,
        )

    def timed(self, dispatch: Callable[[int, int], int]) -> Callable[[int, int], int]:
        """Wrap a dispatch policy so every decision's latency is observed."""

        def decide(rollout: int, turn: int) -> int:
            started = time.perf_counter()
            engine = dispatch(rollout, turn)
            self.dispatch_seconds.observe(time.perf_counter() - started)
            return engine

        return decide

    def observe_decisions(self, seconds: float, decisions: int) -> None:
        """A batch of ``decisions`` placements took ``seconds``: observe the mean once per decision."""
        mean = seconds / decisions
        for _ in range(decisions):
            self.dispatch_seconds.observe(mean)

    def rollout_phase(self, run: str, rollouts: int, tool_calls: float, kv_free: dict[str, float]) -> None:
        self.rollouts_in_flight.labels(run).set(rollouts)
        self.tool_calls_in_flight.labels(run).set(tool_calls)
        for engine, free in kv_free.items():
            self.kv_cache_free.labels(run, engine).set(free)

    def phase_done(self, run: str, busy_ratio: tuple[float, ...], queue_peak: int) -> None:
        """What the finished rollout phase did: per-engine busy share and the queue's peak."""
        for engine, busy in enumerate(busy_ratio):
            self.engine_busy.labels(run, str(engine)).set(busy)
        self.queue_peak.labels(run).set(queue_peak)

    def idle(self, run: str) -> None:
        self.rollouts_in_flight.labels(run).set(0)
        self.tool_calls_in_flight.labels(run).set(0)

"""What each engine holds (reservations, in-flight requests, health) and the indexes that find an engine.

Every decision costs O(log n) in engines: choices come from heaps with lazy invalidation (a version per
engine; stale entries are skipped when they reach the top, and the heap is rebuilt when it doubles), and the
healthy engines are a sorted list searched with ``bisect``. Up to ``SCAN_MAX_ENGINES`` engines the engine
with the most KV budget is remembered instead and found again by one scan when its own budget shrinks (O(1)
for most decisions, O(n) at worst), which is cheaper at those sizes; it chooses exactly what the heap would.
Health and ``kv_total_tokens`` changes are rare and cost O(n). Free KV, running and waiting as engines
report them are kept for the caller but not used: the ledger of reservations is the source of truth, since
an engine's report lags the requests just sent to it. The GPU's utilization (NVML, from ``orch agent``)
breaks ties between engines with as many requests in flight (``least_outstanding``, ``power_of_two``): it is
the one load figure left for an engine that reports nothing itself, and it shows work the ledger cannot see
(other clients).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import replace

from orchestrator.core.dispatch.protocol import EngineState, Request

__all__ = ["SCAN_MAX_ENGINES", "Ledger"]

# Up to this many engines the engine with the most KV budget is found by a remembered scan, above it by a
# heap: both choose the same engine. Measured with bench/dispatch_throughput.py's workload (5,000 turns in
# flight, scan vs heap in lockstep, 3 runs each, on 2 loaded cores): 1.2-1.5x at 32 and 64 engines,
# 0.9-1.1x at 128 to 512, 0.7-1.0x at 1,024; with every turn through the central queue (a rescan per
# placement, the scan's worst case) 0.9-1.5x at 16 to 64, 0.85-1.1x at 128, 0.6-0.8x at 256.
SCAN_MAX_ENGINES = 64


class _LazyHeap:
    """Engines ordered by an int key (ties → lowest index); a key of None leaves the engine out.

    ``touch`` after any change to an engine's key; stale entries are dropped when they reach the top.
    """

    __slots__ = ("_heap", "_key", "_version")

    def __init__(self, size: int, key: Callable[[int], int | None]) -> None:
        self._key = key
        self._version = [0] * size
        self._heap: list[tuple[int, int, int]] = []
        self.rebuild()

    def rebuild(self) -> None:
        version, key = self._version, self._key
        self._heap = [(k, e, version[e]) for e in range(len(version)) if (k := key(e)) is not None]
        heapq.heapify(self._heap)

    def touch(self, engine: int) -> None:
        self._version[engine] += 1
        key = self._key(engine)
        if key is not None:
            heapq.heappush(self._heap, (key, engine, self._version[engine]))
            if len(self._heap) > 2 * len(self._version) + 64:
                self.rebuild()

    def peek(self) -> int | None:
        heap, version = self._heap, self._version
        while heap:
            _, engine, seen = heap[0]
            if seen == version[engine]:
                return engine
            heapq.heappop(heap)
        return None


class _MostFreeScan:
    """The healthy engine with the most KV budget (ties → lowest index), found by a scan and remembered.

    ``touch`` keeps the remembered engine current in O(1) unless that engine's budget shrinks (or it
    leaves), which costs one scan at the next ``peek``. For few engines this beats the heap: the scan is a
    C-level ``max`` over a list, and nothing is pushed per change.
    """

    __slots__ = ("_best", "_best_free", "_free", "_healthy", "_states")

    def __init__(self, ledger: Ledger) -> None:
        self._free = ledger.free
        self._states = ledger.states
        self._healthy = ledger.healthy
        self._best = -1  # -1: unknown, scan at the next peek
        self._best_free = 0

    def touch(self, engine: int) -> None:
        best = self._best
        if best < 0:
            return
        free = self._free[engine]
        if engine == best:
            if free < self._best_free or not self._states[engine].healthy:
                self._best = -1
            else:
                self._best_free = free
        elif (free > self._best_free or (free == self._best_free and engine < best)) and self._states[
            engine
        ].healthy:
            self._best, self._best_free = engine, free

    def peek(self) -> int | None:
        if self._best >= 0:
            return self._best
        healthy = self._healthy
        if not healthy:
            return None
        free = self._free
        best = max(healthy, key=free.__getitem__)  # sorted: the first maximum is the lowest index
        self._best, self._best_free = best, free[best]
        return best


class Ledger:
    """Per-engine reservations, in-flight requests and health; keeps registered heaps current."""

    def __init__(self, engines: Sequence[EngineState], *, scan: bool = False) -> None:
        self.states = list(engines)
        self.size = len(self.states)
        self.scan = scan  # kv budget: _MostFreeScan instead of a heap
        self.reserved = [0] * self.size
        self.free = [state.kv_total_tokens for state in self.states]  # kv_total - reserved, per engine
        self.outstanding = [0] * self.size
        self.on_engine: list[dict[int, Request]] = [{} for _ in range(self.size)]
        self.in_flight: dict[int, int] = {}  # request_id -> engine
        self.healthy = [state.engine for state in self.states if state.healthy]  # sorted
        self.max_total = max(state.kv_total_tokens for state in self.states)
        self._heaps: list[_LazyHeap | _MostFreeScan] = []
        self._by_budget: _LazyHeap | _MostFreeScan | None = None
        self._touch: Callable[[int], None] = _untouched  # after any change to an engine: tells _heaps

    def heap(self, key: Callable[[int], int | None]) -> _LazyHeap:
        heap = _LazyHeap(self.size, key)
        self._register(heap)
        return heap

    def _register(self, structure: _LazyHeap | _MostFreeScan) -> None:
        self._heaps.append(structure)
        touches = tuple(heap.touch for heap in self._heaps)
        if len(touches) == 1:
            self._touch = touches[0]  # the usual case: one call per change, no loop
        else:

            def touch_all(engine: int) -> None:
                for touch in touches:
                    touch(engine)

            self._touch = touch_all

    def by_budget(self) -> _LazyHeap | _MostFreeScan:
        """Healthy engines, most KV budget first; one structure shared by every rule that asks."""
        if self._by_budget is None:
            if self.scan:
                self._by_budget = _MostFreeScan(self)
                self._register(self._by_budget)
            else:
                free, states = self.free, self.states
                self._by_budget = self.heap(lambda e: -free[e] if states[e].healthy else None)
        return self._by_budget

    def is_healthy(self, engine: int) -> bool:
        return self.states[engine].healthy

    def budget(self, engine: int) -> int:
        return self.free[engine]

    def load(self, engine: int) -> int:
        """In-flight requests, then the GPU's utilization in thousandths (0 when unknown), as one int."""
        utilization = self.states[engine].utilization_ratio
        return self.outstanding[engine] * 1001 + (round(utilization * 1000) if utilization is not None else 0)

    def check(self, engine: int) -> None:
        if not 0 <= engine < self.size:
            raise KeyError(f"unknown engine {engine} (engines are 0..{self.size - 1})")

    def assign(self, request: Request, engine: int) -> None:
        reservation = request.reservation
        self.reserved[engine] += reservation
        self.free[engine] -= reservation
        self.outstanding[engine] += 1
        self.on_engine[engine][request.request_id] = request
        self.in_flight[request.request_id] = engine
        self._touch(engine)

    def release(self, request_id: int) -> Request:
        engine = self.in_flight.pop(request_id)
        request = self.on_engine[engine].pop(request_id)
        reservation = request.reservation
        self.reserved[engine] -= reservation
        self.free[engine] += reservation
        self.outstanding[engine] -= 1
        self._touch(engine)
        return request

    def lose(self, engine: int) -> list[Request]:
        self.set_state(replace(self.states[engine], healthy=False))
        return [self.release(request_id) for request_id in list(self.on_engine[engine])]

    def set_state(self, state: EngineState) -> None:
        old = self.states[state.engine]
        self.states[state.engine] = state
        if old.healthy != state.healthy:
            if state.healthy:
                insort(self.healthy, state.engine)
            else:
                self.healthy.remove(state.engine)
        if old.kv_total_tokens != state.kv_total_tokens:
            self.free[state.engine] = state.kv_total_tokens - self.reserved[state.engine]
            self.max_total = max(s.kv_total_tokens for s in self.states)
        if (old.healthy, old.kv_total_tokens, old.utilization_ratio) != (
            state.healthy,
            state.kv_total_tokens,
            state.utilization_ratio,
        ):
            self._touch(state.engine)

    def next_healthy(self, start: int) -> int | None:
        """The first healthy engine at or after ``start``, wrapping around; None if there is none."""
        if not self.healthy:
            return None
        index = bisect_left(self.healthy, start)
        return self.healthy[index if index < len(self.healthy) else 0]


def _untouched(engine: int) -> None:
    """What a change touches while no heap is registered: nothing."""

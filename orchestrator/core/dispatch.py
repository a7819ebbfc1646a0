"""Rollout dispatch: which inference engine serves the next rollout turn. Pure: no I/O, no clock.

A rollout turn prefills its context and decodes up to the stage's max response tokens, so the most KV
cache it can ever hold is ``prompt_tokens + max_new_tokens`` (its *reservation*, as in rStar2-Agent,
arXiv 2508.20722). A caller may cap ``max_new_tokens`` below the response budget and continue a longer
answer in a new request (see ``orchestrator.sim.rollout_phase``): the reservation bounds what the engine
can be asked for either way. A dispatcher keeps one central queue, ordered by ``priority`` (higher first)
and then by submission, and a ledger per engine (reserved tokens, in-flight requests);
``assignments()`` places queued requests in that order, and ``finished`` /
``engine_lost`` release what a request held, whatever its ending, so no reservation can leak.

Policies (``POLICIES``):

- ``static`` — rollout ``r`` goes to engine ``r * n // expected_rollouts`` (a contiguous even split),
  else ``r % n``; an unhealthy home engine hands over to the next healthy one. No capacity check.
- ``round_robin`` — one global cursor over the healthy engines. No capacity check.
- ``least_outstanding`` — the healthy engine with the fewest in-flight requests (ties → lowest index).
- ``kv_aware`` — the healthy engine with the most KV budget left (``kv_total - reserved``, ties →
  lowest index), only if the reservation fits; otherwise the request waits in the queue. A request whose
  ``previous_engine`` is healthy waits in that engine's own queue instead (its prefix is cached there;
  anywhere else it is prefilled again, stalling that engine's decoding), unless, when it is submitted,
  another engine has room for it and a budget more than ``AFFINITY_SLACK_FRACTION`` of the previous
  engine's KV cache larger. Whatever an engine frees goes to its own queue first, then to the central one.
- ``power_of_two`` — two distinct healthy engines drawn with ``random.Random(seed)``; of those with room,
  the one with fewer in-flight requests. If neither has room but another engine has, the engine with
  the most budget takes it (a request waits only when no engine has room).
- ``prefix_affinity`` — the rollout's ``previous_engine`` when it is healthy and has room (its prefix
  cache is warm), else ``kv_aware``.

The KV-bounded policies (``kv_aware``, ``power_of_two``, ``prefix_affinity``) never reserve more than an
engine's ``kv_total_tokens``, and ``assignments()`` stops at the first queued request that fits no engine
(in each queue): head-of-line blocking, which keeps turns in order and makes a large request impossible to
starve.

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
import random
from bisect import bisect_left, insort
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from orchestrator.spec import DISPATCH_POLICIES, canonical_policy_name

__all__ = [
    "AFFINITY_SLACK_FRACTION",
    "KV_BOUNDED",
    "POLICIES",
    "Dispatcher",
    "EngineState",
    "Request",
    "make_dispatcher",
]

# kv_aware keeps a turn with the engine that holds its prefix unless another engine's free budget is larger
# by more than this share of the KV cache: re-prefilling a context elsewhere costs more than a small
# imbalance. 1/8 measured best of 0, 1/32, 1/16, 1/8, 1/4 and "always" on bench/rollout_balance.py (full
# size, 8,192 tokens, seed 20250828: 313.5, 218.3, 197.8, 191.5, 193.5, 198.9 s), before requests could
# wait for their engine (which took 12,288 tokens from 469.2 to 316.7 s: 12x less prefill).
AFFINITY_SLACK_FRACTION = 1 / 8

POLICIES: tuple[str, ...] = DISPATCH_POLICIES  # the run spec's list: one list for spec, CLI and dispatcher
KV_BOUNDED: frozenset[str] = frozenset({"kv_aware", "power_of_two", "prefix_affinity"})

# Up to this many engines the engine with the most KV budget is found by a remembered scan, above it by a
# heap: both choose the same engine. Measured with bench/dispatch_throughput.py's workload (5,000 turns in
# flight, scan vs heap in lockstep, 3 runs each, on 2 loaded cores): 1.2-1.5x at 32 and 64 engines,
# 0.9-1.1x at 128 to 512, 0.7-1.0x at 1,024; with every turn through the central queue (a rescan per
# placement, the scan's worst case) 0.9-1.5x at 16 to 64, 0.85-1.1x at 128, 0.6-0.8x at 256.
SCAN_MAX_ENGINES = 64


@dataclass(frozen=True)
class EngineState:
    """What an inference engine last reported about itself."""

    engine: int  # index 0..n-1
    kv_total_tokens: int
    kv_free_tokens: int | None = None  # as the engine last reported; None = unknown
    running: int = 0
    waiting: int = 0
    healthy: bool = True
    utilization_ratio: float | None = None  # the GPU's, from NVML; breaks ties in in-flight counts

    def __post_init__(self) -> None:
        if self.engine < 0:
            raise ValueError(f"engine index must be >= 0, got {self.engine}")
        if self.kv_total_tokens < 0:
            raise ValueError(
                f"engine {self.engine}: kv_total_tokens must be >= 0, got {self.kv_total_tokens}"
            )
        if self.utilization_ratio is not None and not 0 <= self.utilization_ratio <= 1:
            raise ValueError(
                f"engine {self.engine}: utilization_ratio must be in [0, 1], got {self.utilization_ratio}"
            )


@dataclass(frozen=True)
class Request:
    """One rollout turn to place on an engine."""

    request_id: int
    rollout_id: int
    turn: int
    prompt_tokens: int  # context to prefill
    max_new_tokens: int  # the most this request may generate (at most the remaining response budget)
    previous_engine: int | None = None
    priority: int = 0  # higher is placed first; equal priorities in submission order
    # The most KV cache this turn can hold: its context plus its longest possible answer. Computed once,
    # since every decision reads it.
    reservation: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_new_tokens < 0:
            raise ValueError(
                f"request {self.request_id}: token counts must be >= 0, got prompt {self.prompt_tokens}, "
                f"max_new {self.max_new_tokens}"
            )
        if self.rollout_id < 0:
            raise ValueError(f"request {self.request_id}: rollout_id must be >= 0, got {self.rollout_id}")
        object.__setattr__(self, "reservation", self.prompt_tokens + self.max_new_tokens)


class Dispatcher(Protocol):
    """A central priority queue in front of n engines, and the ledger of what each engine holds."""

    name: str

    def submit(self, request: Request) -> None:
        """Enqueue ``request`` (by priority, then FIFO)."""

    def assignments(self) -> list[tuple[Request, int]]:
        """Place what can be placed now, in queue order (priority, then submission); the rest stays queued."""

    def finished(self, request_id: int) -> None:
        """Release a request, whatever its ending; unknown or already-finished id → KeyError."""

    def engine_lost(self, engine: int) -> list[Request]:
        """Mark ``engine`` unhealthy; release and return its in-flight requests (caller resubmits)."""

    def update(self, state: EngineState) -> None:
        """Fresh telemetry for one engine (may restore health)."""

    def reserved_tokens(self, engine: int) -> int:
        """KV tokens reserved on ``engine`` by its in-flight requests."""

    def outstanding(self, engine: int) -> int:
        """In-flight requests on ``engine``."""

    def queued(self) -> int:
        """Requests submitted and neither placed nor cancelled."""


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

    def __init__(self, ledger: _Ledger) -> None:
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


class _Ledger:
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


Choose = Callable[[Request], int | None]  # the engine for a request now, or None: it waits


def _most_budget(ledger: _Ledger) -> Choose:
    """The healthy engine with the most KV budget left, if the reservation fits there."""
    peek, free = ledger.by_budget().peek, ledger.free

    def choose(request: Request) -> int | None:
        engine = peek()
        if engine is None or free[engine] < request.reservation:
            return None
        return engine

    return choose


Route = Callable[[Request], int | None]  # the engine whose own queue a request waits in, or None: central


def _warm_route(ledger: _Ledger) -> Route:
    """kv_aware: wait for the engine that holds the request's prefix, unless a much emptier one has room."""
    peek, free, states, size = ledger.by_budget().peek, ledger.free, ledger.states, ledger.size

    def route(request: Request) -> int | None:
        previous = request.previous_engine
        if previous is None or not 0 <= previous < size:
            return None
        state = states[previous]
        reservation = request.reservation
        if not state.healthy or reservation > state.kv_total_tokens:
            return None
        best = peek()
        if best is not None and best != previous and free[best] >= reservation:
            slack = int(state.kv_total_tokens * AFFINITY_SLACK_FRACTION)
            if free[previous] < free[best] - slack:
                return None
        return previous

    return route


def _static(ledger: _Ledger, expected_rollouts: int | None) -> Choose:
    def choose(request: Request) -> int | None:
        r, n = request.rollout_id, ledger.size
        home = (r * n // expected_rollouts) % n if expected_rollouts else r % n
        return home if ledger.is_healthy(home) else ledger.next_healthy(home)

    return choose


def _round_robin(ledger: _Ledger) -> Choose:
    cursor = 0

    def choose(request: Request) -> int | None:
        nonlocal cursor
        engine = ledger.next_healthy(cursor)
        if engine is not None:
            cursor = (engine + 1) % ledger.size
        return engine

    return choose


def _least_outstanding(ledger: _Ledger) -> Choose:
    by_load = ledger.heap(lambda e: ledger.load(e) if ledger.is_healthy(e) else None)
    return lambda request: by_load.peek()


def _power_of_two(ledger: _Ledger, seed: int) -> Choose:
    rng = random.Random(seed)
    most_budget = _most_budget(ledger)

    def choose(request: Request) -> int | None:
        fallback = most_budget(request)
        if fallback is None:  # no engine has room: wait, and draw nothing
            return None
        healthy = ledger.healthy
        first = rng.randrange(len(healthy))
        pair = [healthy[first]]
        if len(healthy) > 1:
            second = rng.randrange(len(healthy) - 1)
            pair.append(healthy[second + 1 if second >= first else second])
        fits = [e for e in sorted(pair) if ledger.budget(e) >= request.reservation]
        return min(fits, key=ledger.load) if fits else fallback

    return choose


def _prefix_affinity(ledger: _Ledger) -> Choose:
    most_budget = _most_budget(ledger)

    def choose(request: Request) -> int | None:
        previous = request.previous_engine
        if (
            previous is not None
            and 0 <= previous < ledger.size
            and ledger.is_healthy(previous)
            and ledger.budget(previous) >= request.reservation
        ):
            return previous
        return most_budget(request)

    return choose


_Entry = tuple[int, int, Request]  # (-priority, ticket, request): a heap entry of a queue


class _QueueDispatcher:
    """A central priority queue, optional per-engine queues, a ledger, and one policy's choice rule.

    With a ``route``, a request that names an engine to wait for waits in that engine's own queue, which
    gets first claim on whatever that engine frees; everything else goes through the central queue and
    ``choose``. Cancelled entries linger in their heap until they reach its top.
    """

    def __init__(self, name: str, ledger: _Ledger, choose: Choose, route: Route | None = None) -> None:
        self.name = name
        self._ledger = ledger
        self._choose = choose
        self._route = route
        self._kv_bounded = name in KV_BOUNDED
        self._queue: list[_Entry] = []
        self._warm: dict[int, list[_Entry]] = {}  # engine -> its own queue
        self._dirty: set[int] = set()  # engines whose own queue may now place something
        self._tickets: dict[int, int] = {}  # request_id -> ticket of its live queue entry
        self._next_ticket = 0

    def submit(self, request: Request) -> None:
        rid = request.request_id
        if rid in self._tickets or rid in self._ledger.in_flight:
            raise ValueError(f"request {rid} is already queued or in flight")
        if self._kv_bounded and request.reservation > self._ledger.max_total:
            raise ValueError(
                f"request {rid} reserves {request.reservation} KV tokens (prompt {request.prompt_tokens} + "
                f"max_new {request.max_new_tokens}) but the largest engine holds {self._ledger.max_total}"
            )
        self._tickets[rid] = self._next_ticket
        entry = (-request.priority, self._next_ticket, request)
        self._next_ticket += 1
        engine = self._route(request) if self._route is not None else None
        if engine is None:
            heapq.heappush(self._queue, entry)
        else:
            heapq.heappush(self._warm.setdefault(engine, []), entry)
            self._dirty.add(engine)

    def assignments(self) -> list[tuple[Request, int]]:
        placed: list[tuple[Request, int]] = []
        free, warm, place = self._ledger.free, self._warm, self._place
        for engine in sorted(self._dirty):
            queue = warm.get(engine)  # kept when empty: at most one list per engine
            while queue and (head := self._head(queue)) is not None and free[engine] >= head.reservation:
                place(queue, head, engine, placed)
        self._dirty.clear()
        queue = self._queue
        while queue and (head := self._head(queue)) is not None:
            engine = self._choose(head)
            if engine is None:  # head-of-line blocking: later requests wait behind the head
                break
            place(queue, head, engine, placed)
        return placed

    def finished(self, request_id: int) -> None:
        """Release an in-flight request, or cancel a queued one."""
        engine = self._ledger.in_flight.get(request_id)
        if engine is not None:
            self._dirty.add(engine)
            self._ledger.release(request_id)
        elif request_id in self._tickets:
            del self._tickets[request_id]  # its queue entry is skipped when it reaches the head
        else:
            raise KeyError(f"request {request_id} is neither queued nor in flight")

    def engine_lost(self, engine: int) -> list[Request]:
        self._ledger.check(engine)
        lost = self._ledger.lose(engine)
        self._to_central(engine)
        return lost

    def update(self, state: EngineState) -> None:
        self._ledger.check(state.engine)
        old = self._ledger.states[state.engine]
        self._ledger.set_state(state)
        if (old.healthy, old.kv_total_tokens) != (state.healthy, state.kv_total_tokens):
            self._to_central(state.engine)  # its waiting requests may no longer fit, or it left
        self._dirty.add(state.engine)

    def reserved_tokens(self, engine: int) -> int:
        self._ledger.check(engine)
        return self._ledger.reserved[engine]

    def outstanding(self, engine: int) -> int:
        self._ledger.check(engine)
        return self._ledger.outstanding[engine]

    def queued(self) -> int:
        return len(self._tickets)

    def _place(
        self, queue: list[_Entry], head: Request, engine: int, placed: list[tuple[Request, int]]
    ) -> None:
        heapq.heappop(queue)
        del self._tickets[head.request_id]
        self._ledger.assign(head, engine)
        placed.append((head, engine))

    def _to_central(self, engine: int) -> None:
        """Move ``engine``'s own queue into the central one, each request keeping its place in line."""
        for entry in self._warm.pop(engine, []):
            heapq.heappush(self._queue, entry)

    def _head(self, queue: list[_Entry]) -> Request | None:
        tickets = self._tickets
        while queue:
            _, ticket, request = queue[0]
            if tickets.get(request.request_id) == ticket:
                return request
            heapq.heappop(queue)
        return None


def make_dispatcher(
    policy: str, engines: Sequence[EngineState], *, seed: int = 0, expected_rollouts: int | None = None
) -> Dispatcher:
    """A dispatcher running ``policy`` (``kv_aware``, or ``kv-aware``) over ``engines[i].engine == i``."""
    policy = canonical_policy_name(policy)
    if policy not in POLICIES:
        raise ValueError(f"unknown dispatch policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if not engines:
        raise ValueError("a dispatcher needs at least one engine")
    for index, state in enumerate(engines):
        if state.engine != index:
            raise ValueError(f"engines[{index}] describes engine {state.engine}; list engines by index")
    if expected_rollouts is not None and expected_rollouts < 1:
        raise ValueError(f"expected_rollouts must be >= 1, got {expected_rollouts}")
    return _dispatcher(policy, engines, seed, expected_rollouts, scan=len(engines) <= SCAN_MAX_ENGINES)


def _dispatcher(
    policy: str, engines: Sequence[EngineState], seed: int, expected_rollouts: int | None, *, scan: bool
) -> Dispatcher:
    """``make_dispatcher`` after its checks; ``scan`` picks how the most KV budget is found (same choices)."""
    ledger = _Ledger(engines, scan=scan)
    factories: dict[str, Callable[[], Choose]] = {
        "static": lambda: _static(ledger, expected_rollouts),
        "round_robin": lambda: _round_robin(ledger),
        "least_outstanding": lambda: _least_outstanding(ledger),
        "kv_aware": lambda: _most_budget(ledger),
        "power_of_two": lambda: _power_of_two(ledger, seed),
        "prefix_affinity": lambda: _prefix_affinity(ledger),
    }
    route = _warm_route(ledger) if policy == "kv_aware" else None
    return _QueueDispatcher(policy, ledger, factories[policy](), route)

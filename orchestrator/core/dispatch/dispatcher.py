"""The dispatcher: a central priority queue, per-engine queues, a ledger and one policy's choice rule."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from orchestrator.core.dispatch.ledger import SCAN_MAX_ENGINES, Ledger
from orchestrator.core.dispatch.policies import KV_BOUNDED, POLICIES, Choose, Route, choice_rule, warm_route
from orchestrator.core.dispatch.protocol import Dispatcher, EngineState, Request
from orchestrator.spec import canonical_policy_name

__all__ = ["make_dispatcher"]


_Entry = tuple[int, int, Request]  # (-priority, ticket, request): a heap entry of a queue


class _QueueDispatcher:
    """A central priority queue, optional per-engine queues, a ledger, and one policy's choice rule.

    With a ``route``, a request that names an engine to wait for waits in that engine's own queue, which
    gets first claim on whatever that engine frees; everything else goes through the central queue and
    ``choose``. Cancelled entries linger in their heap until they reach its top.
    """

    def __init__(self, name: str, ledger: Ledger, choose: Choose, route: Route | None = None) -> None:
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
    ledger = Ledger(engines, scan=scan)
    route = warm_route(ledger) if policy == "kv_aware" else None
    return _QueueDispatcher(policy, ledger, choice_rule(policy, ledger, seed, expected_rollouts), route)

"""Rollout dispatch policies: choice rules by example, and the ledger under random event sequences."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from orchestrator.core import dispatch
from orchestrator.core.dispatch import (
    KV_BOUNDED,
    POLICIES,
    Dispatcher,
    EngineState,
    Request,
    make_dispatcher,
)
from orchestrator.core.dispatch.dispatcher import _dispatcher
from orchestrator.core.dispatch.ledger import SCAN_MAX_ENGINES


def engines(*totals: int, unhealthy: Sequence[int] = ()) -> list[EngineState]:
    return [EngineState(i, total, healthy=i not in unhealthy) for i, total in enumerate(totals)]


def req(
    rid: int, prompt: int = 100, new: int = 100, *, rollout: int | None = None, prev: int | None = None
) -> Request:
    return Request(rid, rid if rollout is None else rollout, 0, prompt, new, previous_engine=prev)


def place(d: Dispatcher, *requests: Request) -> list[int]:
    """Submit ``requests``, and return the engines of everything placed now."""
    for request in requests:
        d.submit(request)
    return [engine for _, engine in d.assignments()]


def test_all_names_in_dunder_all_exist() -> None:
    assert all(hasattr(dispatch, name) for name in dispatch.__all__)
    assert set(POLICIES) >= KV_BOUNDED


# --- choice rules by example --------------------------------------------------------------------------


def test_static_splits_the_batch_into_contiguous_even_blocks() -> None:
    d = make_dispatcher("static", engines(*[1000] * 4), expected_rollouts=8)
    assert place(d, *(req(r) for r in range(8))) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_static_keeps_every_turn_of_a_rollout_on_its_engine_and_wraps_without_a_batch_size() -> None:
    d = make_dispatcher("static", engines(*[1000] * 3))
    assert place(d, *(req(i, rollout=r) for i, r in enumerate([0, 1, 2, 3, 4, 1, 1]))) == [
        0,
        1,
        2,
        0,
        1,
        1,
        1,
    ]


def test_static_checks_no_capacity_and_hands_an_unhealthy_home_to_the_next_healthy_engine() -> None:
    d = make_dispatcher("static", engines(300, 300, 300, unhealthy=[1]), expected_rollouts=3)
    assert place(d, req(0, 200, 200), req(1), req(2), req(3)) == [0, 2, 2, 0]
    assert d.reserved_tokens(0) == 600  # over its 300 total: static is the no-capacity-check baseline


def test_round_robin_cycles_over_healthy_engines_in_order() -> None:
    d = make_dispatcher("round_robin", engines(100, 100, 100, 100, unhealthy=[2]))
    assert place(d, *(req(i, 500, 500) for i in range(6))) == [0, 1, 3, 0, 1, 3]
    d.update(EngineState(2, 100))
    assert place(d, req(6), req(7)) == [0, 1] and place(d, req(8)) == [2]


def test_least_outstanding_picks_the_fewest_in_flight_and_breaks_ties_by_lowest_index() -> None:
    d = make_dispatcher("least_outstanding", engines(100, 100, 100))
    assert place(d, *(req(i) for i in range(4))) == [0, 1, 2, 0]
    d.finished(1)
    assert place(d, req(4)) == [1]
    d.finished(0)
    d.finished(3)
    assert place(d, req(5), req(6)) == [0, 0]


@pytest.mark.parametrize("policy", ["least_outstanding", "power_of_two"])
def test_gpu_utilization_breaks_ties_between_engines_with_as_many_requests_in_flight(policy: str) -> None:
    d = make_dispatcher(policy, engines(1000, 1000), seed=3)
    d.update(EngineState(0, 1000, utilization_ratio=0.9))  # busy with work the ledger cannot see
    d.update(EngineState(1, 1000, utilization_ratio=0.2))
    assert place(d, req(0)) == [1]
    assert place(d, req(1)) == [0]  # one in flight on engine 1 outweighs any utilization
    d.update(EngineState(0, 1000, utilization_ratio=0.1))
    d.finished(0)
    d.finished(1)
    assert place(d, req(2)) == [0]
    with pytest.raises(ValueError, match="utilization_ratio"):
        EngineState(0, 1000, utilization_ratio=1.5)


def test_kv_aware_picks_the_engine_with_the_most_budget_left() -> None:
    d = make_dispatcher("kv_aware", engines(1000, 3000, 2000))
    assert place(d, req(0, 500, 500), req(1, 500, 500), req(2, 100, 100)) == [1, 1, 2]
    assert [d.reserved_tokens(e) for e in range(3)] == [0, 2000, 200]


def test_kv_aware_queues_what_does_not_fit_and_refills_as_requests_finish() -> None:
    d = make_dispatcher("kv_aware", engines(1000, 1000))
    assert place(d, *(req(i, 200, 300) for i in range(5))) == [0, 1, 0, 1]
    assert d.queued() == 1 and d.reserved_tokens(0) == d.reserved_tokens(1) == 1000
    assert d.assignments() == []
    d.finished(1)
    assert place(d) == [1] and d.queued() == 0


def test_kv_aware_head_of_line_blocks_smaller_requests_behind_a_large_one() -> None:
    d = make_dispatcher("kv_aware", engines(1000))
    assert place(d, req(0, 300, 300), req(1, 400, 400), req(2, 50, 50)) == [0]
    assert d.queued() == 2
    d.finished(0)
    assert [r.request_id for r, _ in d.assignments()] == [1, 2]


@pytest.mark.parametrize("policy", sorted(KV_BOUNDED))
def test_a_request_larger_than_every_engine_is_refused_at_submit_naming_the_sizes(policy: str) -> None:
    d = make_dispatcher(policy, engines(1000, 4096))
    with pytest.raises(
        ValueError, match=r"reserves 4097 KV tokens \(prompt 97 \+ max_new 4000\).*holds 4096"
    ):
        d.submit(req(0, 97, 4000))
    assert d.queued() == 0


def test_power_of_two_takes_the_less_loaded_of_two_engines() -> None:
    d = make_dispatcher("power_of_two", engines(10_000, 10_000))  # two engines: both always drawn
    assert place(d, *(req(i) for i in range(4))) == [0, 1, 0, 1]


def test_power_of_two_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[int]:
        return place(make_dispatcher("power_of_two", engines(*[10_000] * 8), seed=seed), *map(req, range(40)))

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("seed", range(8))
def test_power_of_two_falls_back_to_the_engine_with_room_when_neither_drawn_engine_has_it(seed: int) -> None:
    d = make_dispatcher("power_of_two", engines(100, 100, 5000, 100), seed=seed)
    assert place(d, *(req(i, 500, 500) for i in range(6))) == [2] * 5
    assert d.queued() == 1


def test_the_queue_places_higher_priority_first_and_equal_priorities_in_submission_order() -> None:
    d = make_dispatcher("kv_aware", engines(1000))
    first = [Request(i, i, 0, 200, 200, priority=p) for i, p in enumerate([0, 5, 0, 5, 9])]
    assert place(d, *first) == [0, 0]  # 400 tokens each: only two fit
    d.finished(4)
    d.finished(1)
    assert [r.request_id for r, _ in d.assignments()] == [3, 0]  # 3 (priority 5), then 0 before 2


def test_kv_aware_keeps_a_turn_on_its_warm_engine_only_within_the_slack() -> None:
    slack = int(8000 * dispatch.AFFINITY_SLACK_FRACTION)  # 1000 tokens
    d = make_dispatcher("kv_aware", engines(8000, 8000))
    assert place(d, req(0, 400, 400)) == [0]  # engine 0 now has 800 tokens less budget than engine 1
    assert place(d, req(1, 150, 150, prev=0)) == [0]  # 800 behind <= slack: stays warm
    assert place(d, req(2, 100, 100, prev=0)) == [1]  # 1100 behind: the budget wins
    assert place(d, req(3, 50, 50, prev=7)) == [1]  # an unknown previous engine is ignored
    assert slack == 1000


def test_kv_aware_waits_for_a_full_warm_engine_instead_of_prefilling_elsewhere() -> None:
    d = make_dispatcher("kv_aware", engines(1000, 1000))
    assert place(d, *(req(i, 250, 250) for i in range(4))) == [0, 1, 0, 1]  # both engines full
    assert place(d, req(4, 200, 200, prev=0), req(5, 200, 200)) == []
    d.finished(1)  # engine 1 frees 500: the central request takes it, the warm one keeps waiting
    assert [(r.request_id, e) for r, e in d.assignments()] == [(5, 1)]
    d.finished(0)
    assert [(r.request_id, e) for r, e in d.assignments()] == [(4, 0)]


def test_a_lost_engine_sends_the_requests_waiting_for_it_to_the_central_queue() -> None:
    d = make_dispatcher("kv_aware", engines(1000, 1000))
    assert place(d, req(0, 500, 500)) == [0]
    assert place(d, req(1, 250, 250, prev=0)) == [1]  # engine 0 is full and 1 has room: it moves
    assert place(d, req(2, 300, 300, prev=1)) == []  # engine 1 has 500 left: waits for it
    assert [r.request_id for r in d.engine_lost(1)] == [1]
    assert d.assignments() == [] and d.queued() == 1  # in the central queue now; engine 0 is full
    d.finished(0)
    assert [(r.request_id, e) for r, e in d.assignments()] == [(2, 0)]


def test_prefix_affinity_returns_a_rollout_to_its_previous_engine_when_it_has_room() -> None:
    d = make_dispatcher("prefix_affinity", engines(1000, 5000))
    assert place(d, req(0, 100, 100, prev=0)) == [0]  # not the engine with the most budget: a cache hit
    assert place(d, req(1, 100, 100)) == [1]  # first turn: kv_aware


def test_prefix_affinity_falls_back_to_kv_aware_when_the_previous_engine_is_full_or_unhealthy() -> None:
    d = make_dispatcher("prefix_affinity", engines(1000, 2000, 1500))
    assert place(d, req(0, 400, 400, prev=0), req(1, 400, 400, prev=0)) == [0, 1]
    d.update(EngineState(2, 1500, healthy=False))
    assert place(d, req(2, 100, 100, prev=2), req(3, 100, 100, prev=7)) == [1, 1]


def test_engines_marked_unhealthy_by_telemetry_get_nothing_until_restored() -> None:
    for policy in POLICIES:
        d = make_dispatcher(policy, engines(1000, 1000))
        d.update(EngineState(0, 1000, healthy=False))
        assert set(place(d, *(req(i, 10, 10, prev=0) for i in range(4)))) == {1}, policy
        d.update(EngineState(1, 1000, healthy=False))
        assert place(d, req(9)) == [] and d.queued() == 1, policy
        d.update(EngineState(0, 1000))
        assert place(d) == [0], policy


def test_engine_lost_releases_and_returns_its_requests_in_dispatch_order() -> None:
    d = make_dispatcher("round_robin", engines(1000, 1000))
    place(d, *(req(i) for i in range(5)))
    lost = d.engine_lost(0)
    assert [r.request_id for r in lost] == [0, 2, 4]
    assert d.reserved_tokens(0) == d.outstanding(0) == 0 and d.outstanding(1) == 2
    with pytest.raises(KeyError):
        d.finished(2)  # released already; a late reply from the lost engine must be ignored by the caller
    assert place(d, *lost) == [1, 1, 1]
    assert d.engine_lost(0) == []


def test_finished_on_an_unknown_or_finished_id_raises_key_error() -> None:
    d = make_dispatcher("kv_aware", engines(300))
    place(d, req(0))
    with pytest.raises(KeyError):
        d.finished(99)
    d.finished(0)
    with pytest.raises(KeyError):
        d.finished(0)
    assert d.reserved_tokens(0) == d.outstanding(0) == 0


def test_finished_on_a_queued_request_cancels_it_and_frees_its_id() -> None:
    d = make_dispatcher("kv_aware", engines(300))
    assert place(d, req(0), req(1), req(2)) == [0]
    d.finished(1)
    assert d.queued() == 1
    d.finished(0)
    assert [r.request_id for r, _ in d.assignments()] == [2]
    assert place(d, req(1)) == [] and d.queued() == 1


def test_a_request_id_cannot_be_submitted_twice_while_queued_or_in_flight() -> None:
    d = make_dispatcher("kv_aware", engines(250))
    place(d, req(0), req(1))
    for rid in (0, 1):
        with pytest.raises(ValueError, match=f"request {rid} is already queued or in flight"):
            d.submit(req(rid))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown dispatch policy 'fastest'"):
        make_dispatcher("fastest", engines(1))
    with pytest.raises(ValueError, match="at least one engine"):
        make_dispatcher("kv_aware", [])
    with pytest.raises(ValueError, match=r"engines\[0\] describes engine 1"):
        make_dispatcher("kv_aware", [EngineState(1, 10)])
    with pytest.raises(ValueError, match="token counts"):
        req(0, -1)
    d = make_dispatcher("kv_aware", engines(10))
    for call in (d.reserved_tokens, d.outstanding, d.engine_lost):
        with pytest.raises(KeyError, match="unknown engine 3"):
            call(3)


def test_a_shrunken_engine_takes_nothing_until_its_reservations_fit_again() -> None:
    d = make_dispatcher("kv_aware", engines(1000))
    place(d, req(0, 300, 300))
    d.update(EngineState(0, 500))
    assert place(d, req(1, 10, 10)) == []
    d.finished(0)
    assert place(d) == [0]


def test_the_lazy_heap_stays_bounded_over_a_long_stream() -> None:
    d = _dispatcher("kv_aware", engines(*[10_000] * 4), 0, None, scan=False)
    for i in range(5_000):
        place(d, req(i))
        d.finished(i)
    heaps = d._ledger._heaps  # type: ignore[attr-defined]
    assert all(len(heap._heap) <= 2 * 4 + 64 for heap in heaps)


# --- random event sequences ---------------------------------------------------------------------------


class DispatchMachine(RuleBasedStateMachine):
    """Drives one dispatcher with random events and checks its ledger against a model after each."""

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy
        self.kv_bounded = policy in KV_BOUNDED
        self.in_flight: dict[int, tuple[Request, int]] = {}
        self.queue: dict[int, Request] = {}
        self.ticket: dict[int, int] = {}  # request id -> submission order, for ties in priority
        self.to_resubmit: list[Request] = []
        self.accepted: set[int] = set()
        self.cancelled: set[int] = set()
        self.dispatched: set[int] = set()
        self.calls: list[tuple[str, Any]] = []
        self.outputs: list[Any] = []
        self.next_id = 0
        self.next_ticket = 0
        self.waits_on: dict[int, int | None] = {}  # kv_aware: queued id -> engine it waits for; None: central
        self.dirty: set[int] = set()

    @initialize(
        totals=st.lists(st.integers(200, 2000), min_size=1, max_size=5),
        down=st.sets(st.integers(0, 4), max_size=2),
        seed=st.integers(0, 3),
        expected=st.none() | st.integers(1, 12),
    )
    def start(self, totals: list[int], down: set[int], seed: int, expected: int | None) -> None:
        self.totals = totals
        self.healthy = [i not in down for i in range(len(totals))]
        self.config = (engines(*totals, unhealthy=sorted(down)), seed, expected)
        self.d = make_dispatcher(self.policy, self.config[0], seed=seed, expected_rollouts=expected)

    # -- helpers

    def call(self, method: str, arg: Any = None) -> Any:
        self.calls.append((method, arg))
        result = getattr(self.d, method)() if arg is None else getattr(self.d, method)(arg)
        self.outputs.append(result)
        return result

    def budget(self, engine: int) -> int:
        return self.totals[engine] - sum(r.reservation for r, e in self.in_flight.values() if e == engine)

    def submit(self, request: Request) -> None:
        if self.kv_bounded and request.reservation > max(self.totals):
            with pytest.raises(ValueError):
                self.d.submit(request)
            return
        self.call("submit", request)
        self.queue[request.request_id] = request
        self.ticket[request.request_id] = self.next_ticket
        self.next_ticket += 1
        self.waits_on[request.request_id] = self.route(request)
        if self.waits_on[request.request_id] is not None:
            self.dirty.add(self.waits_on[request.request_id])
        self.accepted.add(request.request_id)

    def queue_order(self, waiting_on: int | None = None) -> list[int]:
        """Queued ids of one queue (central by default) in placement order: priority, then submission."""
        mine = [rid for rid in self.queue if self.waits_on.get(rid) == waiting_on]
        return sorted(mine, key=lambda rid: (-self.queue[rid].priority, self.ticket[rid]))

    def best(self, budgets: dict[int, int]) -> int | None:
        """The healthy engine with the most budget (lowest index on ties), by a plain scan."""
        healthy = [e for e in range(len(self.totals)) if self.healthy[e]]
        return max(healthy, key=lambda e: (budgets[e], -e)) if healthy else None

    def route(self, request: Request) -> int | None:
        """kv_aware's rule, restated: wait for the warm engine unless a much emptier one has room."""
        prev = request.previous_engine
        if self.policy != "kv_aware" or prev is None or not 0 <= prev < len(self.totals):
            return None
        if not self.healthy[prev] or request.reservation > self.totals[prev]:
            return None
        budgets = {e: self.budget(e) for e in range(len(self.totals))}
        best = self.best(budgets)
        slack = int(self.totals[prev] * dispatch.AFFINITY_SLACK_FRACTION)
        roomy = best is not None and best != prev and budgets[best] >= request.reservation
        if roomy and budgets[prev] < budgets[best] - slack:
            return None
        return prev

    def expected_kv_aware_placements(self) -> list[tuple[int, int]]:
        """What kv_aware must place now: dirty engines' own queues in engine order, then the central one."""
        budgets = {e: self.budget(e) for e in range(len(self.totals))}
        placed: list[tuple[int, int]] = []
        for engine in sorted(self.dirty):
            for rid in self.queue_order(engine):
                if budgets[engine] < self.queue[rid].reservation:
                    break
                budgets[engine] -= self.queue[rid].reservation
                placed.append((rid, engine))
        for rid in self.queue_order(None):
            best = self.best(budgets)
            if best is None or budgets[best] < self.queue[rid].reservation:
                break
            budgets[best] -= self.queue[rid].reservation
            placed.append((rid, best))
        return placed

    # -- rules

    @rule(
        prompt=st.integers(0, 1200),
        new=st.integers(0, 1200),
        rollout=st.integers(0, 11),
        prev=st.none() | st.integers(0, 5),
        priority=st.integers(0, 3),
    )
    def submit_turn(self, prompt: int, new: int, rollout: int, prev: int | None, priority: int) -> None:
        self.submit(Request(self.next_id, rollout, 0, prompt, new, previous_engine=prev, priority=priority))
        self.next_id += 1

    @rule()
    def assign(self) -> None:
        expected = self.expected_kv_aware_placements() if self.policy == "kv_aware" else None
        placed = self.call("assignments")
        if expected is not None:
            assert [(r.request_id, e) for r, e in placed] == expected, "kv_aware's placement rule"
        else:
            order = self.queue_order()
            assert [r.request_id for r, _ in placed] == order[: len(placed)], "priority, then FIFO order"
        for request, engine in placed:
            assert self.healthy[engine], f"unhealthy engine {engine} got request {request.request_id}"
            assert request.request_id not in self.in_flight
            del self.queue[request.request_id]
            self.waits_on.pop(request.request_id, None)
            self.in_flight[request.request_id] = (request, engine)
            self.dispatched.add(request.request_id)
        self.dirty.clear()
        central = self.queue_order()
        if central and any(self.healthy):
            head = self.queue[central[0]]
            assert self.kv_bounded, "a policy without a capacity check placed less than everything"
            assert all(self.budget(e) < head.reservation for e in range(len(self.totals)) if self.healthy[e])
        for engine in {e for e in self.waits_on.values() if e is not None}:
            head = self.queue[self.queue_order(engine)[0]]
            assert self.budget(engine) < head.reservation, f"engine {engine}'s own queue could place more"

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.in_flight)))
        self.call("finished", rid)
        self.dirty.add(self.in_flight.pop(rid)[1])
        with pytest.raises(KeyError):
            self.d.finished(rid)

    @precondition(lambda self: self.queue)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.queue)))
        self.call("finished", rid)
        del self.queue[rid]
        self.waits_on.pop(rid, None)
        self.cancelled.add(rid)

    @rule(data=st.data())
    def lose_engine(self, data: st.DataObject) -> None:
        engine = data.draw(st.integers(0, len(self.totals) - 1))
        lost = self.call("engine_lost", engine)
        expected = [r for r, e in self.in_flight.values() if e == engine]
        assert lost == expected
        for request in lost:
            del self.in_flight[request.request_id]
        self.to_resubmit.extend(lost)
        self.healthy[engine] = False
        self.to_central(engine)

    @precondition(lambda self: self.to_resubmit)
    @rule()
    def resubmit(self) -> None:
        self.submit(self.to_resubmit.pop(0))

    @rule(
        data=st.data(),
        healthy=st.booleans(),
        free=st.none() | st.integers(0, 2000),
        busy=st.none() | st.floats(0, 1),
    )
    def update(self, data: st.DataObject, healthy: bool, free: int | None, busy: float | None) -> None:
        engine = data.draw(st.integers(0, len(self.totals) - 1))
        total = self.totals[engine]
        state = EngineState(engine, total, kv_free_tokens=free, healthy=healthy, utilization_ratio=busy)
        self.call("update", state)
        if self.healthy[engine] != healthy:
            self.to_central(engine)
        self.healthy[engine] = healthy
        self.dirty.add(engine)

    def to_central(self, engine: int) -> None:
        for rid, waits in self.waits_on.items():
            if waits == engine:
                self.waits_on[rid] = None

    # -- invariants

    @invariant()
    def ledger_matches_the_model(self) -> None:
        for engine, total in enumerate(self.totals):
            mine = [r for r, e in self.in_flight.values() if e == engine]
            assert self.d.reserved_tokens(engine) == sum(r.reservation for r in mine)
            assert self.d.outstanding(engine) == len(mine)
            if self.kv_bounded:
                assert self.d.reserved_tokens(engine) <= total
        assert self.d.queued() == len(self.queue)

    def teardown(self) -> None:
        if not hasattr(self, "d"):
            return
        for engine, total in enumerate(self.totals):
            self.call("update", EngineState(engine, total))
            if not self.healthy[engine]:
                self.to_central(engine)
            self.healthy[engine] = True
            self.dirty.add(engine)
        while self.to_resubmit:
            self.resubmit()
        for _ in range(len(self.accepted) + 1):
            self.assign()
            for rid in sorted(self.in_flight):
                self.call("finished", rid)
                self.dirty.add(self.in_flight.pop(rid)[1])
            if not self.queue:
                break
        assert not self.queue, "requests still queued with every engine free"
        assert self.accepted - self.cancelled <= self.dispatched, "a request was never dispatched"
        assert all(self.d.reserved_tokens(e) == self.d.outstanding(e) == 0 for e in range(len(self.totals)))
        self.replay_is_identical()

    def replay_is_identical(self) -> None:
        """The same calls give the same answers again, on the scan path and on the heap path alike."""
        states, seed, expected = self.config
        for scan in (True, False):
            again = _dispatcher(self.policy, states, seed, expected, scan=scan)
            for (method, arg), output in zip(self.calls, self.outputs, strict=True):
                result = getattr(again, method)() if arg is None else getattr(again, method)(arg)
                assert result == output, f"replay (scan={scan}) diverged at {method}({arg})"


@pytest.mark.parametrize("policy", POLICIES)
def test_random_event_sequences_never_leak_overcommit_or_double_dispatch(policy: str) -> None:
    run_state_machine_as_test(
        lambda: DispatchMachine(policy),
        settings=settings(
            max_examples=60,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def drive_randomly(d: Dispatcher, size: int, seed: int, steps: int) -> list[Any]:
    """A long random sequence of every call a dispatcher takes; returns what each call answered."""
    rng = random.Random(seed)
    in_flight: list[int] = []
    queued: set[int] = set()
    answers: list[Any] = []
    for rid in range(steps):
        action = rng.random()
        if action < 0.45 or not (in_flight or queued):
            prev = rng.choice([None, rng.randrange(size), size + 1])
            request = Request(rid, rng.randrange(40), 0, rng.randint(0, 400), rng.randint(0, 500), prev)
            d.submit(request)
            queued.add(rid)
        elif action < 0.8 and in_flight:
            done = in_flight.pop(rng.randrange(len(in_flight)))
            d.finished(done)
        elif action < 0.85 and queued:
            cancelled = rng.choice(sorted(queued))
            queued.discard(cancelled)
            d.finished(cancelled)
        elif action < 0.9:
            lost = d.engine_lost(rng.randrange(size))
            answers.append([r.request_id for r in lost])
            in_flight = [r for r in in_flight if r not in {r.request_id for r in lost}]
        else:
            total = rng.choice([1_000, 2_000, 3_000])
            d.update(EngineState(rng.randrange(size), total, healthy=rng.random() < 0.8))
        placed = d.assignments()
        answers.append([(r.request_id, e) for r, e in placed])
        for request, _ in placed:
            queued.discard(request.request_id)
            in_flight.append(request.request_id)
        answers.append([d.reserved_tokens(e) for e in range(size)])
    return answers


@pytest.mark.parametrize("policy", sorted(KV_BOUNDED))
@pytest.mark.parametrize("size", [1, 3, 17, 70])
def test_the_scan_and_the_heap_make_identical_decisions_on_long_random_sequences(
    policy: str, size: int
) -> None:
    states = [EngineState(e, [1_000, 2_000, 3_000][e % 3]) for e in range(size)]
    for seed in range(3):
        fast = drive_randomly(_dispatcher(policy, states, seed, None, scan=True), size, seed, 1_500)
        general = drive_randomly(_dispatcher(policy, states, seed, None, scan=False), size, seed, 1_500)
        assert fast == general


def test_make_dispatcher_scans_for_few_engines_and_uses_heaps_for_many() -> None:
    few = make_dispatcher("kv_aware", engines(*[1000] * SCAN_MAX_ENGINES))
    many = make_dispatcher("kv_aware", engines(*[1000] * (SCAN_MAX_ENGINES + 1)))
    assert few._ledger.scan and not many._ledger.scan  # type: ignore[attr-defined]

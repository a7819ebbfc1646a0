"""A rollout phase driven by a dispatch policy, on virtual time: the balancer's logic, simulated.

Every engine request of every rollout is a ``Request`` to a ``Dispatcher`` (orchestrator.core.dispatch):
the dispatcher places what it can, holds the rest in its central queue, and gets every request's
reservation back when the request ends, so capacity-aware policies refill engines as budgets free up.
A request asks for at most ``chunk_tokens`` new tokens (None: the whole remaining response budget, as
rStar2-Agent does); a turn that is not done when its request ends continues at once in a new request
whose context holds what was generated. The next turn of a rollout returns after its tool call. Every
request names the engine of the rollout's last request, for prefix affinity; requests are queued first
come, first served (measured better than placing the most-advanced rollouts first, which starves long
rollouts that fell behind early: 316.7 vs 357.4 s at 12,288 tokens on bench/rollout_balance.py). A
request placed on the engine that served the rollout's last
request finds its context, up to the end of that request, in the engine's prefix cache (assumed
retained: vLLM and SGLang evict cached prefixes only under memory pressure, least recently used first).
Engines are the event-granular simulated engines of ``orchestrator.sim.engine``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

from orchestrator.core.dispatch import Dispatcher, EngineState, Request
from orchestrator.sim.engine import SimEngine, SimulatedEngine, TurnRequest
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.rollout_shapes import RolloutShape

__all__ = ["BalancedPhase", "RolloutPhaseResult", "phase_result", "simulate_balanced_phase"]

_TOOL_RETURN = -1

DispatcherFactory = Callable[[Sequence[EngineState]], Dispatcher]


@dataclass(frozen=True)
class RolloutPhaseResult:
    """Totals of one rollout phase; the per-engine tuples are indexed by engine."""

    seconds: float
    rollouts: int
    turns: int
    tool_calls: int
    generated_tokens: int
    prefill_tokens: int
    preemptions: int
    correct: int
    engine_busy_seconds: tuple[float, ...]
    engine_finish_seconds: tuple[float, ...]
    peak_kv_tokens: tuple[int, ...]
    events: int = 0  # engine wake-ups and tool returns processed: the simulator's unit of work


@dataclass(frozen=True)
class BalancedPhase:
    result: RolloutPhaseResult
    rollout_seconds: tuple[float, ...]  # when each rollout finished its last turn
    queued_peak: int  # the central queue's longest length after placing what fit


def simulate_balanced_phase(
    rollouts: Sequence[RolloutShape],
    engines: int,
    cost: EngineCost,
    make_dispatcher: DispatcherFactory,
    max_response_tokens: int,
    *,
    chunk_tokens: int | None = None,
    priority: Callable[[int, int], int] | None = None,
    on_decisions: Callable[[float, int], None] | None = None,
) -> BalancedPhase:
    """Run every rollout to completion from time 0 with the dispatcher choosing each request's engine.

    A request reserves its context plus ``min(chunk_tokens, what is left of the response budget)``.
    ``priority(rollout index, tokens it generated so far)`` orders the dispatcher's queues (higher first;
    default: all equal, first come first served). ``on_decisions`` gets the wall time and count of each
    batch of placements (for the decision-latency histogram).
    """
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1 or None, got {chunk_tokens}")
    pool = [SimEngine(cost) for _ in range(engines)]
    dispatcher = make_dispatcher(
        [EngineState(engine=i, kv_total_tokens=cost.kv_capacity_tokens) for i in range(engines)]
    )
    heap: list[tuple[float, int, int, int]] = []
    pushes = 0
    context = [shape.prompt_tokens for shape in rollouts]  # KV tokens when the next request starts
    cached = [0] * len(rollouts)  # prefix of that context cached on on_engine
    generated = [0] * len(rollouts)
    next_turn = [0] * len(rollouts)
    turn_done = [0] * len(rollouts)  # tokens of the current turn generated so far
    asked = [0] * len(rollouts)  # new tokens the request in flight generates
    on_engine = [-1] * len(rollouts)
    request_of = [-1] * len(rollouts)
    finished_at = [0.0] * len(rollouts)
    request_ids = 0
    queued_peak = 0

    def wake(index: int) -> None:
        nonlocal pushes
        engine = pool[index]
        if engine.next_event_time < math.inf:
            pushes += 1
            heapq.heappush(heap, (engine.next_event_time, pushes, index, engine.event_id))

    def submit(key: int) -> None:
        nonlocal request_ids
        request_ids += 1
        request_of[key] = request_ids
        previous = on_engine[key] if on_engine[key] >= 0 else None
        budget = max(1, max_response_tokens - generated[key])
        limit = budget if chunk_tokens is None else min(budget, chunk_tokens)
        dispatcher.submit(
            Request(
                request_ids,
                key,
                next_turn[key],
                context[key],
                limit,
                previous_engine=previous,
                priority=priority(key, generated[key]) if priority is not None else 0,
            )
        )

    def place(now: float) -> None:
        nonlocal queued_peak
        started = perf_counter()
        placed = dispatcher.assignments()
        queued_peak = max(queued_peak, dispatcher.queued())  # what had to wait for room
        if on_decisions is not None and placed:
            on_decisions(perf_counter() - started, len(placed))
        for request, index in placed:
            key = request.rollout_id
            hit = cached[key] if index == on_engine[key] else 0
            on_engine[key] = index
            left = rollouts[key].turns[next_turn[key]].response_tokens - turn_done[key]
            asked[key] = min(left, request.max_new_tokens)
            if pool[index].submit(TurnRequest(key, context[key], asked[key], hit), now):
                wake(index)

    for key in range(len(rollouts)):
        submit(key)
    place(0.0)

    seconds, turns, tool_calls, events = 0.0, 0, 0, 0
    while heap:
        time, _, target, payload = heapq.heappop(heap)
        if target == _TOOL_RETURN:
            events += 1
            submit(payload)
            place(time)
            continue
        if payload != pool[target].event_id:
            continue  # superseded wake-up
        events += 1
        freed = False
        for key in pool[target].advance():
            dispatcher.finished(request_of[key])
            freed = True
            turn = rollouts[key].turns[next_turn[key]]
            generated[key] += asked[key]
            turn_done[key] += asked[key]
            context[key] += asked[key]
            cached[key] = context[key]
            if turn_done[key] < turn.response_tokens:  # cut at its chunk: continue the turn
                submit(key)
                continue
            turn_done[key] = 0
            next_turn[key] += 1
            turns += 1
            if next_turn[key] == len(rollouts[key].turns):
                seconds = max(seconds, time)
                finished_at[key] = time
                continue
            tool_calls += 1
            context[key] += turn.tool_output_tokens
            pushes += 1
            heapq.heappush(heap, (time + turn.tool_seconds, pushes, _TOOL_RETURN, key))
        wake(target)
        if freed:
            place(time)

    result = phase_result(pool, rollouts, seconds, turns, tool_calls, events)
    return BalancedPhase(result, tuple(finished_at), queued_peak)


def phase_result(
    pool: Sequence[SimulatedEngine],
    rollouts: Sequence[RolloutShape],
    seconds: float,
    turns: int,
    tool_calls: int,
    events: int,
) -> RolloutPhaseResult:
    """Totals of a finished phase from its engines' statistics."""
    stats = [engine.stats() for engine in pool]
    return RolloutPhaseResult(
        seconds=seconds,
        rollouts=len(rollouts),
        turns=turns,
        tool_calls=tool_calls,
        generated_tokens=sum(s.generated_tokens for s in stats),
        prefill_tokens=sum(s.prefill_tokens for s in stats),
        preemptions=sum(s.preemptions for s in stats),
        correct=sum(shape.correct for shape in rollouts),
        engine_busy_seconds=tuple(s.busy_seconds for s in stats),
        engine_finish_seconds=tuple(s.last_finish_seconds for s in stats),
        peak_kv_tokens=tuple(s.peak_kv_tokens for s in stats),
        events=events,
    )

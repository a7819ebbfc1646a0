"""How long a training step's rollout phase takes: rollouts spread over simulated engines, on virtual time.

One global heap orders engine wake-ups and tool-call returns; each engine advances from event to event
in closed form, so the cost grows with the number of turns, not with the number of tokens.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.rollout.cost import EngineCost
from orchestrator.rollout.engines import Engine, SimEngine, TurnRequest
from orchestrator.rollout.shapes import RolloutShape

__all__ = ["RolloutPhaseResult", "phase_result", "simulate_rollout_phase"]

_TOOL_RETURN = -1


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


def simulate_rollout_phase(
    rollouts: Sequence[RolloutShape],
    engines: int,
    cost: EngineCost,
    *,
    engine_factory: Callable[[EngineCost], Engine] = SimEngine,
    dispatch: Callable[[int, int], int] | None = None,
) -> RolloutPhaseResult:
    """Run every rollout to completion from time 0; ``dispatch(rollout, turn)`` picks each turn's engine
    (default: rollout ``i`` always goes to engine ``i % engines``, plain round robin).

    Each turn prefills the rollout's whole context (no prefix caching), decodes the turn's response,
    then leaves the engine for ``tool_seconds`` before its next turn arrives.
    """
    if engines < 1:
        raise ValueError(f"engines must be at least 1, got {engines}")
    for shape in rollouts:
        if shape.context_tokens > cost.kv_capacity_tokens:
            raise ValueError(
                f"rollout {shape.rollout_id} reaches {shape.context_tokens} tokens of context, more than an "
                f"engine's KV cache of {cost.kv_capacity_tokens}"
            )
    pool = [engine_factory(cost) for _ in range(engines)]
    choose = dispatch if dispatch is not None else (lambda key, turn: key % engines)
    # (time, tie-break, engine index or _TOOL_RETURN, the engine's event id or the rollout index)
    heap: list[tuple[float, int, int, int]] = []
    pushes = 0

    def wake(index: int) -> None:
        nonlocal pushes
        engine = pool[index]
        if engine.next_event_time < math.inf:
            pushes += 1
            heapq.heappush(heap, (engine.next_event_time, pushes, index, engine.event_id))

    context = [shape.prompt_tokens for shape in rollouts]
    next_turn = [0] * len(rollouts)
    for key, shape in enumerate(rollouts):
        request = TurnRequest(key, shape.prompt_tokens, shape.turns[0].response_tokens)
        index = choose(key, 0)
        if pool[index].submit(request, 0.0):
            wake(index)

    seconds, turns, tool_calls, events = 0.0, 0, 0, 0
    while heap:
        time, _, target, payload = heapq.heappop(heap)
        if target == _TOOL_RETURN:
            events += 1
            key = payload
            index = choose(key, next_turn[key])
            request = TurnRequest(key, context[key], rollouts[key].turns[next_turn[key]].response_tokens)
            if pool[index].submit(request, time):
                wake(index)
            continue
        if payload != pool[target].event_id:
            continue  # superseded wake-up
        events += 1
        for key in pool[target].advance():
            shape_turns = rollouts[key].turns
            turn = shape_turns[next_turn[key]]
            next_turn[key] += 1
            turns += 1
            if next_turn[key] == len(shape_turns):
                seconds = max(seconds, time)
                continue
            tool_calls += 1
            context[key] += turn.response_tokens + turn.tool_output_tokens
            pushes += 1
            heapq.heappush(heap, (time + turn.tool_seconds, pushes, _TOOL_RETURN, key))
        wake(target)

    return phase_result(pool, rollouts, seconds, turns, tool_calls, events)


def phase_result(
    pool: Sequence[Engine],
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

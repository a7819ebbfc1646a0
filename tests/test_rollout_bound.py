"""The rollout-phase lower bound (orchestrator/sim/makespan_bound.py): never beaten, exact where it can be.

Tiny instances use an engine with round numbers: a decode step costs ``a + b·K`` with ``a ≈ 1`` s and
``b`` of a few tenths, prefill a few tokens a second, so every term of the bound matters.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.token_step_reference import simulate_rollout_phase
from orchestrator.core.dispatch import KV_BOUNDED, POLICIES, make_dispatcher
from orchestrator.sim.engine_cost import BANDWIDTH_EFFICIENCY, EngineCost
from orchestrator.sim.makespan_bound import makespan_lower_bound, rollout_demands, turn_context_weight
from orchestrator.sim.rollout_phase import simulate_balanced_phase
from orchestrator.sim.rollout_shapes import RolloutShape, Turn


def tiny_cost(kv_cost: float, prefill_rate: float, capacity: int) -> EngineCost:
    """An engine whose decode step costs ``≈1 + kv_cost·K`` seconds (1/kv_cost bytes of weights)."""
    return EngineCost(
        kv_capacity_tokens=capacity,
        prefill_tokens_per_s=prefill_rate,
        weight_bytes=round(1 / kv_cost),
        kv_bytes_per_token=1,
        hbm_bytes_per_s=1 / (kv_cost * BANDWIDTH_EFFICIENCY),
    )


def shape(key: int, prompt: int, turns: list[tuple[int, int, float]]) -> RolloutShape:
    """A rollout from (response tokens, tool output tokens, tool seconds) per turn; the last has no tool."""
    built = [Turn(r, o, s) for r, o, s in turns[:-1]] + [Turn(turns[-1][0], 0, 0.0)]
    return RolloutShape(key, key, prompt, tuple(built), correct=False)


# ---------------------------------------------------------------------------------------------------------
# The context weight


def test_turn_context_weight_is_the_sum_of_the_contexts_each_token_reads() -> None:
    for context in range(0, 7):
        for response in range(1, 9):
            assert turn_context_weight(context, response) == sum(context + j for j in range(response))


def test_demand_counts_the_contexts_exactly_and_no_tool_after_the_last_turn() -> None:
    rollout = RolloutShape(0, 0, 5, (Turn(3, 2, 1.5), Turn(2, 4, 9.0)), correct=False)
    (demand,) = rollout_demands([rollout])
    contexts = [5, 6, 7, 10, 11]  # the second turn starts after 5 + 3 generated + 2 tool output tokens
    assert demand.tokens == 5
    assert demand.context_sum == sum(contexts)
    assert math.isclose(demand.sqrt_context_sum, sum(math.sqrt(c) for c in contexts))
    assert demand.prefill_tokens == 5 + 2
    assert demand.tool_seconds == 1.5


# ---------------------------------------------------------------------------------------------------------
# No simulated policy beats the bound


def every_policy_makespan(
    shapes: list[RolloutShape], engines: int, cost: EngineCost, chunk: int
) -> dict[str, float]:
    """Makespans of the bench's rows (every policy, kv_aware/whole, kv_aware/oracle) and plain round robin."""
    budget = max(s.response_tokens for s in shapes)
    rows = [(policy, chunk if policy in KV_BOUNDED else None) for policy in POLICIES]
    rows += [("kv_aware/whole", None), ("kv_aware/oracle", chunk)]
    makespans: dict[str, float] = {}
    for name, chunk_tokens in rows:
        policy = name.split("/")[0]
        phase = simulate_balanced_phase(
            shapes,
            engines,
            cost,
            lambda states, policy=policy: make_dispatcher(
                policy, states, seed=7, expected_rollouts=len(shapes)
            ),
            budget,
            chunk_tokens=chunk_tokens,
            priority=(lambda key, _: shapes[key].response_tokens) if name.endswith("/oracle") else None,
        )
        makespans[name] = phase.result.seconds
    makespans["simulator round robin"] = simulate_rollout_phase(shapes, engines, cost).seconds
    return makespans


turn_strategy = st.tuples(st.integers(1, 30), st.integers(0, 12), st.floats(0.0, 4.0))


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[RolloutShape], int, EngineCost, int]:
    prompts = draw(st.lists(st.integers(1, 40), min_size=1, max_size=6))
    shapes = [
        shape(k, p, draw(st.lists(turn_strategy, min_size=1, max_size=3))) for k, p in enumerate(prompts)
    ]
    budget = max(s.response_tokens for s in shapes)
    longest = max(s.prompt_tokens + sum(t.tool_output_tokens for t in s.turns) for s in shapes) + budget
    capacity = draw(st.integers(longest, 3 * longest))
    cost = tiny_cost(
        draw(st.sampled_from([0.01, 0.05, 0.2])), draw(st.sampled_from([5.0, 50.0, 1e4])), capacity
    )
    return shapes, draw(st.integers(1, 4)), cost, draw(st.integers(1, 16))


@settings(max_examples=60, deadline=None)
@given(instances())
def test_no_simulated_policy_ends_before_the_bound(
    instance: tuple[list[RolloutShape], int, EngineCost, int],
) -> None:
    shapes, engines, cost, chunk = instance
    bound = makespan_lower_bound(shapes, engines, cost)
    for name, seconds in every_policy_makespan(shapes, engines, cost, chunk).items():
        assert seconds >= bound * (1 - 1e-9), f"{name} ended at {seconds} before the bound {bound}"


# ---------------------------------------------------------------------------------------------------------
# The exact optimum of tiny instances, by brute force over schedules


@dataclass(frozen=True)
class Progress:
    """Where one rollout stands in a partial schedule."""

    turn: int
    done: int  # tokens of the current turn generated
    context: int  # KV tokens it holds (with any tool output it has not prefilled yet)
    pending: int  # tokens at the end of the context not in ``cached_on``'s cache (prompt, tool output)
    cached_on: int  # the engine whose prefix cache holds the rest, -1 for none
    ready: float  # when it may next act: the end of its last action, or its tool call's return
    finished: bool


def optimum(shapes: list[RolloutShape], engines: int, cost: EngineCost) -> float:
    """The least makespan of any schedule under the cost model the bound assumes.

    A schedule is a sequence of actions per engine: prefill one rollout (its pending tokens on the engine
    that caches the rest, else its whole context on any engine), or one decode step of any set of rollouts
    prefilled there (their contexts plus one written token each within the KV capacity). Each action
    starts as soon as its engine and its rollouts are free; enumerating actions in order of start time
    reaches every such left-shifted schedule, and every schedule can be left-shifted without ending later.
    This is a superset of what the simulated engines do (they always step every running sequence).
    """
    capacity = cost.kv_capacity_tokens
    best = math.inf
    seen: set[tuple[object, ...]] = set()

    def remaining_alone(index: int, state: Progress) -> float:
        if state.finished:
            return state.ready
        time = state.ready + (cost.prefill_seconds(state.pending) if state.pending else 0.0)
        turns, context, done = shapes[index].turns, state.context, state.done
        for number in range(state.turn, len(turns)):
            turn = turns[number]
            for _ in range(turn.response_tokens - done):
                time += cost.decode_step_seconds(1, context)
                context += 1
            done = 0
            if number < len(turns) - 1:
                time += turn.tool_seconds + cost.prefill_seconds(turn.tool_output_tokens)
                context += turn.tool_output_tokens
        return time

    def after_token(index: int, state: Progress, end: float) -> Progress:
        turns = shapes[index].turns
        turn = turns[state.turn]
        if state.done + 1 < turn.response_tokens:
            return Progress(state.turn, state.done + 1, state.context + 1, 0, state.cached_on, end, False)
        if state.turn == len(turns) - 1:
            return Progress(
                state.turn, turn.response_tokens, state.context + 1, 0, state.cached_on, end, True
            )
        output = turn.tool_output_tokens
        context = state.context + 1 + output
        return Progress(state.turn + 1, 0, context, output, state.cached_on, end + turn.tool_seconds, False)

    def search(free: tuple[float, ...], states: tuple[Progress, ...], last_start: float) -> None:
        nonlocal best
        key = (free, states, last_start)
        if key in seen:
            return
        seen.add(key)
        if all(s.finished for s in states):
            best = min(best, max(s.ready for s in states))
            return
        if max(remaining_alone(i, s) for i, s in enumerate(states)) >= best:
            return
        live = [i for i, s in enumerate(states) if not s.finished]
        for engine in range(engines):
            for index in live:  # prefill
                state = states[index]
                if state.cached_on == engine and not state.pending:
                    continue
                tokens = state.pending if state.cached_on == engine else state.context
                start = max(free[engine], state.ready)
                if start < last_start:
                    continue
                end = start + cost.prefill_seconds(tokens)
                moved = Progress(state.turn, state.done, state.context, 0, engine, end, False)
                search(
                    (*free[:engine], end, *free[engine + 1 :]),
                    (*states[:index], moved, *states[index + 1 :]),
                    start,
                )
            runnable = [i for i in live if states[i].cached_on == engine and not states[i].pending]
            for mask in range(1, 1 << len(runnable)):  # one decode step of a set of rollouts
                batch = [runnable[bit] for bit in range(len(runnable)) if mask >> bit & 1]
                kv = sum(states[i].context for i in batch)
                if kv + len(batch) > capacity:
                    continue
                start = max(free[engine], *(states[i].ready for i in batch))
                if start < last_start:
                    continue
                end = start + cost.decode_step_seconds(len(batch), kv)
                stepped = list(states)
                for i in batch:
                    stepped[i] = after_token(i, states[i], end)
                search((*free[:engine], end, *free[engine + 1 :]), tuple(stepped), start)

    start_states = tuple(Progress(0, 0, s.prompt_tokens, s.prompt_tokens, -1, 0.0, False) for s in shapes)
    search((0.0,) * engines, start_states, 0.0)
    return best


def tiny_instances(count: int, seed: int) -> list[tuple[list[RolloutShape], int, EngineCost]]:
    """1–2 engines, 1–3 rollouts of 1–2 turns of 1–3 tokens: small enough to search every schedule."""
    rng = random.Random(seed)
    found = []
    while len(found) < count:
        rollouts = rng.randint(1, 3)
        shapes = []
        for key in range(rollouts):
            turns = [
                (rng.randint(1, 3), rng.randint(0, 3), rng.choice([0.0, 0.5, 2.0]))
                for _ in range(rng.randint(1, 2))
            ]
            shapes.append(shape(key, rng.randint(1, 6), turns))
        if sum(s.response_tokens for s in shapes) > 6:
            continue
        longest = max(s.context_tokens for s in shapes)
        capacity = rng.randint(longest + 1, 2 * longest + 2)
        cost = tiny_cost(rng.choice([0.05, 0.3]), rng.choice([2.0, 20.0]), capacity)
        found.append((shapes, rng.randint(1, 2), cost))
    return found


def test_the_bound_is_the_optimum_of_a_single_rollout() -> None:
    for shapes, _, cost in tiny_instances(12, seed=1):
        for rollout in shapes:
            bound, best = makespan_lower_bound([rollout], 1, cost), optimum([rollout], 1, cost)
            assert math.isclose(bound, best, rel_tol=1e-9), (rollout, bound, best)


def test_no_schedule_of_a_tiny_instance_beats_the_bound_and_the_bound_stays_close() -> None:
    """On 60 tiny instances the bound is never above the optimum, equals it on most, and is within 25% on all.

    It cannot equal the optimum in general: it shares decode steps fractionally between rollouts (an
    optimum pays ``a`` for every whole step) and pools the engines. Measured: 48 of 60 exact, mean 0.983,
    worst 0.773 (the old max(longest alone, work at full caches): 48 exact, mean 0.978, worst 0.739).
    """
    ratios = []
    for shapes, engines, cost in tiny_instances(60, seed=2):
        bound, best = makespan_lower_bound(shapes, engines, cost), optimum(shapes, engines, cost)
        assert bound <= best * (1 + 1e-9), (shapes, engines, cost, bound, best)
        ratios.append(bound / best)
    assert min(ratios) >= 0.75
    assert sum(ratio >= 1 - 1e-9 for ratio in ratios) >= 45

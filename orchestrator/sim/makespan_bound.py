"""A lower bound on a rollout phase's makespan that no dispatch policy can beat, under the simulator's costs.

The derivation, with every assumption it rests on, is in bench/rollout_balance.py's docstring. In short:
a decode step costs ``a + b·K`` (``K`` the KV tokens it reads, at most the capacity ``C``), prefill is
paid at least once per prompt and tool output, and a rollout's tool calls, prefills and decode steps
happen one after another. A rollout that ends by ``T`` can then spend at most ``X_r(T)`` on the ``K`` of
its steps, Cauchy–Schwarz turns that into a least number of engine steps, and the engines' busy time must
fit into ``E·T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.rollout_shapes import RolloutShape

__all__ = ["RolloutDemand", "makespan_lower_bound", "rollout_demands", "turn_context_weight"]


def turn_context_weight(context: int, response: int) -> int:
    """KV tokens read in all while generating ``response`` tokens after ``context``: ``Σ_{j<r} (c + j)``."""
    return response * context + response * (response - 1) // 2


@dataclass(frozen=True)
class RolloutDemand:
    """What one rollout needs of the engines, whatever the schedule.

    ``tokens`` is L (one decode step each); ``context_sum`` is Σ_j c_j and ``sqrt_context_sum`` Σ_j √c_j
    over the KV contexts c_j its tokens are generated at; ``prefill_tokens`` the prompt and tool outputs
    (prefilled at least once); ``tool_seconds`` its tool calls' wall time.
    """

    tokens: int
    context_sum: int
    sqrt_context_sum: float
    prefill_tokens: int
    tool_seconds: float


def rollout_demands(shapes: Sequence[RolloutShape]) -> list[RolloutDemand]:
    """Each rollout's demand; Σ√c over a turn's consecutive contexts comes from one prefix-sum table."""
    longest = max((shape.context_tokens for shape in shapes), default=0)
    root_prefix = [0.0, *accumulate(math.sqrt(i) for i in range(longest + 1))]  # root_prefix[n] = Σ_{i<n} √i
    demands: list[RolloutDemand] = []
    for shape in shapes:
        context = shape.prompt_tokens
        tokens, weight, roots, prefill, tools = 0, 0, 0.0, shape.prompt_tokens, 0.0
        for index, turn in enumerate(shape.turns):
            response = turn.response_tokens
            tokens += response
            weight += turn_context_weight(context, response)
            roots += root_prefix[context + response] - root_prefix[context]
            if index < len(shape.turns) - 1:  # the rollout ends with its last turn: no tool call after it
                prefill += turn.tool_output_tokens
                tools += turn.tool_seconds
            context += response + turn.tool_output_tokens
        demands.append(RolloutDemand(tokens, weight, roots, prefill, tools))
    return demands


def makespan_lower_bound(shapes: Sequence[RolloutShape], engines: int, cost: EngineCost) -> float:
    """The smallest ``T`` that passes both tests of bench/rollout_balance.py's derivation (bisection)."""
    if engines < 1:
        raise ValueError(f"engines must be at least 1, got {engines}")
    demands = rollout_demands(shapes)
    if not demands:
        return 0.0
    capacity = cost.kv_capacity_tokens
    a = cost.decode_step_seconds(1, 0)
    b = (cost.decode_step_seconds(1, capacity) - a) / capacity
    fixed = [d.tool_seconds + cost.prefill_seconds(d.prefill_tokens) + a * d.tokens for d in demands]
    # Each rollout alone, every step reading only its own context: T can be no smaller.
    low = max(f + b * d.context_sum for f, d in zip(fixed, demands, strict=True))
    prefill = cost.prefill_seconds(sum(d.prefill_tokens for d in demands))
    decode_reads = b * sum(d.context_sum for d in demands)
    # A token read at context c in a step reading K ≤ C counts c/K of that step: at least c/C.
    full_steps = [d.context_sum / capacity for d in demands]
    # Counted by slots instead: a step's reads plus the token each sequence writes fit in C (the engines
    # preempt before a step would overflow), so steps ≥ Σ_rj (c_rj + 1) / C.
    slot_steps = sum(d.context_sum + d.tokens for d in demands) / capacity

    def fits(t: float) -> bool:
        steps = 0.0
        for f, d, full in zip(fixed, demands, full_steps, strict=True):
            reads = (t - f) / b if b > 0 else math.inf  # X_r(T): the most K its steps can read in all
            spread = d.sqrt_context_sum**2 / reads if reads > 0 else math.inf
            steps += max(spread, full)
        return engines * t >= prefill + decode_reads + a * max(steps, slot_steps)

    if fits(low):
        return low
    high = 2 * low
    while not fits(high):
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        if middle <= low or middle >= high:
            break
        if fits(middle):
            high = middle
        else:
            low = middle
    return high

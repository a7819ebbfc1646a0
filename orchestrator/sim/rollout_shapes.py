"""What each rollout of a step will do, sampled up front from a seeded generator.

A rollout is a prompt followed by turns; every turn but the last ends in a tool call whose output joins
the context of the next turn. Lengths are long-tailed, as reasoning traces are: most are short, a few run
into the response budget and get truncated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "PROBLEM_SIGMA",
    "RESPONSE_MEDIAN_FRACTION",
    "RESPONSE_SIGMA",
    "SAMPLE_SIGMA",
    "TOOL_OUTPUT_TOKENS",
    "TOOL_SECONDS_MEDIAN",
    "TOOL_SECONDS_SIGMA",
    "RolloutShape",
    "Turn",
    "sample_rollouts",
]

# Total response length (all turns) is lognormal with this median, as a share of the response budget. Its
# log spread has two parts: a per-problem difficulty (every sample of a hard problem runs long) and a
# per-sample part; together sigma ≈ 0.8, so about 7% of rollouts exceed the budget and are truncated.
# The split is chosen so that an even static split of 512 prompts × 16 samples over 64 engines, whole
# prompts per engine as RL frameworks chunk a batch, gives the busiest engine about twice the tokens of the
# idlest (the public per-worker report cited in issue 5: 73 s vs 167 s). Not fitted to a published
# distribution.
RESPONSE_MEDIAN_FRACTION = 0.3
PROBLEM_SIGMA = 0.6
SAMPLE_SIGMA = 0.5
RESPONSE_SIGMA = math.hypot(PROBLEM_SIGMA, SAMPLE_SIGMA)
# Code-execution latency: lognormal, median half a second, heavy tail (p99 ≈ 5 s). Assumption.
TOOL_SECONDS_MEDIAN = 0.5
TOOL_SECONDS_SIGMA = 1.0
TOOL_OUTPUT_TOKENS = (50, 300)


@dataclass(frozen=True)
class Turn:
    """One model turn; ``tool_output_tokens`` and ``tool_seconds`` are 0 for the last turn (no tool call)."""

    response_tokens: int
    tool_output_tokens: int
    tool_seconds: float


@dataclass(frozen=True)
class RolloutShape:
    """One sampled rollout: its prompt, its turns, and whether its final answer is right."""

    rollout_id: int
    problem_id: int
    prompt_tokens: int
    turns: tuple[Turn, ...]
    correct: bool

    @property
    def response_tokens(self) -> int:
        return sum(turn.response_tokens for turn in self.turns)

    @property
    def context_tokens(self) -> int:
        """The longest context the rollout reaches: prompt, every response and every tool output."""
        return self.prompt_tokens + sum(turn.response_tokens + turn.tool_output_tokens for turn in self.turns)


def sample_rollouts(
    rng: random.Random,
    problems: Sequence[int],
    samples_per_prompt: int,
    prompt_tokens: int,
    max_response_tokens: int,
    max_turns: int,
    solve_probability: Callable[[int], float],
) -> list[RolloutShape]:
    """``samples_per_prompt`` rollouts of every problem, ids numbered in order (problem-major)."""
    if samples_per_prompt < 1 or prompt_tokens < 1 or max_response_tokens < 1 or max_turns < 1:
        raise ValueError("samples_per_prompt, prompt_tokens, max_response_tokens and max_turns must be >= 1")
    mu = math.log(RESPONSE_MEDIAN_FRACTION * max_response_tokens)
    tool_mu = math.log(TOOL_SECONDS_MEDIAN)
    low, high = TOOL_OUTPUT_TOKENS
    lognormal, randint, expovariate = rng.lognormvariate, rng.randint, rng.expovariate
    shapes: list[RolloutShape] = []
    for problem_id in problems:
        p_solve = solve_probability(problem_id)
        problem_mu = mu + rng.gauss(0.0, PROBLEM_SIGMA)
        for _ in range(samples_per_prompt):
            wanted = max(1, int(lognormal(problem_mu, SAMPLE_SIGMA)))
            turn_count = min(randint(1, max_turns), wanted)
            # Split the total over turns by exponential weights: a uniformly random partition.
            weights = [expovariate(1.0) for _ in range(turn_count)]
            scale = (wanted - turn_count) / sum(weights)
            planned = [1 + int(weight * scale) for weight in weights]
            truncated = sum(planned) > max_response_tokens
            budget = max_response_tokens
            turns: list[Turn] = []
            for index, response in enumerate(planned):
                response = min(response, budget)
                budget -= response
                if index == turn_count - 1 or budget == 0:
                    turns.append(Turn(response, 0, 0.0))
                    break
                turns.append(Turn(response, randint(low, high), lognormal(tool_mu, TOOL_SECONDS_SIGMA)))
            correct = not truncated and rng.random() < p_solve
            shapes.append(RolloutShape(len(shapes), problem_id, prompt_tokens, tuple(turns), correct))
    return shapes

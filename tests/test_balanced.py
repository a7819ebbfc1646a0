"""A rollout phase driven by each dispatch policy on simulated engines."""

from __future__ import annotations

import dataclasses
import random

import pytest

from orchestrator.core.dispatch import POLICIES, Dispatcher, make_dispatcher
from orchestrator.hardware import H100_80GB
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.rollout_phase import simulate_balanced_phase
from orchestrator.sim.rollout_shapes import sample_rollouts
from orchestrator.spec import ModelSpec

MODEL = ModelSpec(name="m", params_b=14.8, layers=40, kv_heads=8, head_dim=128)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_finishes_every_rollout_and_gives_every_reservation_back(policy: str) -> None:
    cost = EngineCost.for_engine(MODEL, H100_80GB, 1)
    shapes = sample_rollouts(random.Random(5), list(range(24)), 8, 400, 4096, 6, lambda p: 0.5)
    made: list[Dispatcher] = []

    def factory(states):
        made.append(make_dispatcher(policy, states, seed=1, expected_rollouts=len(shapes)))
        return made[0]

    phase = simulate_balanced_phase(shapes, 4, cost, factory, 4096)
    result = phase.result
    assert result.rollouts == len(shapes) and result.turns == sum(len(s.turns) for s in shapes)
    assert result.generated_tokens == sum(s.response_tokens for s in shapes)
    assert all(t > 0 for t in phase.rollout_seconds) and max(phase.rollout_seconds) == result.seconds
    [dispatcher] = made
    assert dispatcher.queued() == 0
    assert all(dispatcher.reserved_tokens(e) == 0 and dispatcher.outstanding(e) == 0 for e in range(4))
    if policy in ("kv_aware", "power_of_two", "prefix_affinity"):
        assert result.preemptions == 0, "reservations keep every engine inside its KV cache"


@pytest.mark.parametrize("chunk", [64, 512])
def test_chunked_requests_finish_every_rollout_within_kv_and_give_every_reservation_back(chunk: int) -> None:
    cost = EngineCost.for_engine(MODEL, H100_80GB, 1)
    cost = dataclasses.replace(cost, kv_capacity_tokens=30_000)  # tight: most turns wait for room
    shapes = sample_rollouts(random.Random(9), list(range(16)), 8, 400, 4096, 6, lambda p: 0.5)
    made: list[Dispatcher] = []

    def factory(states):
        made.append(make_dispatcher("kv_aware", states))
        return made[0]

    phase = simulate_balanced_phase(shapes, 3, cost, factory, 4096, chunk_tokens=chunk)
    result = phase.result
    assert result.turns == sum(len(s.turns) for s in shapes)
    assert result.generated_tokens == sum(s.response_tokens for s in shapes)
    assert result.preemptions == 0 and max(result.peak_kv_tokens) <= cost.kv_capacity_tokens
    assert phase.queued_peak > 0
    [dispatcher] = made
    assert dispatcher.queued() == 0
    assert all(dispatcher.reserved_tokens(e) == 0 and dispatcher.outstanding(e) == 0 for e in range(3))


def test_a_warm_engine_prefills_only_what_its_prefix_cache_lacks() -> None:
    cost = EngineCost.for_engine(MODEL, H100_80GB, 1)
    shapes = sample_rollouts(random.Random(3), list(range(8)), 4, 400, 4096, 6, lambda p: 0.5)

    def prefill(policy: str) -> int:
        phase = simulate_balanced_phase(
            shapes, 4, cost, lambda states: make_dispatcher(policy, states, seed=2), 4096, chunk_tokens=256
        )
        return phase.result.prefill_tokens

    new_tokens = sum(s.prompt_tokens + sum(t.tool_output_tokens for t in s.turns) for s in shapes)
    # prefix_affinity sticks to the previous engine whenever it has room (always, in this roomy pool)
    assert prefill("prefix_affinity") == new_tokens
    assert prefill("power_of_two") > 2 * new_tokens  # random engines: whole contexts prefilled again


def test_chunk_tokens_must_be_positive() -> None:
    cost = EngineCost.for_engine(MODEL, H100_80GB, 1)
    with pytest.raises(ValueError, match="chunk_tokens"):
        simulate_balanced_phase(
            [], 1, cost, lambda states: make_dispatcher("kv_aware", states), 10, chunk_tokens=0
        )

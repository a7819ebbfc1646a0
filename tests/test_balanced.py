"""A rollout phase driven by each dispatch policy on simulated engines."""

from __future__ import annotations

import random

import pytest

from orchestrator.core.dispatch import POLICIES, Dispatcher, make_dispatcher
from orchestrator.rollout.balanced import simulate_balanced_phase
from orchestrator.rollout.cost import EngineCost
from orchestrator.rollout.hardware import H100_80GB
from orchestrator.rollout.shapes import sample_rollouts
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

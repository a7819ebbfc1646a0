"""Behaviour of the simulated rollout phase: cost model, sampled shapes, engines and the event loop."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.token_step_reference import TokenStepEngine, simulate_rollout_phase
from orchestrator.hardware import GPU_TYPES, H100_80GB
from orchestrator.sim.engine import SimEngine, TurnRequest
from orchestrator.sim.engine_cost import (
    ACTIVATION_MARGIN_BYTES_PER_GPU,
    BANDWIDTH_EFFICIENCY,
    DECODE_STEP_OVERHEAD_S,
    EngineCost,
)
from orchestrator.sim.rollout_phase import RolloutPhaseResult
from orchestrator.sim.rollout_shapes import RolloutShape, Turn, sample_rollouts
from orchestrator.spec import ModelSpec

QWEN_14B = ModelSpec(name="Qwen3-14B-Base", params_b=14.8, layers=40, kv_heads=8, head_dim=128)
H100_COST = EngineCost.for_engine(QWEN_14B, H100_80GB, 1)
# Round numbers, so that times are easy to follow: 1 ms of prefill per token, steps of ~1.7 ms.
SMALL = EngineCost(
    kv_capacity_tokens=20_000,
    prefill_tokens_per_s=1000.0,
    weight_bytes=1_000_000,
    kv_bytes_per_token=1000,
    hbm_bytes_per_s=1e9,
)


def workload(
    seed: int = 0, problems: int = 8, samples: int = 8, max_response: int = 2000, max_turns: int = 4
) -> list[RolloutShape]:
    rng = random.Random(seed)
    return sample_rollouts(rng, range(problems), samples, 100, max_response, max_turns, lambda _: 0.5)


def comparable(result: RolloutPhaseResult) -> RolloutPhaseResult:
    """A result without the simulator's own work count, and with times rounded past float noise."""
    return dataclasses.replace(
        result,
        events=0,
        seconds=round(result.seconds, 6),
        engine_busy_seconds=tuple(round(s, 6) for s in result.engine_busy_seconds),
        engine_finish_seconds=tuple(round(s, 6) for s in result.engine_finish_seconds),
    )


def test_the_h100_is_registered_under_the_spec_name() -> None:
    assert GPU_TYPES["H100-80GB"] is H100_80GB


def test_kv_capacity_of_a_14b_model_on_one_h100_follows_the_formula() -> None:
    assert QWEN_14B.kv_bytes_per_token == 160 * 1024
    free = H100_80GB.memory_bytes * 0.9 - 14.8e9 * 2 - ACTIVATION_MARGIN_BYTES_PER_GPU
    assert H100_COST.kv_capacity_tokens == int(free) // (160 * 1024)
    assert 250_000 <= H100_COST.kv_capacity_tokens <= 300_000


def test_tensor_parallel_engines_pool_memory_flops_and_bandwidth() -> None:
    tp2 = EngineCost.for_engine(QWEN_14B, H100_80GB, 2)
    assert tp2.kv_capacity_tokens > 2 * H100_COST.kv_capacity_tokens  # the weights are paid for once
    assert tp2.prefill_tokens_per_s == pytest.approx(2 * H100_COST.prefill_tokens_per_s)
    assert tp2.hbm_bytes_per_s == 2 * H100_COST.hbm_bytes_per_s


def test_a_model_too_big_for_its_gpus_is_refused() -> None:
    huge = ModelSpec(name="huge", params_b=70, layers=80, kv_heads=8, head_dim=128)
    with pytest.raises(ValueError, match="no room for KV cache"):
        EngineCost.for_engine(huge, H100_80GB, 1)


def test_a_small_batch_decode_step_of_the_14b_model_takes_about_ten_milliseconds() -> None:
    step = H100_COST.decode_step_seconds(batch=4, kv_tokens=4 * 1000)
    expected = (29.6e9 + 4000 * 160 * 1024) / (3.35e12 * BANDWIDTH_EFFICIENCY) + DECODE_STEP_OVERHEAD_S
    assert step == pytest.approx(expected)
    assert 0.008 < step < 0.013


def test_decode_seconds_is_the_sum_of_its_steps_and_steps_within_inverts_it() -> None:
    by_step = sum(SMALL.decode_step_seconds(3, 500 + 3 * j) for j in range(40))
    assert SMALL.decode_seconds(3, 500, 40) == pytest.approx(by_step)
    for seconds in (0.0, 1e-4, by_step, by_step + 1e-9, 1.0, 100.0):
        steps = SMALL.decode_steps_within(3, 500, seconds)
        assert SMALL.decode_seconds(3, 500, steps) <= seconds < SMALL.decode_seconds(3, 500, steps + 1)


def test_sampled_rollouts_respect_the_response_budget_and_turn_limit() -> None:
    shapes = sample_rollouts(random.Random(3), range(64), 16, 400, 1000, 5, lambda _: 1.0)
    assert [s.rollout_id for s in shapes] == list(range(64 * 16))
    assert all(1 <= len(s.turns) <= 5 and s.response_tokens <= 1000 for s in shapes)
    assert all(s.turns[-1].tool_output_tokens == 0 and s.turns[-1].tool_seconds == 0.0 for s in shapes)
    assert all(50 <= t.tool_output_tokens <= 300 and t.tool_seconds > 0 for s in shapes for t in s.turns[:-1])
    capped = [s for s in shapes if s.response_tokens == 1000]
    assert capped, "the long tail should reach the budget"
    assert not any(s.correct for s in capped)
    assert all(s.correct for s in shapes if s.response_tokens < 1000)  # solve probability 1


def test_one_rollout_takes_prefill_plus_decode_steps_plus_tool_time() -> None:
    shape = RolloutShape(0, 0, prompt_tokens=10, turns=(Turn(3, 5, 2.0), Turn(2, 0, 0.0)), correct=True)
    result = simulate_rollout_phase([shape], engines=1, cost=SMALL)

    def step(kv_tokens: int) -> float:
        return (1_000_000 + kv_tokens * 1000) / (1e9 * BANDWIDTH_EFFICIENCY) + DECODE_STEP_OVERHEAD_S

    first = 10 / 1000 + step(10) + step(11) + step(12)
    second = (10 + 3 + 5) / 1000 + step(18) + step(19)
    assert result.seconds == pytest.approx(first + 2.0 + second, rel=1e-12)
    assert result.engine_busy_seconds[0] == pytest.approx(first + second, rel=1e-12)
    assert (result.turns, result.tool_calls, result.generated_tokens) == (2, 1, 5)
    assert result.prefill_tokens == 10 + 18
    assert result.peak_kv_tokens == (18 + 2,)
    assert result.correct == 1


def test_every_response_token_is_generated_once_and_every_turn_context_prefilled() -> None:
    shapes = workload()
    result = simulate_rollout_phase(shapes, engines=4, cost=SMALL)
    assert result.preemptions == 0
    assert result.generated_tokens == sum(s.response_tokens for s in shapes)
    assert result.prefill_tokens == sum(turn_contexts(s) for s in shapes)
    assert result.turns == sum(len(s.turns) for s in shapes)
    assert result.tool_calls == result.turns - len(shapes)


def turn_contexts(shape: RolloutShape) -> int:
    total, context = 0, shape.prompt_tokens
    for turn in shape.turns:
        total += context
        context += turn.response_tokens + turn.tool_output_tokens
    return total


def test_more_engines_finish_the_phase_sooner() -> None:
    shapes = workload(problems=16)
    times = [simulate_rollout_phase(shapes, engines=n, cost=H100_COST).seconds for n in (1, 4, 16)]
    assert times[0] > times[1] > times[2]


def test_a_tiny_kv_cache_preempts_yet_completes_every_rollout() -> None:
    shapes = workload(max_response=1000)
    tiny = dataclasses.replace(SMALL, kv_capacity_tokens=max(s.context_tokens for s in shapes) + 200)
    result = simulate_rollout_phase(shapes, engines=2, cost=tiny)
    assert result.preemptions > 0
    assert result.turns == sum(len(s.turns) for s in shapes)
    assert result.generated_tokens == sum(s.response_tokens for s in shapes)
    # Recomputed tokens count as prefill, not as generation.
    assert result.prefill_tokens > sum(turn_contexts(s) for s in shapes)
    assert max(result.peak_kv_tokens) <= tiny.kv_capacity_tokens


def test_a_rollout_longer_than_the_kv_cache_is_refused() -> None:
    shape = RolloutShape(0, 0, prompt_tokens=100, turns=(Turn(50, 0, 0.0),), correct=False)
    with pytest.raises(ValueError, match="KV cache"):
        simulate_rollout_phase([shape], engines=1, cost=dataclasses.replace(SMALL, kv_capacity_tokens=120))


def test_the_same_seed_gives_the_same_phase() -> None:
    first = simulate_rollout_phase(workload(seed=11), engines=3, cost=H100_COST)
    second = simulate_rollout_phase(workload(seed=11), engines=3, cost=H100_COST)
    assert first == second
    assert simulate_rollout_phase(workload(seed=12), engines=3, cost=H100_COST) != first


def test_engines_stay_within_kv_and_within_the_phase() -> None:
    cost = dataclasses.replace(SMALL, kv_capacity_tokens=30_000)
    result = simulate_rollout_phase(workload(problems=32), engines=2, cost=cost)
    assert max(result.peak_kv_tokens) <= 30_000
    assert max(result.peak_kv_tokens) > 25_000  # the cache did fill up
    assert all(busy <= result.seconds + 1e-9 for busy in result.engine_busy_seconds)
    assert max(result.engine_finish_seconds) == result.seconds


def test_the_event_engine_agrees_with_the_token_by_token_engine_under_preemption() -> None:
    shapes = workload(problems=6, max_response=1500)
    cost = dataclasses.replace(SMALL, kv_capacity_tokens=max(s.context_tokens for s in shapes) + 500)
    events = simulate_rollout_phase(shapes, engines=2, cost=cost)
    tokens = simulate_rollout_phase(shapes, engines=2, cost=cost, engine_factory=TokenStepEngine)
    assert events.preemptions > 0
    assert comparable(events) == comparable(tokens)
    assert events.events * 10 < tokens.events


def test_load_reports_queue_and_kv_in_flight() -> None:
    engine = SimEngine(dataclasses.replace(SMALL, kv_capacity_tokens=1000))
    assert engine.submit(TurnRequest(0, 400, 100), 0.0)
    assert not engine.submit(TurnRequest(1, 400, 100), 0.0)  # the wake-up at 0 covers both
    assert not engine.submit(TurnRequest(2, 400, 100), 0.0)
    assert engine.advance() == []
    assert engine.load(0.5).kv_used_tokens == 800  # still prefilling 800 tokens at 1000 per second
    load = engine.load(0.9)  # decoding: two sequences, ~1.9 ms a step
    assert (load.running, load.waiting, load.kv_total_tokens) == (2, 1, 1000)
    assert 800 < load.kv_used_tokens < 1000 and load.tokens_per_s > 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    problems=st.integers(1, 4),
    samples=st.integers(1, 6),
    engines=st.integers(1, 3),
    max_response=st.integers(1, 600),
    max_turns=st.integers(1, 4),
    slack=st.integers(0, 2000),
)
def test_any_small_workload_completes_within_kv(
    seed: int, problems: int, samples: int, engines: int, max_response: int, max_turns: int, slack: int
) -> None:
    rng = random.Random(seed)
    shapes = sample_rollouts(rng, range(problems), samples, 20, max_response, max_turns, lambda _: 0.5)
    cost = dataclasses.replace(SMALL, kv_capacity_tokens=max(s.context_tokens for s in shapes) + slack)
    result = simulate_rollout_phase(shapes, engines, cost)
    assert result.turns == sum(len(s.turns) for s in shapes)
    assert result.generated_tokens == sum(s.response_tokens for s in shapes)
    assert max(result.peak_kv_tokens) <= cost.kv_capacity_tokens
    reference = simulate_rollout_phase(shapes, engines, cost, engine_factory=TokenStepEngine)
    assert comparable(result) == comparable(reference)

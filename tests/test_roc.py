"""GRPO-RoC: what the kept group holds, how positives are preferred, and the advantages."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.worker import roc
from orchestrator.worker.roc import group_advantages, penalty, resample_on_correct


@dataclass(frozen=True)
class Trajectory:
    name: int
    reward: float
    tool_calls: int = 2
    tool_errors: int = 0
    format_issues: int = 0
    turns: int = 2


def trajectory(name: int, reward: float, **fields: int) -> Trajectory:
    return Trajectory(name, reward, **fields)


@st.composite
def trajectories(draw: st.DrawFn) -> Trajectory:
    calls = draw(st.integers(0, 8))
    turns = draw(st.integers(1, 9))
    return Trajectory(
        name=draw(st.integers()),
        reward=draw(st.sampled_from([0.0, 1.0, -1.0, 0.5])),
        tool_calls=calls,
        tool_errors=draw(st.integers(0, calls)),
        format_issues=draw(st.integers(0, turns)),
        turns=turns,
    )


groups = st.lists(trajectories(), max_size=40)
sizes = st.integers(1, 24)
seeds = st.integers(0, 2**32)


# ---- the kept group -------------------------------------------------------------------------------


@given(groups, sizes, seeds)
def test_the_kept_group_has_the_target_size_or_everything_when_the_group_is_smaller(
    group: list[Trajectory], size: int, seed: int
) -> None:
    result = resample_on_correct(group, size, random.Random(seed))
    assert len(result.kept) == min(size, len(group)) == result.positives + result.negatives
    assert result.dropped == len(group) - len(result.kept)
    assert len(set(map(id, result.kept))) == len(result.kept)  # without replacement
    assert all(any(kept is item for item in group) for kept in result.kept)


@given(groups, sizes, seeds)
def test_negatives_never_pass_half_unless_positives_run_short_and_never_fall_short_needlessly(
    group: list[Trajectory], size: int, seed: int
) -> None:
    positives = sum(item.reward > 0 for item in group)
    negatives = len(group) - positives
    result = resample_on_correct(group, size, random.Random(seed))
    assert sum(item.reward <= 0 for item in result.kept) == result.negatives
    if positives >= size - size // 2:  # enough positives: at most half negatives, as many as there are
        assert result.negatives == min(negatives, size // 2)
    else:  # too few positives: all of them, the rest negatives
        assert result.positives == positives
        assert result.negatives == min(negatives, size - positives)
    if negatives < size // 2:  # too few negatives: all of them, the rest positives
        assert result.negatives == negatives
        assert result.positives == min(positives, size - negatives)


def test_an_oversampled_group_of_32_becomes_8_positives_and_8_negatives() -> None:
    group = [trajectory(i, 1.0 if i % 4 else 0.0) for i in range(32)]  # 24 positives, 8 negatives
    result = resample_on_correct(group, 16, random.Random(0))
    assert (result.positives, result.negatives, result.dropped) == (8, 8, 16)
    assert all(item.reward > 0 for item in result.kept[:8])
    assert all(item.reward <= 0 for item in result.kept[8:])


def test_an_all_correct_or_all_wrong_group_is_kept_at_size_with_zero_advantages() -> None:
    for reward in (1.0, 0.0):
        result = resample_on_correct([trajectory(i, reward) for i in range(32)], 16, random.Random(1))
        assert len(result.kept) == 16
        assert result.advantages == (0.0,) * 16


@given(groups, sizes, seeds)
def test_the_same_seed_gives_the_same_group(group: list[Trajectory], size: int, seed: int) -> None:
    one = resample_on_correct(group, size, random.Random(seed))
    two = resample_on_correct(group, size, random.Random(seed))
    assert one == two


def test_a_target_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        resample_on_correct([trajectory(0, 1.0)], 0, random.Random(0))


# ---- which positives ------------------------------------------------------------------------------


def test_the_penalty_is_the_tool_error_share_plus_the_format_issue_share() -> None:
    assert penalty(trajectory(0, 1.0, tool_calls=4, tool_errors=0)) == 0.0
    assert penalty(trajectory(0, 1.0, tool_calls=4, tool_errors=1)) == 0.25
    assert penalty(trajectory(0, 1.0, tool_calls=0, tool_errors=0)) == roc.NO_TOOL_ERROR_RATIO
    assert penalty(trajectory(0, 1.0, tool_calls=4, tool_errors=4, format_issues=9, turns=3)) == 2.0
    assert penalty(trajectory(0, 1.0, format_issues=1, turns=4)) == 0.25


def test_positives_with_fewer_tool_errors_are_kept_more_often() -> None:
    # 8 clean and 8 error-ridden positives (half their calls fail), 16 negatives; 8 positive slots.
    group = [trajectory(i, 1.0, tool_calls=4, tool_errors=0 if i < 8 else 2) for i in range(16)]
    group += [trajectory(16 + i, 0.0) for i in range(16)]
    clean = noisy = 0
    for seed in range(400):
        kept = resample_on_correct(group, 16, random.Random(seed)).kept
        clean += sum(item.reward > 0 and item.tool_errors == 0 for item in kept)
        noisy += sum(item.reward > 0 and item.tool_errors > 0 for item in kept)
    assert clean + noisy == 400 * 8
    # Uniform sampling would keep ~1600 of each (sd ~ 20 over 400 seeds); weights 10 : 1.67 keep far more
    # clean ones. The bound leaves dozens of standard deviations either way, so the test cannot flake.
    assert clean > 2 * noisy


def test_the_cleanest_positive_is_kept_more_often_than_each_noisier_one_in_a_graded_group() -> None:
    group = [trajectory(i, 1.0, tool_calls=4, tool_errors=i % 5) for i in range(20)]
    counts = [0] * 5
    for seed in range(300):
        for item in resample_on_correct(group, 8, random.Random(seed)).kept:
            counts[item.tool_errors] += 1
    assert counts == sorted(counts, reverse=True)


def test_negatives_are_kept_uniformly_whatever_their_tool_errors() -> None:
    group = [trajectory(i, 0.0, tool_calls=4, tool_errors=0 if i < 8 else 4) for i in range(16)]
    group += [trajectory(16 + i, 1.0) for i in range(16)]
    clean = 0
    for seed in range(400):
        kept = resample_on_correct(group, 16, random.Random(seed)).kept
        clean += sum(item.reward <= 0 and item.tool_errors == 0 for item in kept)
    assert abs(clean - 400 * 4) < 200  # expectation 1600, sd ~ 20


# ---- advantages -----------------------------------------------------------------------------------


@given(groups, sizes, seeds)
def test_advantages_sum_to_zero_and_follow_the_rewards(group: list[Trajectory], size: int, seed: int) -> None:
    result = resample_on_correct(group, size, random.Random(seed))
    assert len(result.advantages) == len(result.kept)
    assert math.fsum(result.advantages) == pytest.approx(0.0, abs=1e-6)
    scored = list(zip((item.reward for item in result.kept), result.advantages, strict=True))
    for (reward_a, advantage_a), (reward_b, advantage_b) in itertools.pairwise(scored):
        if reward_a > reward_b:
            assert advantage_a > advantage_b


def test_group_advantages_are_normalised_by_the_population_std() -> None:
    advantages = group_advantages([1.0, 0.0, 1.0, 0.0])  # mean 0.5, std 0.5
    assert advantages == pytest.approx((1.0, -1.0, 1.0, -1.0), abs=1e-5)
    assert group_advantages([]) == ()
    assert group_advantages([3.0]) == (0.0,)


def test_roc_exports_what_it_lists() -> None:
    assert all(hasattr(roc, name) for name in roc.__all__)

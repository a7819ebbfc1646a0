"""Each step's real figures (turns, tool calls, rewards, masked and stale trajectories, weights version):
the staleness decision, the colocated engines' URLs and sleep requests, the simulated trainer's figures,
and their trip through SQL to ``orch status``."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator import service
from orchestrator.core.work import StepPlan
from orchestrator.errors import OrchError
from orchestrator.records import RunPatch, Step
from orchestrator.render.runs import report_record, summary_table
from orchestrator.render.text import figures_line
from orchestrator.sim.trainer import StepSimulator
from orchestrator.spec import load_spec
from orchestrator.state.store import Store
from orchestrator.worker.rollouts import Trajectory
from orchestrator.worker.staleness import current_version, split_stale, stale_engines
from orchestrator.worker.weights import colocated_urls, sleep_request, wake_request


def trajectory(sample: int, versions: tuple[int | None, ...], engines: tuple[int, ...] = ()) -> Trajectory:
    return Trajectory(
        problem_id="p",
        sample=sample,
        prompt="1+1?",
        response="2",
        turns=len(versions),
        prompt_tokens=3,
        response_tokens=1,
        tool_calls=0,
        tool_errors=0,
        format_issues=0,
        reward=1.0,
        correct=True,
        verdict="answer",
        weights_versions=versions,
        engines=engines or tuple(range(len(versions))),
    )


# ---- the staleness decision (pure) -------------------------------------------------------------------


def test_the_current_version_is_the_newest_reported_and_never_goes_back() -> None:
    assert current_version(None, []) is None
    assert current_version(None, [trajectory(0, (None, None))]) is None
    assert current_version(None, [trajectory(0, (3, None)), trajectory(1, (4,))]) == 4
    assert current_version(5, [trajectory(0, (4,))]) == 5


def test_on_policy_any_turn_on_older_weights_makes_a_trajectory_stale() -> None:
    fresh, mixed, old, unknown = (
        trajectory(0, (4, 4)),
        trajectory(1, (4, 3)),  # one turn after a reload, one before
        trajectory(2, (2,)),
        trajectory(3, (None, None)),  # the engine does not say: trusted
    )
    split = split_stale([fresh, mixed, old, unknown], 4, 0)
    assert split.fresh == (fresh, unknown) and split.stale == (mixed, old)


def test_max_staleness_allows_that_many_versions_back() -> None:
    items = [trajectory(n, (v,)) for n, v in enumerate((4, 3, 2, 1))]
    assert [t.sample for t in split_stale(items, 4, 1).stale] == [2, 3]
    assert [t.sample for t in split_stale(items, 4, 2).stale] == [3]
    assert split_stale(items, 4, 3).stale == ()
    assert split_stale(items, None, 0).stale == (), "no known current version: nothing is stale"
    with pytest.raises(ValueError, match="max_staleness"):
        split_stale(items, 4, -1)


def test_the_engines_to_resync_are_those_that_answered_with_old_weights() -> None:
    items = [trajectory(0, (4, 3), engines=(0, 2)), trajectory(1, (1, 4), engines=(1, 0))]
    assert stale_engines(items, 4, 0) == [1, 2]
    assert stale_engines(items, 4, 3) == []


# ---- colocated engines -----------------------------------------------------------------------------

URLS = ["http://127.0.0.1:8000", "http://127.0.0.1:8001", "http://127.0.0.1:8002"]


def test_colocated_engine_members_map_to_their_urls_by_engine_index() -> None:
    assert colocated_urls("", URLS) == []
    assert colocated_urls("run-a-engine-2-a1, run-a-engine-0-a1", URLS) == [URLS[2], URLS[0]]
    with pytest.raises(OrchError, match=r"ORCH_COLOCATED_ENGINES: 'run-a-trainer-0-a1' is not an engine"):
        colocated_urls("run-a-trainer-0-a1", URLS)
    with pytest.raises(OrchError, match=r"is engine 3, but ORCH_ENGINE_URLS lists 3 engine\(s\)"):
        colocated_urls("run-a-engine-3-a1", URLS)


def test_sleep_and_wake_requests_follow_the_engine_kind() -> None:
    assert sleep_request("vllm") == ("/sleep?level=1", {}) == sleep_request("command")
    assert wake_request("vllm") == ("/wake_up", {})
    assert sleep_request("sglang") == ("/release_memory_occupation", {})
    assert wake_request("sglang") == ("/resume_memory_occupation", {})


# ---- the simulated trainer ---------------------------------------------------------------------------


def test_the_simulated_trainer_reports_turns_tool_calls_and_rewards(quickstart: Path) -> None:
    spec = load_spec(quickstart)
    stage = spec.curriculum[0]
    plan = StepPlan("run-1", 3, 0, 1, stage.max_response_tokens, stage.max_turns, False, "file:///x")
    outcome = StepSimulator().step(spec, plan)
    assert outcome.rollouts <= outcome.turns <= outcome.rollouts * stage.max_turns
    assert outcome.tool_calls == outcome.turns - outcome.rollouts  # every turn but the last calls a tool
    assert outcome.reward_sum == outcome.correct > 0
    assert outcome.infra_masked == outcome.stale_dropped == outcome.stale_regenerated == 0
    assert outcome.weights_version is None


# ---- SQL and orch status -----------------------------------------------------------------------------


def test_step_figures_round_trip_through_sql_and_show_in_status(store: Store, quickstart: Path) -> None:
    run = store.create_run(load_spec(quickstart))
    base = dict(
        run_id=run.id, stage_index=0, attempt=1, max_response_tokens=600, max_turns=3, rollouts=12,
        generated_tokens=4000, rollout_seconds=1.5, train_seconds=0.5, preemptions=0, correct=9,
        superseded=False,
    )  # fmt: skip
    first = Step(step=1, **base)  # an older trainer's: no figures
    second = Step(
        step=2, **base, turns=30, tool_calls=18, tool_errors=2, reward_sum=8.5, infra_masked=2,
        stale_dropped=1, stale_regenerated=3, weights_version=7,
    )  # fmt: skip
    for step in (first, second):
        run = store.apply(RunPatch(run.id, run.version, run={"steps_done": step.step}, step=step))
    assert store.steps(run.id) == [first, second]
    assert (first.weights_version, first.reward_mean, second.solve_rate) == (None, 0.0, 0.75)

    summary = report_record(service.report(store, run.id), time.time())
    assert summary["last_step"] == {
        "step": 2, "rollouts": 12, "generated_tokens": 4000, "turns": 30, "tool_calls": 18,
        "tool_errors": 2, "reward_mean": 0.7083, "solve_rate": 0.75, "infra_masked": 2,
        "stale_regenerated": 3, "stale_dropped": 1, "weights_version": 7,
    }  # fmt: skip
    out = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    out.print(summary_table(summary))
    assert (
        "12 rollouts · solve rate 75% · reward mean 0.71 · 30 turns · 18 tool calls (2 failed) · 2 masked · "
        "3 stale regenerated, 1 dropped · weights v7"
    ) in out.export_text()


def test_a_step_without_stale_trajectories_or_versions_says_less() -> None:
    assert figures_line(None) == "-"
    line = figures_line(
        {
            "rollouts": 4, "solve_rate": 0.5, "reward_mean": 0.5, "turns": 4, "tool_calls": 0,
            "tool_errors": 0, "infra_masked": 0, "stale_regenerated": 0, "stale_dropped": 0,
            "weights_version": None,
        }
    )  # fmt: skip
    assert (
        line
        == "4 rollouts · solve rate 50% · reward mean 0.50 · 4 turns · 0 tool calls (0 failed) · 0 masked"
    )

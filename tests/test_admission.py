"""The admission pass, case by case: quota, borrowing, order, fair share, starvation, preemption, reasons."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.core.admission import admission_pass
from orchestrator.core.fairshare import decay_usage
from orchestrator.core.queueing import AdmissionResult, Wait
from tests.admission_builders import make_nodes, make_queue, make_run, make_snapshot


def admitted(result: AdmissionResult) -> list[str]:
    return [admit.run_id for admit in result.admitted]


def waits(result: AdmissionResult) -> dict[str, Wait]:
    return {wait.run_id: wait for wait in result.waiting}


def victims(result: AdmissionResult) -> list[str]:
    return sorted(p.victim for p in result.preemptions)


# ---- quota and borrowing --------------------------------------------------------------------------


def test_a_run_within_its_quota_on_free_nodes_is_admitted_and_bound_to_them() -> None:
    run = make_run("x").gpus(16).candidate()
    result = admission_pass(
        make_snapshot(queues=[make_queue("a", 16)], nodes=make_nodes(2), candidates=[run])
    )
    assert admitted(result) == ["x"]
    assert sorted(result.admitted[0].nodes.values()) == ["h100-0", "h100-1"]
    assert result.admitted[0].borrowed == {}
    assert result.waiting == () and result.preemptions == ()


def test_a_run_beyond_its_quota_without_a_cohort_waits_naming_the_quota_and_who_holds_it() -> None:
    holders = [make_run(r).gpus(8).on({f"h100-{i}": 8}).holder() for i, r in enumerate(["x", "y"])]
    run = make_run("z").gpus(8).candidate()
    result = admission_pass(
        make_snapshot(queues=[make_queue("a", 16)], nodes=make_nodes(4), holders=holders, candidates=[run])
    )
    wait = waits(result)["z"]
    assert wait.kind == "quota"
    assert "queue a: quota 16 of 16 GPUs of pool h100 in use (runs x, y)" in wait.reason
    assert "no cohort" in wait.reason
    assert wait.position == 1


def test_a_queue_borrows_what_its_cohort_leaves_unused_and_the_admit_says_how_much() -> None:
    queues = [make_queue("a", 8, cohort="lab"), make_queue("b", 16, cohort="lab")]
    run = make_run("x").gpus(16).candidate()
    result = admission_pass(make_snapshot(queues=queues, nodes=make_nodes(4), candidates=[run]))
    assert admitted(result) == ["x"]
    assert result.admitted[0].borrowed == {"h100": 8}


def test_borrowing_stops_at_the_borrowing_limit() -> None:
    queues = [
        make_queue("a", 8, cohort="lab", borrowing_limit={"h100": 4}),
        make_queue("b", 16, cohort="lab"),
    ]
    run = make_run("x").gpus(16).candidate()
    result = admission_pass(make_snapshot(queues=queues, nodes=make_nodes(4), candidates=[run]))
    assert admitted(result) == []
    assert "may borrow at most 4 from cohort lab" in waits(result)["x"].reason


def test_a_cohort_whose_quota_is_all_in_use_lends_none() -> None:
    queues = [make_queue("a", 8, cohort="lab"), make_queue("b", 8, cohort="lab")]
    holder = make_run("y").queue("b").gpus(8).on({"h100-0": 8}).preemptible(False).holder()
    mine = make_run("w").gpus(8).on({"h100-1": 8}).preemptible(False).holder()
    run = make_run("x").gpus(8).candidate()
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(4), holders=[holder, mine], candidates=[run])
    reason = waits(admission_pass(snapshot))["x"].reason
    assert "cohort lab has 16 of 16 GPUs of pool h100 in use and lends none" in reason


def test_a_run_short_of_nodes_waits_naming_free_gpus_and_the_runs_on_them() -> None:
    holders = [make_run("x").queue("b").gpus(12, per_member=4).on({"h100-0": 4, "h100-1": 8}).holder()]
    run = make_run("z").gpus(8).priority(0).candidate()
    queues = [make_queue("a", 16, preempt_within_queue=False), make_queue("b", 16)]
    result = admission_pass(
        make_snapshot(queues=queues, nodes=make_nodes(2), holders=holders, candidates=[run])
    )
    wait = waits(result)["z"]
    assert wait.kind == "nodes"
    assert wait.reason == "pool h100: 4 GPUs free, the gang needs 8 (runs x hold 12)"


def test_a_run_in_an_unknown_queue_waits_and_says_so() -> None:
    run = make_run("x").queue("nope").candidate()
    result = admission_pass(make_snapshot(queues=[make_queue("a")], nodes=make_nodes(1), candidates=[run]))
    assert waits(result)["x"].kind == "queue"
    assert "'nope' does not exist" in waits(result)["x"].reason


def test_a_run_that_already_holds_quota_is_placed_first_without_a_quota_check() -> None:
    holders = [
        make_run(r).gpus(8).on({f"h100-{i}": 8}).preemptible(False).holder() for i, r in enumerate(["x", "y"])
    ]
    again = make_run("g").gpus(8).holding_quota().candidate()
    other = make_run("n").gpus(8).priority(100).candidate()
    snapshot = make_snapshot(
        queues=[make_queue("a", 24)], nodes=make_nodes(3), holders=holders, candidates=[other, again]
    )
    result = admission_pass(snapshot)
    assert admitted(result) == ["g"]
    assert waits(result)["n"].kind == "quota"  # g's 8 GPUs count against the queue's 24


# ---- order ----------------------------------------------------------------------------------------


def test_within_a_queue_higher_priority_goes_first_then_the_longest_waiting() -> None:
    runs = [
        make_run("low").priority(0).queued(0).candidate(),
        make_run("high").priority(5).queued(50).candidate(),
        make_run("old").priority(5).queued(10).candidate(),
    ]
    snapshot = make_snapshot(queues=[make_queue("a", 16)], nodes=make_nodes(2), candidates=runs, now=100)
    result = admission_pass(snapshot)
    assert admitted(result) == ["old", "high"]
    assert waits(result)["low"].position == 3


def test_aging_lifts_a_long_waiting_low_priority_run_above_a_newer_higher_one() -> None:
    runs = [
        make_run("patient").priority(0).queued(0).candidate(),
        make_run("new").priority(2).queued(2900).candidate(),
    ]
    queue = make_queue("a", 8, aging_s=1000)
    result = admission_pass(make_snapshot(queues=[queue], nodes=make_nodes(2), candidates=runs, now=3000))
    assert admitted(result) == ["patient"]  # 0 + 3 levels beats 2 + 0
    assert waits(result)["new"].position == 2


def test_a_head_that_does_not_fit_lets_a_smaller_run_of_its_queue_in() -> None:
    runs = [make_run("big").gpus(32).priority(9).candidate(), make_run("small").gpus(8).candidate()]
    result = admission_pass(make_snapshot(queues=[make_queue("a", 64)], nodes=make_nodes(2), candidates=runs))
    assert admitted(result) == ["small"]
    assert waits(result)["big"].position == 1


def test_fair_share_alternates_between_two_equal_queues() -> None:
    runs = [make_run(f"{q}{i}").queue(q).queued(i).candidate() for q in "ab" for i in range(4)]
    queues = [make_queue("a", 64), make_queue("b", 64)]
    result = admission_pass(make_snapshot(queues=queues, nodes=make_nodes(4), candidates=runs))
    assert admitted(result) == ["a0", "b0", "a1", "b1"]


def test_a_queue_of_twice_the_weight_gets_twice_the_gpus() -> None:
    runs = [make_run(f"{q}{i}").queue(q).queued(i).candidate() for q in "ab" for i in range(6)]
    queues = [make_queue("a", 64, weight=2.0), make_queue("b", 64)]
    result = admission_pass(make_snapshot(queues=queues, nodes=make_nodes(6), candidates=runs))
    assert sorted(admitted(result)) == ["a0", "a1", "a2", "a3", "b0", "b1"]


def test_past_usage_puts_a_queue_behind_one_that_used_less() -> None:
    runs = [make_run(f"{q}0").queue(q).candidate() for q in "ab"]
    queues = [make_queue("a", 64), make_queue("b", 64)]
    usage = {("a", "h100"): 8.0}
    result = admission_pass(make_snapshot(queues=queues, nodes=make_nodes(1), candidates=runs, usage=usage))
    assert admitted(result) == ["b0"]


def test_a_starving_head_short_of_nodes_keeps_its_pool_so_freed_gpus_gather_for_it() -> None:
    holders = [make_run("h").queue("b").gpus(8).on({"h100-0": 8}).preemptible(False).holder()]
    runs = [
        make_run("starved").gpus(16).queued(0).candidate(),
        make_run("quick").queue("b").gpus(8).queued(9000).candidate(),
    ]
    queues = [make_queue("a", 64), make_queue("b", 64)]
    snapshot = make_snapshot(
        queues=queues, nodes=make_nodes(2), holders=holders, candidates=runs, now=10_000, starvation_s=3600
    )
    result = admission_pass(snapshot)
    assert admitted(result) == []
    assert waits(result)["quick"].kind == "held"
    assert "kept for run starved" in waits(result)["quick"].reason


def test_a_head_not_yet_starving_does_not_keep_its_pool() -> None:
    holders = [make_run("h").queue("b").gpus(8).on({"h100-0": 8}).preemptible(False).holder()]
    runs = [
        make_run("big").gpus(16).queued(9000).candidate(),
        make_run("quick").queue("b").gpus(8).queued(9000).candidate(),
    ]
    queues = [make_queue("a", 64), make_queue("b", 64)]
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(2), holders=holders, candidates=runs, now=10_000)
    assert admitted(admission_pass(snapshot)) == ["quick"]


# ---- preemption -----------------------------------------------------------------------------------


def test_a_higher_priority_run_stops_the_fewest_lowest_priority_most_recent_runs_of_its_queue() -> None:
    holders = [
        make_run("old-low").priority(1).gpus(8).on({"h100-0": 8}).admitted(-5000).holder(),
        make_run("new-low").priority(1).gpus(8).on({"h100-1": 8}).admitted(-4000).holder(),
        make_run("mid").priority(3).gpus(8).on({"h100-2": 8}).admitted(-9000).holder(),
    ]
    run = make_run("urgent").priority(5).gpus(8).candidate()
    snapshot = make_snapshot(
        queues=[make_queue("a", 24)], nodes=make_nodes(3), holders=holders, candidates=[run]
    )
    result = admission_pass(snapshot)
    assert victims(result) == ["new-low"]
    preempt = result.preemptions[0]
    assert preempt.by == "urgent"
    assert "lower priority (1 < 5) in the same queue" in preempt.reason
    wait = waits(result)["urgent"]
    assert wait.kind == "stopping"
    assert wait.reason == "waiting for run new-low to stop and release 8 GPUs (preempted for this run)"


def test_a_lender_reclaims_its_nominal_quota_from_a_borrowing_queue() -> None:
    queues = [make_queue("a", 16, cohort="lab"), make_queue("b", 0, cohort="lab")]
    holders = [
        make_run(f"b{i}").queue("b").priority(9).gpus(8).on({f"h100-{i}": 8}).admitted(-1000 - i).holder()
        for i in range(2)
    ]
    run = make_run("x").gpus(8).priority(0).candidate()
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(2), holders=holders, candidates=[run])
    result = admission_pass(snapshot)
    assert victims(result) == ["b0"]  # the most recently admitted of equal priority
    assert "queue b borrows 16 GPUs of pool h100 from cohort lab" in result.preemptions[0].reason


@pytest.mark.parametrize(("policy", "expected"), [("never", []), ("lower-priority", []), ("any", ["b0"])])
def test_the_reclaim_policy_decides_whether_higher_priority_borrowers_are_stopped(
    policy: str, expected: list[str]
) -> None:
    queues = [
        make_queue("a", 8, cohort="lab", reclaim_within_cohort=policy),
        make_queue("b", 0, cohort="lab"),
    ]
    holders = [make_run("b0").queue("b").priority(9).gpus(8).on({"h100-0": 8}).holder()]
    run = make_run("x").gpus(8).candidate()
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(1), holders=holders, candidates=[run])
    assert victims(admission_pass(snapshot)) == expected


def test_a_higher_priority_run_stops_a_lower_priority_run_of_another_queue_for_nodes() -> None:
    holders = [make_run("y").queue("b").priority(0).gpus(8).on({"h100-0": 8}).holder()]
    run = make_run("x").priority(5).gpus(8).candidate()
    queues = [make_queue("a", 8), make_queue("b", 8)]
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(1), holders=holders, candidates=[run])
    result = admission_pass(snapshot)
    assert victims(result) == ["y"]
    assert "holds GPUs of pool h100 the run needs" in result.preemptions[0].reason


@pytest.mark.parametrize(
    ("victim", "why"),
    [
        (make_run("y").priority(0).preemptible(False), "not preemptible"),
        (make_run("y").priority(0).admitted(-100), "protected for its minimum run time"),
        (make_run("y").priority(5), "not of lower priority"),
    ],
)
def test_a_run_that_may_not_be_stopped_is_left_alone(victim: object, why: str) -> None:
    holder = victim.gpus(8).on({"h100-0": 8}).holder()  # type: ignore[attr-defined]
    run = make_run("x").priority(5).gpus(8).candidate()
    snapshot = make_snapshot(
        queues=[make_queue("a", 16)], nodes=make_nodes(1), holders=[holder], candidates=[run]
    )
    result = admission_pass(snapshot)
    assert result.preemptions == (), why
    assert waits(result)["x"].kind == "nodes"


def test_a_run_whose_victim_is_already_stopping_waits_without_preempting_again() -> None:
    holders = [
        make_run("v").priority(0).gpus(8).on({"h100-0": 8}).stopping().holder(),
        make_run("w").priority(0).gpus(8).on({"h100-1": 8}).holder(),
    ]
    run = make_run("x").priority(5).gpus(8).candidate()
    snapshot = make_snapshot(
        queues=[make_queue("a", 16)], nodes=make_nodes(2), holders=holders, candidates=[run]
    )
    result = admission_pass(snapshot)
    assert result.preemptions == ()
    assert waits(result)["x"].reason == "waiting for run v to stop and release 8 GPUs (already stopping)"


def test_gpus_reserved_for_a_preempting_run_are_not_taken_by_a_later_run_of_the_pass() -> None:
    # x needs 16 on 8-GPU nodes: the free node plus the node of low-priority y. z (other queue) would
    # otherwise take the free node in the same pass.
    holders = [make_run("y").queue("a").priority(0).gpus(8).on({"h100-0": 8}).holder()]
    runs = [
        make_run("x").priority(5).gpus(16).candidate(),
        make_run("z").queue("b").priority(0).gpus(8).candidate(),
    ]
    queues = [make_queue("a", 16), make_queue("b", 16)]
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(2), holders=holders, candidates=runs)
    result = admission_pass(snapshot)
    assert victims(result) == ["y"]
    assert admitted(result) == []
    assert waits(result)["z"].kind == "nodes"


def test_a_stopping_run_is_claimed_by_one_waiting_run_only() -> None:
    holders = [make_run("v").priority(0).gpus(8).on({"h100-0": 8}).stopping().holder()]
    runs = [make_run(r).priority(5).gpus(8).queued(i).candidate() for i, r in enumerate(["x1", "x2"])]
    snapshot = make_snapshot(
        queues=[make_queue("a", 32)], nodes=make_nodes(1), holders=holders, candidates=runs
    )
    result = admission_pass(snapshot)
    assert waits(result)["x1"].kind == "stopping"
    assert waits(result)["x2"].kind == "nodes"


def test_a_run_that_preempted_takes_the_freed_gpus_before_a_head_with_a_lower_share() -> None:
    # x (queue a, heavy past usage) preempted last pass; its victim is gone now. z (queue b, no usage)
    # would be first by fair share and take the freed node: x is nominated and goes first.
    runs = [
        replace(make_run("x").queue("a").gpus(8).candidate(), nominated=True),
        make_run("z").queue("b").gpus(8).candidate(),
    ]
    queues = [make_queue("a", 16), make_queue("b", 16)]
    usage = {("a", "h100"): 16.0}
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(1), candidates=runs, usage=usage)
    result = admission_pass(snapshot)
    assert admitted(result) == ["x"]
    assert waits(result)["z"].kind == "nodes"


def test_two_runs_reclaiming_a_cohort_stop_one_borrower_each_not_more() -> None:
    # b borrows 16 of a's nominal 16 (cohort of 32, full); a's two runs of 8 reclaim it: one victim each.
    holders = [
        make_run(f"b{i}").queue("b").gpus(8).on({f"h100-{i}": 8}).admitted(-10_000 + i).holder()
        for i in range(4)
    ]
    runs = [make_run(f"a{i}").queue("a").priority(5).gpus(8).queued(i).candidate() for i in range(2)]
    queues = [
        make_queue("a", 16, cohort="lab"),
        make_queue("b", 16, cohort="lab", borrowing_limit={"h100": 16}),
    ]
    snapshot = make_snapshot(queues=queues, nodes=make_nodes(4), holders=holders, candidates=runs)
    result = admission_pass(snapshot)
    assert len(victims(result)) == 2 and len(set(victims(result))) == 2
    assert {waits(result)[r].kind for r in ("a0", "a1")} == {"stopping"}


# ---- the pass as a function -------------------------------------------------------------------------


def test_the_pass_is_deterministic_whatever_the_order_of_its_inputs() -> None:
    holders = [make_run(f"h{i}").priority(i % 2).gpus(8).on({f"h100-{i}": 8}).holder() for i in range(3)]
    runs = [
        make_run(f"c{i}").queue("ab"[i % 2]).priority(i % 3).gpus(8).queued(i).candidate() for i in range(6)
    ]
    queues = [make_queue("a", 16, cohort="lab"), make_queue("b", 16, cohort="lab")]
    one = make_snapshot(queues=queues, nodes=make_nodes(5), holders=holders, candidates=runs, now=50)
    two = make_snapshot(
        queues=queues[::-1], nodes=make_nodes(5)[::-1], holders=holders[::-1], candidates=runs[::-1], now=50
    )
    first = admission_pass(one)
    assert admission_pass(one) == first
    again = admission_pass(two)
    assert sorted(admitted(again)) == sorted(admitted(first))
    assert victims(again) == victims(first)


def test_decayed_usage_moves_halfway_to_what_is_held_every_half_life() -> None:
    usage = decay_usage({("a", "h100"): 16.0, ("b", "h100"): 0.001}, {("a", "h100"): 0}, 60.0, 60.0)
    assert usage == {("a", "h100"): 8.0}
    usage = decay_usage(usage, {("a", "h100"): 8, ("c", "h100"): 4}, 120.0, 60.0)
    assert usage == {("a", "h100"): 8.0, ("c", "h100"): 3.0}

"""The pure decisions of a reconcile pass, on hand-built snapshots: no database, no cluster."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.core.admit import admit_patch, gang
from orchestrator.core.commands import SuspendReason
from orchestrator.core.placement import NodeView, place_all
from orchestrator.core.reconcile import Decision, cluster_diff, decide
from orchestrator.core.results import record_step
from orchestrator.core.snapshot import ObservedWorkload, RunSnapshot
from orchestrator.core.work import CheckpointPlan, StepOutcome, StepPlan
from orchestrator.records import Phase, PreemptionRecord, Run, RunPatch, Stage, Workload, WorkloadStatus
from orchestrator.spec import parse_spec
from tests.conftest import spec_data

SPEC = parse_spec(spec_data())


def make_run(**changes: object) -> Run:
    run = Run(
        id="qs-1",
        name="quickstart",
        spec=SPEC.model_dump(mode="json"),
        phase=Phase.PENDING,
        stage_index=0,
        steps_done=0,
        attempt=0,
        advance_requested=False,
        sim_seconds=0.0,
        gpu_busy_seconds=0.0,
        gpu_held_seconds=0.0,
        message="",
        version=1,
        queue="default",
        priority=0,
        created_at=0.0,
        updated_at=0.0,
    )
    return replace(run, **changes)


def make_stages() -> tuple[Stage, ...]:
    return tuple(
        Stage(
            "qs-1",
            i,
            f"stage-{i + 1}",
            s.max_response_tokens,
            s.max_turns,
            s.steps,
            0 if i == 0 else None,
            None,
        )
        for i, s in enumerate(SPEC.curriculum)
    )


def make_snapshot(
    run: Run, *, nodes: int = 1, workloads: tuple[Workload, ...] = (), observed=(), **more
) -> RunSnapshot:
    return RunSnapshot(
        run=run,
        spec=SPEC,
        stages=make_stages(),
        workloads=workloads,
        observed={w.name: w for w in observed},
        nodes=tuple(NodeView(f"n{i}", "node", 8) for i in range(nodes)),
        **more,
    )


def admit(snapshot: RunSnapshot) -> RunPatch:
    """What the admission pass writes for a run it admits: the run's gang placed on the snapshot's nodes."""
    members = gang(snapshot.run, snapshot.spec)
    placement = place_all(members, snapshot.nodes, snapshot.used_by_others)
    assert placement.ok, placement.reason
    return admit_patch(snapshot, placement.nodes, now=0.0, queue="default")


def placed(run: Run) -> tuple[Workload, ...]:
    return admit(make_snapshot(run)).workloads


def running(workloads: tuple[Workload, ...]) -> tuple[Workload, ...]:
    return tuple(replace(w, status=WorkloadStatus.RUNNING) for w in workloads)


def seen(workloads: tuple[Workload, ...], phase: str = "Running") -> list[ObservedWorkload]:
    return [ObservedWorkload(w.name, w.run_id, w.node, phase) for w in workloads]


def test_a_pending_run_is_left_to_the_admission_pass() -> None:
    assert decide(make_snapshot(make_run())) == Decision()


def test_an_admitted_run_has_its_whole_gang_recorded_and_holds_its_quota() -> None:
    patch = admit(make_snapshot(make_run()))
    assert patch.run["phase"] == "Admitted" and patch.run["admitted_at"] == 0.0
    roles = sorted((w.role, w.index) for w in patch.workloads)
    assert roles == [("engine", i) for i in range(8)] + [("trainer", 0)]
    assert {w.status for w in patch.workloads} == {WorkloadStatus.PENDING}
    assert {w.name for w in patch.workloads} >= {"qs-1-trainer-0-a1", "qs-1-engine-7-a1"}
    assert [e.reason for e in patch.events] == ["Admitted", "Placed"]


def test_a_preempted_run_comes_back_as_a_new_attempt_from_its_last_checkpoint() -> None:
    run = make_run(phase=Phase.SUSPENDED, suspend_reason="preempted", attempt=2, steps_done=4)
    patch = admit(make_snapshot(run, last_checkpoint=4))
    assert patch.run["phase"] == "Resuming" and patch.run["attempt"] == 3
    assert patch.run["steps_done"] == 4 and patch.supersede_steps_after == 4
    assert {w.attempt for w in patch.workloads} == {3}
    [trainer] = [w for w in patch.workloads if w.role == "trainer"]
    assert trainer.env["ORCH_RESUME_STEP"] == "4"


def test_a_preempted_running_run_checkpoints_first_then_stops_at_that_checkpoint() -> None:
    workloads = running(placed(make_run()))
    preemption = PreemptionRecord("qs-1", "hi-1", "queue a needs 8 GPUs", 0.0)
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=3, version=7, admitted_at=0.0)
    first = decide(
        make_snapshot(
            run, workloads=workloads, observed=seen(workloads), preemption=preemption, last_checkpoint=2
        )
    )
    assert first.work == CheckpointPlan("qs-1", 3, 1, first.work.checkpoint_uri)
    then = decide(
        make_snapshot(
            run, workloads=workloads, observed=seen(workloads), preemption=preemption, last_checkpoint=3
        )
    ).patch
    assert then is not None and then.clear_preemption
    assert then.run["phase"] == "Suspended" and then.run["suspend_reason"] == "preempted"
    assert then.run["admitted_at"] is None and then.run["steps_done"] == 3
    assert {w.status for w in then.workloads} == {WorkloadStatus.DELETED}
    [event] = then.events
    assert event.reason == "Preempted" and "hi-1" in event.message and event.data["by"] == "hi-1"


def test_a_running_gang_asks_for_the_next_step_at_the_stage_limits() -> None:
    workloads = running(placed(make_run()))
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=3)
    work = decide(make_snapshot(run, workloads=workloads, observed=seen(workloads))).work
    assert isinstance(work, StepPlan)
    assert (work.step, work.max_response_tokens, work.max_turns) == (4, 8192, 10)
    assert work.checkpoint_after, "step 4 ends stage 1, and stage boundaries are checkpointed"


def test_a_member_that_vanished_fails_the_gang_back_to_the_last_checkpoint() -> None:
    workloads = running(placed(make_run()))
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=3)
    patch = decide(
        make_snapshot(run, workloads=workloads, observed=seen(workloads[1:]), last_checkpoint=2)
    ).patch
    assert patch is not None
    assert patch.run["phase"] == "Resuming" and patch.run["attempt"] == 2 and patch.run["steps_done"] == 2
    assert patch.supersede_steps_after == 2
    assert {w.status for w in patch.workloads} == {WorkloadStatus.FAILED, WorkloadStatus.DELETED}
    assert patch.events[0].reason == "GangFailed" and "Lost" in patch.events[0].message


def test_a_step_that_meets_the_advance_rule_asks_for_a_boundary_checkpoint() -> None:
    spec = parse_spec(
        {
            **spec_data(),
            "curriculum": [
                {**stage, "advance_when": {"solve_rate_at_least": 0.5, "min_steps": 1}} if i == 0 else stage
                for i, stage in enumerate(spec_data()["curriculum"])
            ],
        }
    )
    workloads = running(placed(make_run()))
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=0)
    snapshot = replace(make_snapshot(run, workloads=workloads), spec=spec)
    plan = StepPlan("qs-1", 1, 0, 1, 8192, 10, False, "file:///c/step-1")
    solved = StepOutcome(256, 1, 1.0, 1.0, 0.0, 0, 128, 1.0, 1.0)
    patch = record_step(snapshot, plan, solved)
    assert patch is not None and patch.run["advance_requested"] is True
    assert [e.reason for e in patch.events] == ["StepCompleted", "AdvanceRuleMet"]
    unsolved = replace(solved, correct=127)
    assert "advance_requested" not in record_step(snapshot, plan, unsolved).run


def test_an_outcome_for_a_run_that_moved_on_is_dropped() -> None:
    workloads = running(placed(make_run()))
    run = make_run(phase=Phase.RUNNING, attempt=2, steps_done=2)
    plan = StepPlan("qs-1", 3, 0, 1, 8192, 10, False, "file:///c/step-3")
    outcome = StepOutcome(1, 1, 1.0, 1.0, 0.0, 0, 0, 1.0, 1.0)
    assert record_step(make_snapshot(run, workloads=workloads), plan, outcome) is None


def test_the_cluster_gets_recorded_workloads_it_lacks_and_loses_released_ones() -> None:
    workloads = placed(make_run())
    released = replace(workloads[0], status=WorkloadStatus.DELETED)
    creates, deletes = cluster_diff((released, *workloads[1:]), seen(workloads[:1]))
    assert [w.name for w in creates] == [w.name for w in workloads[1:]]
    assert deletes == [workloads[0].name]
    lost_running = running(workloads[1:2])
    assert cluster_diff(lost_running, [])[0] == [], (
        "a Running workload that vanished is a failure, not a create"
    )


# ---- the after-step rule ----------------------------------------------------------------------------


def verdict(
    run: Run, step: int, *, checkpointed: bool = False, correct: int = 0, rollouts: int = 8, rule=None
):
    from orchestrator.core.after_step import after_step

    stages = make_stages()
    stage = stages[run.stage_index]
    return after_step(
        run,
        stage,
        len(stages),
        rule,
        step=step,
        checkpointed=checkpointed,
        correct=correct,
        rollouts=rollouts,
    )


def test_after_step_goes_on_inside_a_stage() -> None:
    from orchestrator.core.after_step import AfterStep

    assert verdict(make_run(phase=Phase.RUNNING), 1) == AfterStep()


def test_after_step_ends_the_stage_once_its_planned_steps_are_done() -> None:
    from orchestrator.core.after_step import PLANNED_STEPS_DONE, AfterStep

    planned = make_stages()[0].planned_steps
    run = make_run(phase=Phase.RUNNING, suspend_requested=True)
    assert verdict(run, planned, checkpointed=True) == AfterStep(
        end_stage=PLANNED_STEPS_DONE, suspend=SuspendReason.IDLE
    )


def test_after_the_last_stage_the_run_succeeds_and_never_suspends() -> None:
    from orchestrator.core.after_step import PLANNED_STEPS_DONE, AfterStep

    stages = make_stages()
    last = stages[-1]
    run = make_run(phase=Phase.RUNNING, stage_index=last.index, suspend_requested=True)
    with_start = replace(last, start_after_step=40)
    from orchestrator.core.after_step import after_step

    got = after_step(
        run,
        with_start,
        len(stages),
        None,
        step=40 + last.planned_steps,
        checkpointed=True,
        correct=0,
        rollouts=8,
    )
    assert got == AfterStep(end_stage=PLANNED_STEPS_DONE, last_stage=True)


def test_a_pending_suspend_waits_for_a_checkpoint() -> None:
    from orchestrator.core.after_step import AfterStep

    run = make_run(phase=Phase.RUNNING, suspend_requested=True)
    assert verdict(run, 1) == AfterStep()
    assert verdict(run, 1, checkpointed=True) == AfterStep(suspend=SuspendReason.IDLE)


def test_the_advance_rule_ends_a_stage_at_a_checkpoint_or_asks_for_one() -> None:
    from orchestrator.core.after_step import AfterStep
    from orchestrator.spec import AdvanceRuleSpec

    rule = AdvanceRuleSpec(solve_rate_at_least=0.5)
    run = make_run(phase=Phase.RUNNING)
    reason = "solve rate 0.75 reached advance_when.solve_rate_at_least 0.5"
    assert verdict(run, 1, correct=6, rule=rule, checkpointed=True) == AfterStep(end_stage=reason)
    assert verdict(run, 1, correct=6, rule=rule) == AfterStep(request_advance=reason)
    assert verdict(run, 1, correct=3, rule=rule) == AfterStep()
    assert verdict(replace(run, advance_requested=True), 1, correct=6, rule=rule) == AfterStep()
    assert verdict(
        run, 1, correct=6, rollouts=8, rule=AdvanceRuleSpec(solve_rate_at_least=0.5, min_steps=2)
    ) == (AfterStep())


def test_a_suspend_after_a_checkpoint_is_recorded_with_the_step_in_one_patch() -> None:
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=0, suspend_requested=True)
    workloads = running(placed(make_run()))
    snapshot = make_snapshot(run, workloads=workloads)
    plan = StepPlan(run.id, 1, 0, 1, 100, 1, True, "file:///ckpt/qs-1/step-000001")
    patch = record_step(snapshot, plan, StepOutcome(8, 100, 1.0, 1.0, 0.0, 0, 0, 1.0, 1.0))
    assert patch is not None and patch.step is not None and patch.checkpoint is not None
    assert patch.run["phase"] == "Suspended" and patch.run["steps_done"] == 1
    assert {w.status for w in patch.workloads} == {WorkloadStatus.DELETED}
    assert [e.reason for e in patch.events] == ["StepCompleted", "CheckpointSaved", "Suspended"]


def test_a_step_ends_with_a_checkpoint_every_n_steps_and_at_the_end_of_its_stage() -> None:
    from orchestrator.core.after_step import checkpoint_after

    stage = replace(make_stages()[0], planned_steps=5, start_after_step=0)
    assert [step for step in range(1, 6) if checkpoint_after(stage, step, 2)] == [2, 4, 5]
    assert [
        step for step in range(1, 6) if checkpoint_after(replace(stage, planned_steps=None), step, 2)
    ] == [2, 4]

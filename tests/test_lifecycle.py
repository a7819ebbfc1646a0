"""The run lifecycle state machine and the pure user commands built on it."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from orchestrator.core import commands
from orchestrator.core.lifecycle import ALLOWED, check_transition
from orchestrator.errors import IllegalTransition
from orchestrator.records import Phase, Run, RunPatch, Stage, Workload, WorkloadStatus

ALLOWED_PAIRS = sorted(
    ((current, target) for current, targets in ALLOWED.items() for target in targets),
    key=lambda pair: (pair[0].value, pair[1].value),
)
DISALLOWED_PAIRS = [
    (current, target) for current, target in itertools.product(Phase, Phase) if target not in ALLOWED[current]
]


def pair_id(pair: tuple[Phase, Phase]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


# ---- builders --------------------------------------------------------------------------------------


def make_run(**fields: Any) -> Run:
    defaults: dict[str, Any] = {
        "id": "quickstart-abc123",
        "name": "quickstart",
        "spec": {},
        "phase": Phase.RUNNING,
        "stage_index": 0,
        "steps_done": 7,
        "attempt": 1,
        "advance_requested": False,
        "sim_seconds": 100.0,
        "gpu_busy_seconds": 50.0,
        "gpu_held_seconds": 80.0,
        "message": "",
        "version": 12,
        "queue": "default",
        "priority": 0,
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    return Run(**{**defaults, **fields})


def make_workload(index: int, status: WorkloadStatus = WorkloadStatus.RUNNING, attempt: int = 1) -> Workload:
    return Workload(
        name=f"quickstart-abc123-trainer-{index}-a{attempt}",
        run_id="quickstart-abc123",
        role="trainer",
        index=index,
        attempt=attempt,
        pool="node",
        node="sim-node-0",
        gpus=8,
        status=status,
    )


def make_stages(*names: str) -> list[Stage]:
    return [
        Stage(
            run_id="quickstart-abc123",
            index=index,
            name=name,
            max_response_tokens=8192 + 4096 * index,
            max_turns=10,
            planned_steps=4,
            start_after_step=0 if index == 0 else None,
            end_step=None,
        )
        for index, name in enumerate(names)
    ]


# ---- the state machine -----------------------------------------------------------------------------


def test_every_phase_has_a_row_in_the_table() -> None:
    assert set(ALLOWED) == set(Phase)


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=pair_id)
def test_every_allowed_transition_passes(pair: tuple[Phase, Phase]) -> None:
    current, target = pair
    assert check_transition(current, target) is target


@pytest.mark.parametrize("pair", DISALLOWED_PAIRS, ids=pair_id)
def test_every_disallowed_transition_raises_naming_both_phases(pair: tuple[Phase, Phase]) -> None:
    current, target = pair
    with pytest.raises(IllegalTransition) as caught:
        check_transition(current, target)
    message = str(caught.value)
    assert f"{current.value} → {target.value}" in message
    assert "\n" not in message


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.CANCELLED])
def test_succeeded_and_cancelled_are_final(phase: Phase) -> None:
    assert ALLOWED[phase] == frozenset()
    for target in Phase:
        with pytest.raises(IllegalTransition, match="it is final"):
            check_transition(phase, target)


def test_a_failed_run_may_only_resume() -> None:
    assert check_transition(Phase.FAILED, Phase.RESUMING) is Phase.RESUMING
    assert ALLOWED[Phase.FAILED] == {Phase.RESUMING}


def test_no_phase_moves_to_itself() -> None:
    for phase in Phase:
        assert phase not in ALLOWED[phase]


def test_the_disallowed_message_lists_where_the_run_may_go() -> None:
    with pytest.raises(IllegalTransition) as caught:
        check_transition(Phase.SUSPENDED, Phase.RUNNING)
    assert "may go to Cancelled, Resuming" in str(caught.value)


# ---- cancel ----------------------------------------------------------------------------------------


def test_cancel_releases_live_workloads_in_the_same_patch() -> None:
    live = [make_workload(0), make_workload(1, WorkloadStatus.PENDING)]
    gone = [make_workload(2, WorkloadStatus.DELETED), make_workload(3, WorkloadStatus.FAILED)]
    patch = commands.cancel(make_run(), live + gone)
    assert isinstance(patch, RunPatch)
    assert patch.run["phase"] == Phase.CANCELLED.value
    assert patch.expected_version == 12
    assert [w.name for w in patch.workloads] == [w.name for w in live]
    assert {w.status for w in patch.workloads} == {WorkloadStatus.DELETED}
    assert all(w.reason == "run cancelled" for w in patch.workloads)
    assert [e.reason for e in patch.events] == ["Cancelled"]
    assert "step 7" in patch.events[0].message


def test_cancel_of_a_pending_run_without_workloads_releases_nothing() -> None:
    patch = commands.cancel(make_run(phase=Phase.PENDING, steps_done=0), [])
    assert patch.run["phase"] == "Cancelled"
    assert patch.workloads == ()


@pytest.mark.parametrize("phase", [Phase.CANCELLED, Phase.SUCCEEDED, Phase.FAILED])
def test_cancel_of_a_finished_run_raises_naming_its_phase(phase: Phase) -> None:
    with pytest.raises(IllegalTransition, match=f"{phase.value} → Cancelled"):
        commands.cancel(make_run(phase=phase), [make_workload(0)])


# ---- resume ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.FAILED, Phase.SUSPENDED])
def test_resume_starts_a_new_attempt_from_the_checkpoint(phase: Phase) -> None:
    run = make_run(phase=phase, attempt=2, steps_done=7)
    patch = commands.resume(run, [make_workload(0, attempt=2)], last_checkpoint=4)
    assert patch.run["phase"] == Phase.RESUMING.value
    assert patch.run["attempt"] == 3
    assert patch.run["steps_done"] == 4
    assert patch.supersede_steps_after == 4
    assert [(w.name, w.status) for w in patch.workloads] == [
        ("quickstart-abc123-trainer-0-a2", WorkloadStatus.DELETED)
    ]
    assert patch.events[0].data == {"from": phase.value, "resume_step": 4}
    assert "attempt 3" in patch.events[0].message


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.CANCELLED, Phase.PENDING])
def test_resume_of_a_run_that_cannot_resume_raises_naming_both_phases(phase: Phase) -> None:
    with pytest.raises(IllegalTransition) as caught:
        commands.resume(make_run(phase=phase), [], last_checkpoint=0)
    assert phase.value in str(caught.value)
    assert "Resuming" in str(caught.value)


# ---- stage advance ---------------------------------------------------------------------------------


def test_request_advance_marks_the_run_and_names_both_stages() -> None:
    stages = make_stages("warmup", "long")
    patch = commands.request_advance(make_run(), stages)
    assert patch.run["advance_requested"] is True
    assert patch.events[0].reason == "AdvanceRequested"
    assert "warmup → long" in patch.events[0].message
    assert patch.events[0].data == {"from": 0, "to": 1}


def test_request_advance_in_the_last_stage_raises_naming_the_stage() -> None:
    stages = make_stages("warmup", "long")
    with pytest.raises(IllegalTransition) as caught:
        commands.request_advance(make_run(stage_index=1), stages)
    assert "last stage (long)" in str(caught.value)


def test_request_advance_twice_raises() -> None:
    stages = make_stages("warmup", "long", "longer")
    run = make_run()
    patch = commands.request_advance(run, stages)
    advanced = dataclasses.replace(run, version=run.version + 1, **patch.run)
    with pytest.raises(IllegalTransition, match="already pending"):
        commands.request_advance(advanced, stages)


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.CANCELLED, Phase.FAILED])
def test_request_advance_of_a_finished_run_raises_naming_its_phase(phase: Phase) -> None:
    with pytest.raises(IllegalTransition, match=phase.value):
        commands.request_advance(make_run(phase=phase), make_stages("a", "b"))


# ---- the initial state ----------------------------------------------------------------------------


def test_a_submitted_run_starts_pending_in_stage_one_with_nothing_done() -> None:
    from orchestrator.core.lifecycle import initial_run
    from orchestrator.spec import parse_spec
    from tests.conftest import spec_data

    spec = parse_spec(spec_data())
    new = initial_run(spec, "quickstart-abc123", 1000.0, external_ref="orch/qs/uid-1")
    run = new.run
    assert (run.id, run.name, run.phase, run.version) == ("quickstart-abc123", spec.name, Phase.PENDING, 1)
    assert (run.stage_index, run.steps_done, run.attempt) == (0, 0, 0)
    assert (run.sim_seconds, run.gpu_busy_seconds, run.gpu_held_seconds) == (0.0, 0.0, 0.0)
    assert not run.advance_requested and not run.suspend_requested and run.lease_owner is None
    assert (run.queue, run.priority) == (spec.scheduling.queue, spec.scheduling.priority)
    assert (run.created_at, run.updated_at, run.external_ref) == (1000.0, 1000.0, "orch/qs/uid-1")
    assert run.message == "waiting for a controller" and run.spec == spec.model_dump(mode="json")
    assert [s.index for s in new.stages] == list(range(len(spec.curriculum)))
    assert [s.start_after_step for s in new.stages] == [0] + [None] * (len(spec.curriculum) - 1)
    assert all(s.end_step is None and s.run_id == run.id for s in new.stages)
    assert [s.planned_steps for s in new.stages] == [s.steps for s in spec.curriculum]
    assert new.event.reason == "Submitted"
    assert new.event.message == (
        f"run quickstart-abc123 submitted: {len(spec.curriculum)} stages, {spec.total_steps} steps, "
        f"stage 1 at {spec.curriculum[0].max_response_tokens} response tokens"
    )


def test_an_unnamed_stage_is_named_by_its_number() -> None:
    from orchestrator.core.lifecycle import initial_run
    from orchestrator.spec import parse_spec
    from tests.conftest import spec_data

    data = spec_data()
    for stage in data["curriculum"]:
        stage.pop("name", None)
    new = initial_run(parse_spec(data), "r-1", 0.0)
    assert [s.name for s in new.stages] == [f"stage-{i + 1}" for i in range(len(data["curriculum"]))]


# ---- suspend ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        (commands.SuspendReason.IDLE, "its GPUs sat idle (idle.action = suspend)"),
        (commands.SuspendReason.USER, "suspended by user"),
        (commands.SuspendReason.PREEMPTED, "preempted for another run; back in its queue"),
    ],
)
def test_suspend_releases_every_live_workload_and_says_why(reason: commands.SuspendReason, why: str) -> None:
    run = make_run(suspend_requested=True)
    workloads = [
        make_workload(0),
        make_workload(1, WorkloadStatus.PENDING),
        make_workload(2, WorkloadStatus.FAILED),
    ]
    patch = commands.suspend(run, workloads, reason, 8)
    message = f"suspended at the checkpoint of step 8: {why}"
    assert (patch.run_id, patch.expected_version) == (run.id, run.version)
    assert patch.run == {
        "phase": "Suspended",
        "suspend_requested": False,
        "suspend_reason": reason.value,
        "admitted_at": None,  # its quota is released with its GPUs
        "message": message,
    }
    assert patch.clear_preemption is (reason is commands.SuspendReason.PREEMPTED)
    assert [(w.name, w.status) for w in patch.workloads] == [
        (workloads[0].name, WorkloadStatus.DELETED),
        (workloads[1].name, WorkloadStatus.DELETED),
    ]
    assert [w.reason for w in patch.workloads] == [workloads[0].reason, workloads[1].reason]
    [event] = patch.events
    assert (event.reason, event.message, event.data) == (
        "Preempted" if reason is commands.SuspendReason.PREEMPTED else "Suspended",
        message,
        {"step": 8, "reason": reason.value},
    )


def test_suspend_completes_the_patch_it_is_given_in_the_same_transaction() -> None:
    from orchestrator.records import NewEvent

    run = make_run()
    base = RunPatch(run.id, run.version, run={"steps_done": 8}, events=(NewEvent("StepCompleted", "step 8"),))
    patch = commands.suspend(run, [make_workload(0)], commands.SuspendReason.IDLE, 8, base=base)
    assert patch.run["steps_done"] == 8 and patch.run["phase"] == "Suspended"
    assert [e.reason for e in patch.events] == ["StepCompleted", "Suspended"]


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.CANCELLED, Phase.FAILED, Phase.SUSPENDED])
def test_suspend_is_refused_where_the_lifecycle_forbids_it(phase: Phase) -> None:
    with pytest.raises(IllegalTransition):
        commands.suspend(make_run(phase=phase), [], commands.SuspendReason.USER, 7)


def test_a_suspend_request_sets_the_flag_once_and_only_on_a_run_that_can_suspend() -> None:
    run = make_run()
    patch = commands.request_suspend(run)
    assert patch == RunPatch(run.id, run.version, run={"suspend_requested": True})
    assert commands.request_suspend(make_run(suspend_requested=True)) is None
    for phase in (Phase.SUSPENDED, Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED):
        assert commands.request_suspend(make_run(phase=phase)) is None

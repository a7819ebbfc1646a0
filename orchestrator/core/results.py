"""The patches for finished work: a step (with the after-step rule's verdict), a stage-boundary
checkpoint, an entry filter; and the stage advance they share. Pure, like ``decide``."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.core.after_step import after_step
from orchestrator.core.commands import suspend
from orchestrator.core.curriculum import split_by_filter
from orchestrator.core.failures import cleared_by_step
from orchestrator.core.lifecycle import check_transition
from orchestrator.core.snapshot import RunSnapshot
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.records import (
    Checkpoint,
    NewEvent,
    Phase,
    ProblemResult,
    RunPatch,
    StageUpdate,
    Step,
    Workload,
    WorkloadStatus,
)

__all__ = [
    "advance",
    "record_checkpoint",
    "record_filter",
    "record_step",
    "release_workloads",
    "run_patch",
    "with_status",
]


def release_workloads(snapshot: RunSnapshot, only_stale: bool) -> tuple[Workload, ...]:
    """The run's live workloads (``only_stale``: those of earlier attempts), marked Deleted."""
    run = snapshot.run
    return tuple(
        with_status(w, WorkloadStatus.DELETED, w.reason)
        for w in snapshot.workloads
        if w.status.live and not (only_stale and w.attempt == run.attempt)
    )


def with_status(workload: Workload, status: WorkloadStatus, reason: str) -> Workload:
    """``workload`` with a new status and reason."""
    return replace(workload, status=status, reason=reason)


def run_patch(snapshot: RunSnapshot, **fields: object) -> RunPatch:
    """A patch of the snapshot's run, written only if nobody changed the run since the snapshot."""
    return RunPatch(run_id=snapshot.run.id, expected_version=snapshot.run.version, **fields)  # type: ignore[arg-type]


def advance(
    snapshot: RunSnapshot,
    reason: str,
    fields: dict[str, object] | None = None,
    events: tuple[NewEvent, ...] = (),
) -> RunPatch:
    """End the current stage after ``steps_done`` and start the next one, or finish the run."""
    run, stage = snapshot.run, snapshot.stage
    at = int(fields["steps_done"]) if fields and "steps_done" in fields else run.steps_done
    fields = dict(fields or {}, advance_requested=False)
    updates = [StageUpdate(stage.index, {"end_step": at})]
    if stage.index + 1 >= len(snapshot.stages):
        fields |= {
            "phase": check_transition(run.phase, Phase.SUCCEEDED).value,
            "message": f"finished all {len(snapshot.stages)} stages after {at} steps",
        }
        new = NewEvent("Succeeded", str(fields["message"]), {"steps": at})
        released = release_workloads(snapshot, only_stale=False)
    else:
        released = ()
        following = snapshot.stages[stage.index + 1]
        updates.append(StageUpdate(following.index, {"start_after_step": at}))
        fields |= {
            "stage_index": following.index,
            "message": f"stage {following.index + 1} ({following.name}) from step {at + 1}",
        }
        new = NewEvent(
            "StageChanged",
            f"{stage.name} → {following.name} after step {at} ({reason}): max_response_tokens "
            f"{stage.max_response_tokens} → {following.max_response_tokens}, max_turns "
            f"{stage.max_turns} → {following.max_turns}",
            {"from": stage.index, "to": following.index, "after_step": at, "reason": reason},
        )
    return run_patch(snapshot, run=fields, stages=tuple(updates), workloads=released, events=(*events, new))


def _stale(snapshot: RunSnapshot, attempt: int, step: int) -> bool:
    run = snapshot.run
    return run.phase is not Phase.RUNNING or run.attempt != attempt or run.steps_done != step


def record_step(snapshot: RunSnapshot, plan: StepPlan, outcome: StepOutcome) -> RunPatch | None:
    """The patch for a finished step, or None if the run moved on while the step ran."""
    run = snapshot.run
    if _stale(snapshot, plan.attempt, plan.step - 1):
        return None
    sim_seconds = run.sim_seconds + outcome.seconds
    fields: dict[str, object] = {
        "steps_done": plan.step,
        "sim_seconds": sim_seconds,
        "gpu_busy_seconds": run.gpu_busy_seconds + outcome.gpu_busy_seconds,
        "gpu_held_seconds": run.gpu_held_seconds + outcome.gpu_held_seconds,
        "message": f"step {plan.step} done in stage {plan.stage_index + 1}",
        **cleared_by_step(run, plan.step),
    }
    step = Step(
        run_id=run.id,
        step=plan.step,
        stage_index=plan.stage_index,
        attempt=plan.attempt,
        max_response_tokens=plan.max_response_tokens,
        max_turns=plan.max_turns,
        rollouts=outcome.rollouts,
        generated_tokens=outcome.generated_tokens,
        rollout_seconds=outcome.rollout_seconds,
        train_seconds=outcome.train_seconds,
        preemptions=outcome.preemptions,
        correct=outcome.correct,
        superseded=False,
        engines=tuple(
            {"busy_ratio": round(busy, 4), "kv_free_ratio": round(free, 4)}
            for busy, free in zip(outcome.engine_busy_ratio, outcome.engine_kv_free_ratio, strict=False)
        ),
        queue_peak=outcome.queue_peak,
        turns=outcome.turns,
        tool_calls=outcome.tool_calls,
        tool_errors=outcome.tool_errors,
        reward_sum=outcome.reward_sum,
        infra_masked=outcome.infra_masked,
        stale_dropped=outcome.stale_dropped,
        stale_regenerated=outcome.stale_regenerated,
        weights_version=outcome.weights_version,
    )
    events = [
        NewEvent(
            "StepCompleted",
            f"step {plan.step}: {outcome.rollouts} rollouts, {outcome.generated_tokens} tokens at "
            f"{plan.max_response_tokens} max, rollout {outcome.rollout_seconds:.1f}s + train "
            f"{outcome.train_seconds:.1f}s, {outcome.preemptions} preemption(s)" + _left_out(outcome),
            {"step": plan.step, "attempt": plan.attempt},
        )
    ]
    checkpoint = None
    if plan.checkpoint_after:
        checkpoint = Checkpoint(run.id, plan.step, plan.checkpoint_uri, sim_seconds)
        events.append(
            NewEvent(
                "CheckpointSaved",
                f"checkpoint at step {plan.step}: {plan.checkpoint_uri}",
                {"step": plan.step},
            )
        )
    verdict = after_step(
        run,
        snapshot.stage,
        len(snapshot.stages),
        snapshot.spec.curriculum[plan.stage_index].advance_when,
        step=plan.step,
        checkpointed=plan.checkpoint_after,
        correct=outcome.correct,
        rollouts=outcome.rollouts,
    )
    if verdict.request_advance is not None:
        # The boundary must be checkpointed first: the next pass saves one, then advances.
        fields["advance_requested"] = True
        events.append(
            NewEvent("AdvanceRuleMet", f"step {plan.step}: {verdict.request_advance}", {"step": plan.step})
        )
    if verdict.end_stage is not None:
        patch = advance(snapshot, verdict.end_stage, fields, tuple(events))
    else:
        patch = run_patch(snapshot, run=fields, events=tuple(events))
    patch = replace(patch, step=step, checkpoint=checkpoint)
    if verdict.suspend is not None:
        return suspend(run, snapshot.workloads, verdict.suspend, plan.step, base=patch)
    return patch


def _left_out(outcome: StepOutcome) -> str:
    """``; 2 masked (infrastructure), 3 stale regenerated, 1 stale dropped``, or "" when none were."""
    parts = [
        f"{count} {what}"
        for count, what in (
            (outcome.infra_masked, "masked (infrastructure)"),
            (outcome.stale_regenerated, "stale regenerated"),
            (outcome.stale_dropped, "stale dropped"),
        )
        if count
    ]
    return "; " + ", ".join(parts) if parts else ""


def record_checkpoint(snapshot: RunSnapshot, plan: CheckpointPlan, seconds: float) -> RunPatch | None:
    """A checkpoint taken between steps, then what it was taken for: the stage advance asked for, or
    (a preempted run) nothing more: the run stops at it on the next pass."""
    run = snapshot.run
    if _stale(snapshot, plan.attempt, plan.step):
        return None
    sim_seconds = run.sim_seconds + seconds
    event = NewEvent(
        "CheckpointSaved", f"checkpoint at step {plan.step}: {plan.checkpoint_uri}", {"step": plan.step}
    )
    if run.advance_requested:
        patch = advance(snapshot, "advance requested", {"sim_seconds": sim_seconds}, (event,))
    else:
        patch = run_patch(snapshot, run={"sim_seconds": sim_seconds}, events=(event,))
    checkpoint = Checkpoint(run.id, plan.step, plan.checkpoint_uri, sim_seconds)
    return replace(patch, checkpoint=checkpoint)


def record_filter(snapshot: RunSnapshot, plan: FilterPlan, outcome: FilterOutcome) -> RunPatch | None:
    """Record every problem's pass rate and drop those solved ``threshold`` of ``samples`` times."""
    run = snapshot.run
    if _stale(snapshot, plan.attempt, plan.step) or run.stage_index != plan.stage_index:
        return None
    active = [p for p in range(snapshot.spec.dataset.problems) if p not in plan.dropped_problems]
    kept, dropped = split_by_filter(outcome.correct, plan.threshold, active)
    dropped_set = set(dropped)
    problems = tuple(
        ProblemResult(
            plan.stage_index, problem, plan.samples, outcome.correct.get(problem, 0), problem in dropped_set
        )
        for problem in active
    )
    stage = snapshot.stage
    message = (
        f"{stage.name} entry filter: {len(active)} → {len(kept)} problems "
        f"({len(dropped)} solved {plan.threshold} of {plan.samples} samples)"
    )
    return run_patch(
        snapshot,
        run={
            "sim_seconds": run.sim_seconds + outcome.seconds,
            "gpu_busy_seconds": run.gpu_busy_seconds + outcome.gpu_busy_seconds,
            "gpu_held_seconds": run.gpu_held_seconds + outcome.gpu_held_seconds,
            "message": message,
        },
        stages=(StageUpdate(stage.index, {"problems_in": len(active), "problems_kept": len(kept)}),),
        problems=problems,
        events=(NewEvent("ProblemsFiltered", message, {"in": len(active), "kept": len(kept)}),),
    )

"""What a user's command changes, as pure functions returning one ``RunPatch`` each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from orchestrator.core.lifecycle import check_transition
from orchestrator.errors import IllegalTransition
from orchestrator.records import NewEvent, Phase, Run, RunPatch, Stage, Workload, WorkloadStatus

__all__ = ["cancel", "request_advance", "resume"]


def _released(workloads: Sequence[Workload], reason: str) -> tuple[Workload, ...]:
    return tuple(replace(w, status=WorkloadStatus.DELETED, reason=reason) for w in workloads if w.status.live)


def cancel(run: Run, workloads: Sequence[Workload]) -> RunPatch:
    """Cancel a run and release every workload it holds, in the same transaction."""
    check_transition(run.phase, Phase.CANCELLED)
    message = f"cancelled by user at step {run.steps_done}"
    return RunPatch(
        run_id=run.id,
        expected_version=run.version,
        run={"phase": Phase.CANCELLED.value, "message": message},
        workloads=_released(workloads, "run cancelled"),
        events=(NewEvent("Cancelled", message, {"from": run.phase.value}),),
    )


def resume(run: Run, workloads: Sequence[Workload], last_checkpoint: int) -> RunPatch:
    """Resume a Suspended or Failed run from its last checkpoint with a fresh attempt."""
    check_transition(run.phase, Phase.RESUMING)
    message = f"resuming from the checkpoint at step {last_checkpoint} as attempt {run.attempt + 1}"
    return RunPatch(
        run_id=run.id,
        expected_version=run.version,
        run={
            "phase": Phase.RESUMING.value,
            "attempt": run.attempt + 1,
            "steps_done": last_checkpoint,
            "resume_step": last_checkpoint,
            "suspend_requested": False,
            "failures": 0,
            "message": message,
        },
        workloads=_released(workloads, "run resumed"),
        supersede_steps_after=last_checkpoint,
        events=(
            NewEvent("ResumeRequested", message, {"from": run.phase.value, "resume_step": last_checkpoint}),
        ),
    )


def request_advance(run: Run, stages: Sequence[Stage]) -> RunPatch:
    """Ask the controller to end the current stage at the next step boundary."""
    if run.phase.terminal:
        raise IllegalTransition(f"cannot advance the stage of a {run.phase.value} run; it has finished")
    current = stages[run.stage_index]
    if run.stage_index + 1 >= len(stages):
        raise IllegalTransition(
            f"run {run.id} is in its last stage ({current.name}); there is no stage to advance to"
        )
    if run.advance_requested:
        raise IllegalTransition(f"run {run.id}: a stage advance is already pending; wait for it")
    following = stages[run.stage_index + 1]
    message = (
        f"advance requested: {current.name} → {following.name} after step {run.steps_done} "
        f"(max_response_tokens {current.max_response_tokens} → {following.max_response_tokens} "
        "from the next step on)"
    )
    return RunPatch(
        run_id=run.id,
        expected_version=run.version,
        run={"advance_requested": True, "message": message},
        events=(NewEvent("AdvanceRequested", message, {"from": current.index, "to": following.index}),),
    )

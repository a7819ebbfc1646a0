"""What a command changes (a user's, or a rule's: the idle policy, later preemption), as pure functions
returning one ``RunPatch`` each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from enum import Enum

from orchestrator.core.lifecycle import check_transition
from orchestrator.errors import IllegalTransition
from orchestrator.records import NewEvent, Phase, Run, RunPatch, Stage, Workload, WorkloadStatus

__all__ = ["SuspendReason", "cancel", "request_advance", "request_suspend", "resume", "suspend"]


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
        clear_preemption=True,
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
            "suspend_requested": False,
            "suspend_reason": "",
            "admitted_at": None,  # back through its queue's admission
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


class SuspendReason(str, Enum):
    """Why a run is suspended: each says so in the run's message and its ``Suspended`` event."""

    IDLE = "idle"  # its GPUs sat idle and the idle policy says suspend
    USER = "user"
    PREEMPTED = "preempted"  # another run needs its GPUs: it waits in its queue to come back


SUSPEND_WHY = {
    SuspendReason.IDLE: "its GPUs sat idle (idle.action = suspend)",
    SuspendReason.USER: "suspended by user",
    SuspendReason.PREEMPTED: "preempted for another run; back in its queue",
}


def request_suspend(run: Run) -> RunPatch | None:
    """Ask for a suspend at the run's next checkpoint (the idle policy's ask); None if nothing to ask:
    the run has finished, is Suspended already, or the ask is pending.

    The schema keeps the ask as one flag, without a reason: the after-step rule suspends it as ``IDLE``."""
    if run.phase.terminal or run.phase is Phase.SUSPENDED or run.suspend_requested:
        return None
    return RunPatch(run_id=run.id, expected_version=run.version, run={"suspend_requested": True})


def suspend(
    run: Run,
    workloads: Sequence[Workload],
    reason: SuspendReason,
    step: int,
    *,
    base: RunPatch | None = None,
    why: str = "",
    data: dict[str, object] | None = None,
) -> RunPatch:
    """Suspend a run at the checkpoint of ``step`` and release every workload it holds (each keeps its
    reason) and its quota. ``base``: the patch this suspend completes in the same transaction (the step's
    own record); ``why``: words the message, instead of the reason's own."""
    check_transition(run.phase, Phase.SUSPENDED)
    base = base or RunPatch(run_id=run.id, expected_version=run.version)
    message = f"suspended at the checkpoint of step {step}: {why or SUSPEND_WHY[reason]}"
    released = tuple(replace(w, status=WorkloadStatus.DELETED) for w in workloads if w.status.live)
    fields = {
        "phase": Phase.SUSPENDED.value,
        "suspend_requested": False,
        "suspend_reason": reason.value,
        "admitted_at": None,
        "message": message,
    }
    event = "Preempted" if reason is SuspendReason.PREEMPTED else "Suspended"
    return replace(
        base,
        run={**base.run, **fields},
        workloads=base.workloads + released,
        clear_preemption=base.clear_preemption or reason is SuspendReason.PREEMPTED,
        events=(
            *base.events,
            NewEvent(event, message, {"step": step, "reason": reason.value, **(data or {})}),
        ),
    )

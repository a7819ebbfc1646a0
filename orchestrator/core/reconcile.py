"""The decisions of one reconcile pass over one run, as pure functions of a ``RunSnapshot``.

``decide`` reads the snapshot and returns a ``Decision``: a patch to apply (one SQL
transaction) or a piece of work for the executor, never both. After the work is done,
``orchestrator.core.results`` turns its outcome into the patch.
Nothing here reads a clock or performs I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from orchestrator.core.after_step import checkpoint_after
from orchestrator.core.commands import SuspendReason, suspend
from orchestrator.core.failures import count_failure, give_up
from orchestrator.core.feasibility import run_problems
from orchestrator.core.lifecycle import check_transition
from orchestrator.core.members import desired_members, workload_name
from orchestrator.core.results import advance, release_workloads, run_patch, with_status
from orchestrator.core.snapshot import ObservedWorkload, RunSnapshot
from orchestrator.core.work import (
    CheckpointPlan,
    FilterPlan,
    StepPlan,
    Work,
)
from orchestrator.records import (
    NewEvent,
    Phase,
    RunPatch,
    Workload,
    WorkloadStatus,
)
from orchestrator.spec import RunSpec

__all__ = [
    "Decision",
    "cluster_diff",
    "decide",
    "desired_members",
    "workload_name",
]


@dataclass(frozen=True)
class Decision:
    patch: RunPatch | None = None
    work: Work | None = None


def run_checkpoint_dir(spec: RunSpec, run_id: str) -> str:
    """The run's own checkpoint directory: runs of one spec never share (or resume from) each other's."""
    return f"{spec.checkpoint.uri.rstrip('/')}/{run_id}"


def checkpoint_uri(spec: RunSpec, run_id: str, step: int) -> str:
    return f"{run_checkpoint_dir(spec, run_id)}/step-{step:06d}"


def _failures(snapshot: RunSnapshot) -> list[tuple[Workload, str]]:
    """Members of the current attempt that failed or vanished after they were seen running."""
    failed = []
    for workload in snapshot.current_workloads:
        seen: ObservedWorkload | None = snapshot.observed.get(workload.name)
        if seen is not None and seen.phase == "Failed":
            failed.append((workload, seen.reason or "Failed"))
        elif seen is None and workload.status is WorkloadStatus.RUNNING:
            failed.append((workload, "Lost: no longer in the cluster"))
    return failed


def decide(snapshot: RunSnapshot) -> Decision:
    """One level-triggered step for one run: what to change, or what work to do next."""
    run = snapshot.run
    if run.phase.terminal or run.phase is Phase.SUSPENDED:
        released = release_workloads(snapshot, only_stale=False)
        if released:
            return Decision(
                run_patch(
                    snapshot,
                    workloads=released,
                    events=(
                        NewEvent(
                            "Released", f"released {len(released)} workload(s) of a {run.phase.value} run"
                        ),
                    ),
                )
            )
        return Decision()
    if run.phase in (Phase.PENDING, Phase.RESUMING) and not snapshot.current_workloads:
        problems = run_problems(snapshot.spec)  # what `orch validate` refuses; the spec skipped it
        if problems:
            return Decision(_refuse(snapshot, problems))

    stale = release_workloads(snapshot, only_stale=True)
    failures = _failures(snapshot)
    if failures:
        return Decision(_gang_failure(snapshot, failures, stale))
    if snapshot.preemption is not None and (
        not snapshot.current_workloads or run.steps_done <= snapshot.last_checkpoint
    ):
        return Decision(_stop_for_preemption(snapshot))  # nothing to save first
    if not snapshot.current_workloads:  # the admission pass places it (orchestrator.core.admission)
        return Decision(run_patch(snapshot, workloads=stale) if stale else None)
    if stale:
        return Decision(run_patch(snapshot, workloads=stale))

    starting = [
        w
        for w in snapshot.current_workloads
        if w.status is WorkloadStatus.PENDING
        and (seen := snapshot.observed.get(w.name)) is not None
        and seen.phase == "Running"
    ]
    waiting = [
        w
        for w in snapshot.current_workloads
        if (seen := snapshot.observed.get(w.name)) is None or seen.phase != "Running"
    ]
    if starting or waiting:
        running = tuple(
            replace(w, status=WorkloadStatus.RUNNING, node=snapshot.observed[w.name].node) for w in starting
        )
        return Decision(run_patch(snapshot, workloads=running) if running else None)

    if run.phase in (Phase.ADMITTED, Phase.RESUMING):
        check_transition(run.phase, Phase.RUNNING)
        how = "started" if run.phase is Phase.ADMITTED else f"resumed from step {snapshot.last_checkpoint}"
        message = f"attempt {run.attempt}: {how}, stage {run.stage_index + 1}"
        return Decision(
            run_patch(
                snapshot,
                run={"phase": Phase.RUNNING.value, "message": message},
                events=(
                    NewEvent(
                        "Running", message, {"attempt": run.attempt, "resume_step": snapshot.last_checkpoint}
                    ),
                ),
            )
        )
    return _next_work(snapshot)


def _refuse(snapshot: RunSnapshot, problems: Sequence[str]) -> RunPatch:
    """A run that can never run fails at once, naming every reason, and is never placed."""
    message = "the spec can never run: " + "; ".join(problems)
    return run_patch(
        snapshot,
        run={"phase": check_transition(snapshot.run.phase, Phase.FAILED).value, "message": message},
        workloads=release_workloads(snapshot, only_stale=False),
        events=(NewEvent("Failed", message, {"problems": list(problems)}),),
    )


def _gang_failure(
    snapshot: RunSnapshot, failures: Sequence[tuple[Workload, str]], stale: tuple[Workload, ...]
) -> RunPatch:
    run = snapshot.run
    target = Phase.RESUMING
    if run.phase is not Phase.RESUMING:
        check_transition(run.phase, target)
    reasons = "; ".join(f"{w.name}: {reason}" for w, reason in failures)
    reasons_by_name = {w.name: reason for w, reason in failures}
    failed_names = set(reasons_by_name)
    torn_down = tuple(
        with_status(
            w,
            WorkloadStatus.FAILED if w.name in failed_names else WorkloadStatus.DELETED,
            reasons_by_name.get(w.name, "gang torn down"),
        )
        for w in snapshot.current_workloads
    )
    resume = snapshot.last_checkpoint
    lost = run.steps_done - resume
    count, max_attempts = count_failure(run), snapshot.spec.scheduling.max_attempts
    if count.failures >= max_attempts:
        fields, failed = give_up(run, count, f"gang failed at attempt {run.attempt}: {reasons}", max_attempts)
        gang_failed = NewEvent("GangFailed", str(fields["message"]), {"failed": sorted(failed_names)})
        return run_patch(snapshot, run=fields, workloads=stale + torn_down, events=(gang_failed, failed))
    message = (
        f"gang failed at attempt {run.attempt} ({reasons}); recreating it at attempt {run.attempt + 1} "
        f"from the checkpoint at step {resume} ({lost} step(s) to redo; failure {count.failures} of "
        f"{max_attempts} at step {count.step})"
    )
    return run_patch(
        snapshot,
        run={
            "phase": target.value,
            "attempt": run.attempt + 1,
            "steps_done": resume,
            "message": message,
            **count.fields(f"gang failed: {reasons}"),
        },
        workloads=stale + torn_down,
        supersede_steps_after=resume,
        events=(
            NewEvent(
                "GangFailed",
                message,
                {"failed": sorted(failed_names), "resume_step": resume, "lost_steps": lost},
            ),
        ),
    )


def _stop_for_preemption(snapshot: RunSnapshot) -> RunPatch:
    """Suspend a preempted run at its last checkpoint, releasing its GPUs and quota: it waits in its
    queue again and resumes from that checkpoint."""
    run, preemption = snapshot.run, snapshot.preemption
    assert preemption is not None
    why = f"preempted for run {preemption.by} ({preemption.reason}); back in queue {run.queue}"
    return suspend(
        run,
        snapshot.workloads,
        SuspendReason.PREEMPTED,
        snapshot.last_checkpoint,
        base=run_patch(snapshot, run={"steps_done": snapshot.last_checkpoint}),
        why=why,
        data={"by": preemption.by, "queue": run.queue},
    )


def _next_work(snapshot: RunSnapshot) -> Decision:
    run, spec, stage = snapshot.run, snapshot.spec, snapshot.stage
    if snapshot.preemption is not None:  # stop at a checkpoint: take one first if steps would be lost
        if snapshot.last_checkpoint < run.steps_done:
            return Decision(
                work=CheckpointPlan(
                    run.id, run.steps_done, run.attempt, checkpoint_uri(spec, run.id, run.steps_done)
                )
            )
        return Decision(_stop_for_preemption(snapshot))
    if run.advance_requested:
        if snapshot.last_checkpoint < run.steps_done:
            return Decision(
                work=CheckpointPlan(
                    run.id, run.steps_done, run.attempt, checkpoint_uri(spec, run.id, run.steps_done)
                )
            )
        return Decision(advance(snapshot, reason="advance requested"))
    entry_filter = spec.curriculum[stage.index].entry_filter
    if entry_filter is not None and stage.problems_kept is None:
        return Decision(
            work=FilterPlan(
                run.id,
                stage.index,
                run.attempt,
                run.steps_done,
                entry_filter.samples,
                entry_filter.threshold,
                snapshot.dropped_problems,
            )
        )
    step = run.steps_done + 1
    return Decision(
        work=StepPlan(
            run_id=run.id,
            step=step,
            stage_index=stage.index,
            attempt=run.attempt,
            max_response_tokens=stage.max_response_tokens,
            max_turns=stage.max_turns,
            checkpoint_after=checkpoint_after(stage, step, spec.checkpoint.every_steps),
            checkpoint_uri=checkpoint_uri(spec, run.id, step),
            dropped_problems=snapshot.dropped_problems,
        )
    )


def cluster_diff(
    desired: Sequence[Workload], observed: Sequence[ObservedWorkload]
) -> tuple[list[Workload], list[str]]:
    """What to create (recorded, never seen) and delete (seen, no longer wanted) in the cluster.

    A workload recorded as Running but missing is not recreated here: that is a gang failure,
    which ``decide`` turns into a new attempt.
    """
    seen = {w.name for w in observed}
    wanted = {w.name for w in desired if w.status.live}
    creates = [w for w in desired if w.status is WorkloadStatus.PENDING and w.name not in seen]
    deletes = sorted(name for name in seen if name not in wanted)
    return creates, deletes

"""The run lifecycle as data: the state a run starts in, and one pure check of every transition.

    Pending ─▶ Admitted ─▶ Running(stage k) ─▶ Succeeded
       │          │          │   ▲
       │          │          ▼   │
       │          │       Resuming ◀── Suspended
       └──────────┴─────────┴─▶ Failed | Cancelled

A failed gang member sends a run from Running to Resuming (new attempt from the last
checkpoint); ``orch resume`` sends a Suspended or Failed run to Resuming.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import IllegalTransition
from orchestrator.records import NewEvent, Phase, Run, Stage
from orchestrator.spec import RunSpec

__all__ = ["ALLOWED", "NewRun", "check_transition", "initial_run"]

P = Phase
ALLOWED: dict[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.ADMITTED, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.ADMITTED: frozenset({P.RUNNING, P.RESUMING, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.RUNNING: frozenset({P.RESUMING, P.SUSPENDED, P.SUCCEEDED, P.FAILED, P.CANCELLED}),
    P.RESUMING: frozenset({P.RUNNING, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.SUSPENDED: frozenset({P.RESUMING, P.CANCELLED}),
    P.FAILED: frozenset({P.RESUMING}),
    P.SUCCEEDED: frozenset(),
    P.CANCELLED: frozenset(),
}


def check_transition(current: Phase, target: Phase) -> Phase:
    """Return ``target`` if the lifecycle allows ``current → target``, else raise naming both."""
    if target not in ALLOWED[current]:
        options = ", ".join(sorted(phase.value for phase in ALLOWED[current])) or "none: it is final"
        raise IllegalTransition(
            f"illegal transition {current.value} → {target.value}; "
            f"from {current.value} a run may go to {options}"
        )
    return target


@dataclass(frozen=True)
class NewRun:
    """A submitted run as it is first stored: Pending, its stages, the event that says so."""

    run: Run
    stages: tuple[Stage, ...]
    event: NewEvent


def initial_run(spec: RunSpec, run_id: str, now: float, *, external_ref: str | None = None) -> NewRun:
    """The state of a run just submitted from ``spec``: Pending in stage 1, nothing done, no lease.

    ``external_ref`` names the object the run mirrors (a TrainingRun's namespace/name/uid), if any."""
    run = Run(
        id=run_id,
        name=spec.name,
        spec=spec.model_dump(mode="json"),
        phase=Phase.PENDING,
        stage_index=0,
        steps_done=0,
        attempt=0,
        advance_requested=False,
        sim_seconds=0.0,
        gpu_busy_seconds=0.0,
        gpu_held_seconds=0.0,
        message="waiting for a controller",
        version=1,
        queue=spec.scheduling.queue,
        priority=spec.scheduling.priority,
        created_at=now,
        updated_at=now,
        external_ref=external_ref,
    )
    stages = tuple(
        Stage(
            run_id=run_id,
            index=index,
            name=stage.name or f"stage-{index + 1}",
            max_response_tokens=stage.max_response_tokens,
            max_turns=stage.max_turns,
            planned_steps=stage.steps,
            start_after_step=0 if index == 0 else None,
            end_step=None,
        )
        for index, stage in enumerate(spec.curriculum)
    )
    first = spec.curriculum[0]
    event = NewEvent(
        "Submitted",
        f"run {run_id} submitted: {len(spec.curriculum)} stages, {spec.total_steps} steps, "
        f"stage 1 at {first.max_response_tokens} response tokens",
    )
    return NewRun(run, stages, event)

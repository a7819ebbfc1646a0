"""The SDK behind ``orch``: every command as one function over a ``Store``; ``cli.py`` only prints."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core import commands
from orchestrator.core.curriculum import last_checkpoint
from orchestrator.core.feasibility import run_problems
from orchestrator.errors import SpecError
from orchestrator.records import Checkpoint, Event, Run, Stage, Step, Workload
from orchestrator.spec import RunSpec, load_spec
from orchestrator.state.store import Store
from orchestrator.views import iso_time, lease_holder

__all__ = [
    "OtherRun",
    "RunReport",
    "advance_stage",
    "cancel_run",
    "events",
    "other_runs",
    "report",
    "resume_run",
    "submit",
    "validate",
]


@dataclass(frozen=True)
class RunReport:
    """Everything ``orch status`` shows about one run."""

    run: Run
    stages: list[Stage]
    steps: list[Step]
    checkpoints: list[Checkpoint]
    workloads: list[Workload]
    superseded_steps: int
    idle_gpu_seconds: dict[str, float]
    utilization: list[tuple[float, float, float]]

    @property
    def stage_changes(self) -> int:
        return sum(1 for stage in self.stages if stage.started) - 1

    def as_dict(self, now: float | None = None) -> dict[str, object]:
        """Plain data for ``-o json|yaml``; ``controller`` is the lease holder at ``now`` (default: now)."""
        run = self.run
        return {
            "id": run.id,
            "name": run.name,
            "phase": run.phase.value,
            "stage": run.stage_index + 1,
            "stage_name": self.stages[run.stage_index].name,
            "steps_done": run.steps_done,
            "steps_planned": sum(s.planned_steps or 0 for s in self.stages),
            "attempt": run.attempt,
            "checkpoints": [c.step for c in self.checkpoints],
            "last_checkpoint": self.checkpoints[-1].uri if self.checkpoints else None,
            "stage_changes": self.stage_changes,
            "superseded_steps": self.superseded_steps,
            "gpu_busy_fraction": round(run.gpu_busy_fraction, 4),
            "idle_gpu_hours": round(sum(self.idle_gpu_seconds.values()) / 3600, 3),
            "idle_gpu_hours_by_role": {
                role: round(s / 3600, 3) for role, s in sorted(self.idle_gpu_seconds.items())
            },
            "utilization_history": [
                {"at": start, "busy_ratio": round(busy / held, 4) if held else None}
                for start, held, busy in self.utilization
            ],
            "simulated_seconds": round(run.sim_seconds, 1),
            "message": run.message,
            "controller": lease_holder(run, time.time() if now is None else now),
            "lease_owner": run.lease_owner,
            "lease_expires_at": iso_time(run.lease_expires_at) if run.lease_owner else None,
            "last_step_engines": [
                {"engine": index, **stats} for index, stats in enumerate(self.steps[-1].engines)
            ]
            if self.steps
            else [],
            "last_step_queue_peak": self.steps[-1].queue_peak if self.steps else 0,
            "stages": [
                {
                    "name": s.name,
                    "max_response_tokens": s.max_response_tokens,
                    "max_turns": s.max_turns,
                    "planned_steps": s.planned_steps,
                    "start_after_step": s.start_after_step,
                    "end_step": s.end_step,
                    "problems_in": s.problems_in,
                    "problems_kept": s.problems_kept,
                }
                for s in self.stages
            ],
            "workloads": [
                {"name": w.name, "role": w.role, "node": w.node, "gpus": w.gpus, "status": w.status.value}
                for w in self.workloads
                if w.status.live
            ],
        }


def validate(path: str | Path) -> RunSpec:
    """Parse and check a spec without storing anything: refuses what the controller would refuse."""
    spec = load_spec(path)
    problems = run_problems(spec)
    if problems:
        raise SpecError(*(f"{path}: {problem}" for problem in problems))
    return spec


def submit(store: Store, path: str | Path) -> Run:
    return store.create_run(validate(path))


def report(store: Store, ref: str) -> RunReport:
    run = store.get_run(ref)
    all_steps = store.steps(run.id, include_superseded=True)
    return RunReport(
        run=run,
        stages=store.stages(run.id),
        steps=[s for s in all_steps if not s.superseded],
        checkpoints=store.checkpoints(run.id),
        workloads=store.workloads(run.id),
        superseded_steps=sum(1 for s in all_steps if s.superseded),
        idle_gpu_seconds=store.run_idle_seconds(run.id),
        utilization=store.run_utilization(run.id),
    )


@dataclass(frozen=True)
class OtherRun:
    """Another unfinished run, seen from one run: who drives it and the GPUs it holds in that run's pools."""

    run: Run
    controller: str | None  # the controller holding its lease; None: nobody drives it now
    gpus: int


def other_runs(store: Store, run_id: str) -> list[OtherRun]:
    """Every unfinished run but ``run_id``, oldest first: what ``orch submit --wait`` leaves to others."""
    pools = set(RunSpec.model_validate(store.get_run(run_id).spec).pools)
    held: dict[str, int] = {}
    for workload in store.workloads(live_only=True):
        if workload.pool in pools:
            held[workload.run_id] = held.get(workload.run_id, 0) + workload.gpus
    owners = store.lease_owners()
    return [
        OtherRun(run, owners.get(run.id), held.get(run.id, 0))
        for run in store.list_runs(active_only=True)
        if run.id != run_id
    ]


def events(store: Store, ref: str, after_id: int = 0) -> list[Event]:
    return store.events(store.get_run(ref).id, after_id=after_id)


def cancel_run(store: Store, ref: str) -> Run:
    run = store.get_run(ref)
    return store.apply(commands.cancel(run, store.workloads(run.id)))


def resume_run(store: Store, ref: str) -> Run:
    run = store.get_run(ref)
    last = last_checkpoint((c.step for c in store.checkpoints(run.id)), run.steps_done)
    return store.apply(commands.resume(run, store.workloads(run.id), last))


def advance_stage(store: Store, ref: str) -> Run:
    run = store.get_run(ref)
    return store.apply(commands.request_advance(run, store.stages(run.id)))

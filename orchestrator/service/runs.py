"""Runs: every ``orch`` command on runs, one function over a ``Store``; ``orchestrator.render`` shows them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core import commands
from orchestrator.core.curriculum import last_checkpoint
from orchestrator.core.feasibility import run_problems
from orchestrator.core.inventory_fit import inventory_problems
from orchestrator.errors import SpecError
from orchestrator.records import (
    Checkpoint,
    Event,
    GpuReading,
    PreemptionRecord,
    Run,
    Stage,
    Step,
    WaitRecord,
    Workload,
)
from orchestrator.sim.cluster import SimCluster
from orchestrator.spec import RunSpec, load_spec
from orchestrator.spec.inventory import CLUSTER_FILE_ENV, load_cluster_file
from orchestrator.state.store import Store
from orchestrator.telemetry.latest import latest_readings

__all__ = [
    "OtherRun",
    "RunReport",
    "advance_stage",
    "cancel_run",
    "events",
    "gpu_readings",
    "inventory_check",
    "list_runs",
    "other_runs",
    "planned_steps",
    "report",
    "resume_run",
    "submit",
    "upgrade_database",
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
    wait: WaitRecord | None = None  # waiting in its queue: place in line and why (last admission pass)
    preemption: PreemptionRecord | None = None  # asked to stop at its next checkpoint: by whom and why
    waited_s: float | None = None  # how long it has waited, in the controller's clock (virtual on sim)

    @property
    def stage_changes(self) -> int:
        return sum(1 for stage in self.stages if stage.started) - 1


def validate(path: str | Path) -> RunSpec:
    """Parse and check a spec without storing anything: refuses what the controller would refuse."""
    spec = load_spec(path)
    problems = [*run_problems(spec), *inventory_check(spec)]
    if problems:
        raise SpecError(*(f"{path}: {problem}" for problem in problems))
    return spec


def inventory_check(spec: RunSpec) -> list[str]:
    """The run against the simulated cluster file, when one is set (``ORCH_SIM_CLUSTER``); a real cluster's
    inventory is checked by its controller, which reads the nodes."""
    path = os.environ.get(CLUSTER_FILE_ENV, "").strip()
    if not path:
        return []
    inventory = load_cluster_file(path)
    nodes = SimCluster.from_inventory(inventory).list_nodes()
    return inventory_problems(spec, nodes, {name: pool.gpu_type for name, pool in inventory.pools.items()})


def submit(store: Store, spec: RunSpec) -> Run:
    """Store a spec that ``validate`` accepted as a new Pending run."""
    return store.create_run(spec)


def list_runs(store: Store, queue: str | None = None) -> list[Run]:
    """Every run, oldest first; with ``queue``, only the runs that name it."""
    runs = store.list_runs()
    return runs if queue is None else [run for run in runs if run.queue == queue]


def planned_steps(store: Store, run_id: str) -> int:
    """The steps a run's stages plan in all."""
    return sum(s.planned_steps or 0 for s in store.stages(run_id))


def gpu_readings(store: object) -> list[GpuReading]:
    """The newest sample of every GPU with the time it was received (``[]`` for a store without telemetry)."""
    return latest_readings(store)


def upgrade_database(url: str | None) -> str:
    """Apply the migrations up to the newest schema; the revision now in force."""
    store = Store(url, migrate=False)
    try:
        return store.upgrade()
    finally:
        store.close()


def report(store: Store, ref: str) -> RunReport:
    run = store.get_run(ref)
    all_steps = store.steps(run.id, include_superseded=True)
    wait = store.waits().get(run.id)
    return RunReport(
        run=run,
        stages=store.stages(run.id),
        steps=[s for s in all_steps if not s.superseded],
        checkpoints=store.checkpoints(run.id),
        workloads=store.workloads(run.id),
        superseded_steps=sum(1 for s in all_steps if s.superseded),
        idle_gpu_seconds=store.run_idle_seconds(run.id),
        utilization=store.run_utilization(run.id),
        wait=wait,
        preemption=store.preemption(run.id),
        waited_s=max(0.0, store.admission_clock() - wait.since) if wait is not None else None,
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

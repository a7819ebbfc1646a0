"""The controller: the imperative shell around ``orchestrator.core``.

Every pass is level-triggered: observe (SQL + cluster), decide (pure core), act (one SQL
transaction, then idempotent cluster calls). It keeps nothing in memory that SQL or the
cluster does not also hold, so it may be SIGKILLed at any line and simply started again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.backends.base import (
    ClusterBackend,
    ExecutionInterrupted,
    RunSource,
    TelemetryFeed,
    TrainingExecutor,
    WorkInProgress,
)
from orchestrator.core.attribution import attribute_samples
from orchestrator.core.curriculum import last_checkpoint
from orchestrator.core.idle import account_idle, idle_consequences
from orchestrator.core.reconcile import cluster_diff, decide, record_checkpoint, record_filter, record_step
from orchestrator.core.snapshot import ObservedWorkload, RunSnapshot
from orchestrator.core.work import CheckpointPlan, FilterPlan, StepPlan, Work
from orchestrator.errors import ConflictError, NotFound
from orchestrator.records import GpuSample, RunPatch
from orchestrator.spec import IdlePolicySpec, RunSpec
from orchestrator.state.store import Store

__all__ = ["Controller", "PassReport", "default_identity"]

log = logging.getLogger("orch.controller")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class PassReport:
    runs: int
    changes: int

    @property
    def progressed(self) -> bool:
        return self.changes > 0


class Controller:
    """Reconciles every unfinished run it holds the lease for."""

    def __init__(
        self,
        store: Store,
        cluster: ClusterBackend,
        executor: TrainingExecutor,
        *,
        identity: str | None = None,
        lease_seconds: float = 15.0,
        sources: Sequence[RunSource] = (),
        telemetry: TelemetryFeed | None = None,
        only: frozenset[str] | None = None,
    ) -> None:
        """``only``: reconcile just these runs (``orch submit --wait`` drives its own run, no other)."""
        self.store = store
        self.cluster = cluster
        self.executor = executor
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.sources = tuple(sources)
        self.telemetry = telemetry
        self.only = only
        self._latest_gpus: list[GpuSample] = []
        self._cluster_version = 0

    # ---- one pass ---------------------------------------------------------------------------

    def reconcile_once(self) -> PassReport:
        changes = sum(source.pull(self.store) for source in self.sources)
        run_ids = self.store.acquire_leases(self.identity, self.lease_seconds, only=self.only)
        self._latest_gpus = self.store.latest_gpu_samples() if run_ids else []
        for run_id in run_ids:
            changes += self._reconcile_run(run_id)
        changes += self._delete_orphans()
        changes += self.cluster.sweep({run.id for run in self.store.list_runs() if run.phase.terminal})
        changes += sum(source.publish(self.store) for source in self.sources)
        self._ingest_telemetry()
        return PassReport(runs=len(run_ids), changes=changes)

    def _ingest_telemetry(self) -> None:
        """Store new GPU samples, account idle GPUs and act on the runs' idle policies."""
        if self.telemetry is None:
            return
        samples = self.telemetry.drain()
        if not samples:
            return
        samples = attribute_samples(samples, self.store.workloads(live_only=True))
        policies: dict[str, IdlePolicySpec | None] = {}

        def policy_of(run_id: str) -> IdlePolicySpec | None:
            if run_id not in policies:
                try:
                    policies[run_id] = RunSpec.model_validate(self.store.get_run(run_id).spec).idle
                except NotFound:
                    policies[run_id] = None
            return policies[run_id]

        update = account_idle(self.store.idle_stretches(), samples, policy_of)
        events, suspend = idle_consequences(update, policy_of)
        self.store.record_telemetry(samples, update, events, suspend)

    def _snapshot(self, run_id: str) -> RunSnapshot:
        run = self.store.get_run(run_id)
        spec = RunSpec.model_validate(run.spec)
        self.cluster.prepare_pools(spec.pools)
        live = self.store.workloads(live_only=True)
        used: dict[str, int] = defaultdict(int)
        for workload in live:
            if workload.run_id != run_id:
                used[workload.node] += workload.gpus
        checkpoints = self.store.checkpoints(run_id)
        observed = {w.name: w for w in self.cluster.list_workloads(run_id)}
        return RunSnapshot(
            run=run,
            spec=spec,
            stages=tuple(self.store.stages(run_id)),
            workloads=tuple(self.store.workloads(run_id)),
            observed=observed,
            nodes=tuple(self.cluster.list_nodes()),
            used_by_others=dict(used),
            last_checkpoint=last_checkpoint((c.step for c in checkpoints), run.steps_done),
            dropped_problems=self.store.dropped_problems(run_id),
            gpus=tuple(sample for sample in self._latest_gpus if sample.run == run_id),
        )

    def _reconcile_run(self, run_id: str) -> int:
        snapshot = self._snapshot(run_id)
        decision = decide(snapshot)
        changed = 0
        if decision.patch:
            changed += self._apply(decision.patch)
        elif decision.work is not None:
            changed += self._do(snapshot, decision.work)
        return changed + self._sync_cluster(run_id)

    def _apply(self, patch: RunPatch | None) -> int:
        if not patch:
            return 0
        try:
            self.store.apply(patch)
        except ConflictError as error:
            log.info("%s; deciding again on the next pass", error)
            return 0
        return 1

    def _do(self, snapshot: RunSnapshot, work: Work) -> int:
        spec = snapshot.spec
        try:
            if isinstance(work, StepPlan):
                patch = record_step(snapshot, work, self.executor.execute_step(spec, work))
            elif isinstance(work, CheckpointPlan):
                patch = record_checkpoint(snapshot, work, self.executor.save_checkpoint(spec, work))
            elif isinstance(work, FilterPlan):
                patch = record_filter(snapshot, work, self.executor.evaluate_problems(spec, work))
            else:  # pragma: no cover - Work is a closed union
                raise TypeError(f"unknown work {work!r}")
        except ExecutionInterrupted as error:
            log.info("%s", error)
            return 1
        except WorkInProgress:
            return 0
        return self._apply(patch)

    def _sync_cluster(self, run_id: str) -> int:
        creates, deletes = cluster_diff(self.store.workloads(run_id), self.cluster.list_workloads(run_id))
        for workload in creates:
            self.cluster.create_workload(workload)
        for name in deletes:
            self.cluster.delete_workload(name)
        return len(creates) + len(deletes)

    def _delete_orphans(self) -> int:
        """Delete cluster workloads that SQL no longer wants (finished, cancelled or unknown runs)."""
        wanted = {w.name for w in self.store.workloads(live_only=True)}
        orphans: list[ObservedWorkload] = [w for w in self.cluster.list_workloads() if w.name not in wanted]
        for workload in orphans:
            self.cluster.delete_workload(workload.name)
        return len(orphans)

    # ---- the loop ---------------------------------------------------------------------------

    def run(
        self,
        *,
        until: Callable[[], bool] = lambda: False,
        stop: threading.Event | None = None,
        idle_wait_s: float = 0.5,
        after_pass: Callable[[], None] = lambda: None,
    ) -> None:
        """Reconcile until ``until()`` is true or ``stop`` is set; idle passes wait on the cluster's watch."""
        stop = stop or threading.Event()
        try:
            while not stop.is_set() and not until():
                report = self.reconcile_once()
                after_pass()
                if not report.progressed:
                    self._cluster_version, _ = self.cluster.watch(self._cluster_version, idle_wait_s)
        finally:
            self.store.release_leases(self.identity)

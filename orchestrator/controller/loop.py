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
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from orchestrator.backends.base import (
    ClusterBackend,
    ExecutionInterrupted,
    GangCreator,
    RunSource,
    TelemetryFeed,
    TrainingExecutor,
    WorkInProgress,
    never_transient,
)
from orchestrator.controller.admission import Admitter
from orchestrator.controller.clock import Clock, WallClock
from orchestrator.core import commands
from orchestrator.core.admit import waits_in_queue
from orchestrator.core.attribution import attribute_samples
from orchestrator.core.curriculum import last_checkpoint
from orchestrator.core.failures import allowed_attempts, one_line, work_failed
from orchestrator.core.idle import account_idle, idle_consequences
from orchestrator.core.ports import ports_in_use
from orchestrator.core.queueing import AdmissionSettings
from orchestrator.core.reconcile import cluster_diff, decide
from orchestrator.core.results import record_checkpoint, record_filter, record_step
from orchestrator.core.snapshot import ObservedWorkload, RunSnapshot
from orchestrator.core.work import CheckpointPlan, FilterPlan, StepPlan, Work
from orchestrator.errors import ConflictError, DatabaseUnavailable, NotFound, TransientError
from orchestrator.records import GpuSample, Phase, Run, RunPatch
from orchestrator.spec import IdlePolicySpec, RunSpec
from orchestrator.state.store import Store

__all__ = [
    "DB_OUTAGE_SECONDS",
    "Backoff",
    "Controller",
    "DatabaseOutage",
    "PassReport",
    "default_identity",
    "nothing_to_drive",
    "with_database",
]

log = logging.getLogger("orch.controller")

DB_OUTAGE_SECONDS = 120.0  # how long the loop outlives an unreachable database by default
TELEMETRY_TRIES = 3  # ingests of one batch of samples, should runs change under the suspend requests
T = TypeVar("T")


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class PassReport:
    runs: int
    changes: int
    transient: str = ""  # the last error of the environment this pass met (retried after a backoff)

    @property
    def progressed(self) -> bool:
        return self.changes > 0


class Backoff:
    """Exponential delays from ``first`` to ``most`` seconds; ``reset`` after a success."""

    def __init__(self, first: float = 0.25, most: float = 5.0) -> None:
        self.first, self.most = first, most
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next = self.first


class DatabaseOutage:
    """Waits out an unavailable database with backoff; gives up ``limit_s`` seconds after it went away."""

    def __init__(
        self, limit_s: float = DB_OUTAGE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self.backoff = Backoff()
        self._since: float | None = None

    def failed(self, error: DatabaseUnavailable, stop: threading.Event) -> None:
        """Wait before the next try, or raise one line once the outage has lasted ``limit_s``."""
        now = self.clock()
        self._since = now if self._since is None else self._since
        left = self._since + self.limit_s - now
        if left <= 0:
            message = (
                f"database {error.where} unreachable for {self.limit_s:g} s; last error: {error.reason}; "
                "check that it is running and that ORCH_DATABASE_URL points at it"
            )
            raise DatabaseUnavailable(error.where, error.reason, message) from error
        delay = min(self.backoff.next(), left)
        log.warning("%s; retrying in %.2g s", error, delay)
        stop.wait(delay)

    def ok(self) -> None:
        self._since = None
        self.backoff.reset()


def nothing_to_drive(store: Store, cluster: ClusterBackend | None = None) -> bool:
    """No run is left that a controller could move: each is finished or Suspended (awaits `orch resume`;
    a preempted run waits in its queue, which a controller does move), and nothing is left to release,
    in SQL or, given ``cluster``, in the cluster (a run just cancelled still has its members running
    until a pass deletes them)."""
    runs = store.list_runs(active_only=True)
    if not all(run.phase is Phase.SUSPENDED and not waits_in_queue(run) for run in runs):
        return False
    return not store.workloads(live_only=True) and (cluster is None or not cluster.list_workloads())


def with_database(call: Callable[[], T], outage: DatabaseOutage, stop: threading.Event | None = None) -> T:
    """``call()``, retried while the database is unavailable, up to the outage's limit."""
    stop = stop or threading.Event()
    while True:
        try:
            result = call()
        except DatabaseUnavailable as error:
            outage.failed(error, stop)
            continue
        outage.ok()
        return result


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
        transient: Callable[[BaseException], bool] = never_transient,
        only: frozenset[str] | None = None,
        clock: Clock | None = None,
        admission: AdmissionSettings | None = None,
    ) -> None:
        """``transient`` tells errors of the environment (API server, network) from the run's own;
        ``only``: reconcile just these runs (``orch submit --wait`` drives its own run, no other)."""
        self.store = store
        self.cluster = cluster
        self.executor = executor
        self.identity = identity or default_identity()
        self.lease_seconds = lease_seconds
        self.sources = tuple(sources)
        self.telemetry = telemetry
        self.transient = transient
        self.only = only
        self._cluster_version = 0
        self._transient_error = ""
        self.clock: Clock = clock or WallClock()
        self._busy_until: list[float] = []  # virtual clock: when the runs skipped this pass finish their work
        self.admitter = Admitter(
            store,
            cluster,
            self.identity,
            lease_seconds=lease_seconds,
            clock=self.clock,
            settings=admission,
            only=only,
        )

    # ---- one pass ---------------------------------------------------------------------------

    def reconcile_once(self) -> PassReport:
        """One pass over every run this controller holds. A run's error is that run's (see
        ``orchestrator.core.failures``), never the pass's; an unavailable database ends the pass."""
        self._transient_error = ""
        changes = self._guarded(
            "pulling runs", lambda: sum(source.pull(self.store) for source in self.sources)
        )
        changes += self._guarded("admitting runs", self.admitter.admit_once)
        run_ids = self.store.acquire_leases(self.identity, self.lease_seconds, only=self.only)
        self._busy_until = []
        for run_id in run_ids:
            changes += self._reconcile_isolated(run_id)
        if not changes and self.clock.virtual:
            changes += self._next_event()
        changes += self._guarded("deleting orphans", self._delete_orphans)
        changes += self._guarded(
            "sweeping finished runs",
            lambda: self.cluster.sweep({run.id for run in self.store.list_runs() if run.phase.terminal}),
        )
        changes += self._guarded(
            "publishing runs", lambda: sum(source.publish(self.store) for source in self.sources)
        )
        self._guarded("ingesting telemetry", lambda: self._ingest_telemetry() or 0)
        return PassReport(runs=len(run_ids), changes=changes, transient=self._transient_error)

    def _next_event(self) -> int:
        """Virtual time: nothing can happen before the next run's work ends (a finished run's last step
        too: its GPUs come back then), so jump there. 1 if the clock moved."""
        now = self.clock.now()
        ends = [*self._busy_until, *(run.sim_ready_at for run in self.store.runs_busy_after(now))]
        if not ends:
            return 0
        self.clock.advance_to(min(ends))
        return 1

    def _is_transient(self, error: Exception) -> bool:
        return isinstance(error, TransientError) or self.transient(error)

    def _guarded(self, what: str, call: Callable[[], int]) -> int:
        """A part of the pass that belongs to no run: its errors are logged, the pass goes on."""
        try:
            return call()
        except DatabaseUnavailable:
            raise
        except Exception as error:
            if self._is_transient(error):
                self._transient_error = f"{what}: {one_line(str(error))}"
                log.warning("%s failed (%s); retrying after a backoff", what, one_line(str(error)))
            else:
                log.exception("%s failed; going on with the next pass", what)
            return 0

    def _reconcile_isolated(self, run_id: str) -> int:
        """Reconcile one run; whatever it raises is recorded as its failure and never reaches the pass."""
        try:
            return self._reconcile_run(run_id)
        except DatabaseUnavailable:
            raise
        except (ConflictError, NotFound) as error:
            log.info("run %s: %s; deciding again on the next pass", run_id, error)
            return 0
        except Exception as error:
            if self._is_transient(error):
                self._transient_error = f"run {run_id}: {one_line(str(error))}"
                log.warning("run %s: %s; retrying after a backoff", run_id, one_line(str(error)))
                return 0
            return self._record_failure(run_id, error)

    def _record_failure(self, run_id: str, error: Exception) -> int:
        reason = one_line(f"{type(error).__name__}: {error}")
        log.warning("run %s: %s", run_id, reason, exc_info=log.isEnabledFor(logging.DEBUG))
        try:
            run = self.store.get_run(run_id)
            return self._apply(
                work_failed(run, self.store.workloads(run_id), reason, allowed_attempts(run.spec))
            )
        except NotFound:
            return 0

    def _ingest_telemetry(self) -> None:
        """Store new GPU samples, account idle GPUs and act on the runs' idle policies."""
        if self.telemetry is None:
            return
        samples = self.telemetry.drain()
        if not samples:
            return
        samples = attribute_samples(samples, self.store.workloads(live_only=True))
        for tries_left in reversed(range(TELEMETRY_TRIES)):
            try:
                return self._record_telemetry(samples)
            except ConflictError:  # a run changed between its read and the suspend request: read again
                if not tries_left:
                    raise

    def _record_telemetry(self, samples: list[GpuSample]) -> None:
        runs: dict[str, Run | None] = {}

        def run_of(run_id: str) -> Run | None:
            if run_id not in runs:
                try:
                    runs[run_id] = self.store.get_run(run_id)
                except NotFound:
                    runs[run_id] = None
            return runs[run_id]

        def policy_of(run_id: str) -> IdlePolicySpec | None:
            run = run_of(run_id)
            return RunSpec.model_validate(run.spec).idle if run is not None else None

        update = account_idle(self.store.idle_stretches(), samples, policy_of)
        events, suspend = idle_consequences(update, policy_of)
        requests = [commands.request_suspend(run) for run_id in sorted(suspend) if (run := run_of(run_id))]
        self.store.record_telemetry(samples, update, events, [patch for patch in requests if patch])

    def _prepare_pools(self, run_id: str) -> None:
        """Act before observing: make the run's pools exist (the simulator creates them on demand), so
        the snapshot that follows sees their nodes."""
        self.cluster.prepare_pools(RunSpec.model_validate(self.store.get_run(run_id).spec).pools)

    def _snapshot(self, run_id: str) -> RunSnapshot:
        """Observe one run: SQL and the cluster, read only."""
        run = self.store.get_run(run_id)
        spec = RunSpec.model_validate(run.spec)
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
            ports_by_others=ports_in_use(w for w in live if w.run_id != run_id),
            last_checkpoint=last_checkpoint((c.step for c in checkpoints), run.steps_done),
            dropped_problems=self.store.dropped_problems(run_id),
            preemption=self.store.preemption(run_id),
        )

    def _reconcile_run(self, run_id: str) -> int:
        self._prepare_pools(run_id)
        snapshot = self._snapshot(run_id)
        if self.clock.virtual and snapshot.run.sim_ready_at > self.clock.now():
            self._busy_until.append(snapshot.run.sim_ready_at)  # still doing its last work, in virtual time
            return 0
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
        if patch and self.clock.virtual:  # the work ends its virtual duration from now
            took = float(patch.run.get("sim_seconds", snapshot.run.sim_seconds)) - snapshot.run.sim_seconds
            patch = replace(patch, run={**patch.run, "sim_ready_at": self.clock.now() + took})
        return self._apply(patch)

    def _sync_cluster(self, run_id: str) -> int:
        creates, deletes = cluster_diff(self.store.workloads(run_id), self.cluster.list_workloads(run_id))
        if isinstance(self.cluster, GangCreator):
            # A gang reserved all-or-nothing (a Ray placement group), its processes launched from the spec.
            if creates:
                run = self.store.get_run(run_id)
                spec = RunSpec.model_validate(run.spec)
                self.cluster.create_workloads(creates, spec=spec, stage_index=run.stage_index)
        else:
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
        outage: DatabaseOutage | None = None,
    ) -> None:
        """Reconcile until ``until()`` is true or ``stop`` is set; idle passes wait on the cluster's watch.

        An unavailable database is waited out with backoff; once it has been away for ``outage.limit_s``
        (default ``DB_OUTAGE_SECONDS``) the loop raises ``DatabaseUnavailable`` saying so in one line.
        """
        stop = stop or threading.Event()
        outage = outage or DatabaseOutage()
        backoff = Backoff(first=0.5, most=10.0)
        try:
            while not stop.is_set():
                try:
                    if until():
                        break
                    report = self.reconcile_once()
                except DatabaseUnavailable as error:
                    outage.failed(error, stop)
                    continue
                outage.ok()
                after_pass()
                if report.transient:
                    stop.wait(backoff.next())
                    continue
                backoff.reset()
                if not report.progressed:
                    self._cluster_version, _ = self.cluster.watch(self._cluster_version, idle_wait_s)
        finally:
            self._release_leases()

    def _release_leases(self) -> None:
        try:
            self.store.release_leases(self.identity)
            self.admitter.release()
        except DatabaseUnavailable as error:
            log.warning("could not release the leases (%s); they expire in %g s", error, self.lease_seconds)

"""The admission shell: one pass over the whole cluster, under the admission lease.

Observe (SQL: queues, runs, live workloads, waits, preemptions, usage; the cluster: nodes) → decide
(``orchestrator.core.admission.admission_pass``, pure) → write it all in one fenced transaction. Only
the holder of the admission lease admits; a holder whose lease lapsed mid-pass commits nothing, so two
controllers never admit onto the same GPUs.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from orchestrator.backends.base import ClusterBackend
from orchestrator.controller.clock import Clock
from orchestrator.core.admission import admission_pass, decay_usage
from orchestrator.core.admit import admit_patch, gang, waits_in_queue
from orchestrator.core.curriculum import last_checkpoint
from orchestrator.core.feasibility import run_problems
from orchestrator.core.members import desired_members
from orchestrator.core.placement import NodeView, PlacementPolicy
from orchestrator.core.ports import ports_in_use
from orchestrator.core.queueing import (
    AdmissionSettings,
    AdmissionSnapshot,
    Candidate,
    Holder,
    QueueView,
    gang_gpus,
)
from orchestrator.core.snapshot import RunSnapshot
from orchestrator.errors import ConflictError
from orchestrator.records import NewEvent, PreemptionRecord, Run, RunPatch, WaitRecord, Workload
from orchestrator.spec import RunSpec
from orchestrator.spec.queues import DEFAULT_QUEUE, QueueSpec
from orchestrator.state.admission import AdmissionWrite
from orchestrator.state.store import Store

__all__ = ["UNLIMITED", "Admitter", "queue_view"]

UNLIMITED = 2**31 - 1  # GPUs: the implicit default queue's quota

log = logging.getLogger("orch.admission")


def queue_view(spec: QueueSpec) -> QueueView:
    """A queue as the pure admission pass reads it."""
    return QueueView(
        name=spec.name,
        nominal={quota.pool: quota.nominal for quota in spec.quotas},
        borrowing_limit={quota.pool: quota.borrowing_limit for quota in spec.quotas},
        cohort=spec.cohort,
        weight=spec.weight,
        placement=PlacementPolicy(scores=tuple(spec.placement)),
        preempt_within_queue=spec.preemption.within_queue == "lower-priority",
        reclaim_within_cohort=spec.preemption.reclaim_within_cohort,
        min_run_s=spec.min_run_seconds,
        aging_s=spec.aging_seconds,
    )


def _implicit_default(nodes: Iterable[NodeView]) -> QueueView:
    """While no queue is applied, every run is in ``default``, which no quota limits: a run waits for
    nodes only (``orch queues`` shows it holding the whole cluster, ``default_queue``)."""
    return QueueView(name=DEFAULT_QUEUE, nominal=dict.fromkeys({node.pool for node in nodes}, UNLIMITED))


@dataclass
class _Observed:
    runs: dict[str, Run]
    specs: dict[str, RunSpec]
    live: list[Workload]
    nodes: tuple[NodeView, ...]
    queues: list[QueueSpec]
    preemptions: dict[str, PreemptionRecord]
    waits: dict[str, WaitRecord]
    usage: dict[tuple[str, str], float]
    usage_at: float | None
    lingering: list[tuple[Run, list[Workload]]]  # virtual time: released, but their work has not ended


class Admitter:
    """Runs the admission pass when this controller holds the admission lease."""

    def __init__(
        self,
        store: Store,
        cluster: ClusterBackend,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        clock: Clock,
        settings: AdmissionSettings | None = None,
        wall: Callable[[], float] = time.time,
        only: frozenset[str] | None = None,
    ) -> None:
        """``clock``: the admission's time (virtual on the simulated pool); ``wall``: the lease's;
        ``only``: admit just these runs (``orch submit --wait``), holding the lease for one pass at a time
        so that a controller of the whole cluster takes over admission whenever one runs."""
        self.store = store
        self.cluster = cluster
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.settings = settings or AdmissionSettings()
        self.wall = wall
        self.only = only

    def admit_once(self) -> int:
        """One admission pass; the number of runs admitted or asked to stop (0 if not the holder)."""
        try:
            return sum(self.steps())
        finally:
            if self.only is not None:
                self.release()

    def steps(self) -> Iterator[int]:
        """The pass one step at a time (take the lease, observe, decide, commit), yielding the changes each
        made: lets a test interleave two controllers at every step."""
        epoch = self.store.acquire_admission(self.identity, self.lease_seconds, now=self.wall())
        yield 0
        if epoch is None:
            return
        now = self.clock.now()
        seen = self._observe(now)
        yield 0
        write, changes = self._decide(seen, now)
        yield 0
        try:
            self.store.commit_admission(self.identity, epoch, write, now=self.wall())
        except ConflictError as error:
            log.info("%s; admitting again on the next pass", error)
            return
        yield changes

    def release(self) -> None:
        self.store.release_admission(self.identity)

    # ---- observe --------------------------------------------------------------------------------

    def _observe(self, now: float) -> _Observed:
        runs = {run.id: run for run in self.store.list_runs(active_only=True)}
        live = self.store.workloads(live_only=True)
        lingering = []
        if self.clock.virtual:
            holding = {w.run_id for w in live}
            for run in self.store.runs_busy_after(now):
                if run.id not in holding:
                    last = [w for w in self.store.workloads(run.id) if w.attempt == run.attempt]
                    lingering.append((run, last))
        specs = {run_id: RunSpec.model_validate(run.spec) for run_id, run in runs.items()}
        for run_id, run in runs.items():  # the simulator makes a run's pools on first sight
            if waits_in_queue(run):
                self.cluster.prepare_pools(specs[run_id].pools)
        usage, usage_at = self.store.queue_usage()
        return _Observed(
            runs=runs,
            specs=specs,
            live=live,
            nodes=tuple(self.cluster.list_nodes()),
            queues=self.store.queues(),
            preemptions=self.store.preemptions(),
            waits=self.store.waits(),
            usage=usage,
            usage_at=usage_at,
            lingering=lingering,
        )

    # ---- decide ---------------------------------------------------------------------------------

    def _decide(self, seen: _Observed, now: float) -> tuple[AdmissionWrite, int]:
        views = [queue_view(queue) for queue in seen.queues] or [_implicit_default(seen.nodes)]
        live_by_run: dict[str, list[Workload]] = defaultdict(list)
        for workload in seen.live:
            live_by_run[workload.run_id].append(workload)
        holders = [
            self._holder(run, seen, live_by_run[run.id])
            for run in seen.runs.values()
            if run.admitted_at is not None
        ]
        candidates = [
            candidate
            for run in seen.runs.values()
            if (candidate := self._candidate(run, seen, live_by_run[run.id], now)) is not None
        ]
        used: dict[str, int] = defaultdict(int)
        for workload in seen.live:
            used[workload.node] += workload.gpus
        for run, last in seen.lingering:  # its GPUs and quota come back when its work ends
            for workload in last:
                used[workload.node] += workload.gpus
            holders.append(self._lingering(run, last))
        held = self._held(holders)
        usage = decay_usage(
            seen.usage,
            held,
            0.0 if seen.usage_at is None else max(0.0, now - seen.usage_at),
            self.settings.usage_half_life_s,
        )
        snapshot = AdmissionSnapshot(
            now=now,
            queues=tuple(views),
            nodes=seen.nodes,
            used=dict(used),
            holders=tuple(holders),
            candidates=tuple(candidates),
            usage=usage,
            settings=self.settings,
        )
        result = admission_pass(snapshot)
        by_id = {c.run_id: c for c in candidates}
        patches: list[RunPatch] = []
        live = list(seen.live)
        for admit in result.admitted:
            run = seen.runs[admit.run_id]
            run_snapshot = self._run_snapshot(run, seen, live)
            waited = now - by_id[admit.run_id].queued_since
            patch = admit_patch(
                run_snapshot, admit.nodes, now=now, queue=run.queue, borrowed=admit.borrowed, waited_s=waited
            )
            patches.append(patch)
            live.extend(w for w in patch.workloads if w.status.live)
        events: list[tuple[str, NewEvent]] = []
        waits = []
        for wait in result.waiting:
            since = by_id[wait.run_id].queued_since
            waits.append(WaitRecord(wait.run_id, wait.queue, wait.position, wait.reason, since, wait.kind))
            previous = seen.waits.get(wait.run_id)
            if previous is None or previous.reason != wait.reason:
                data = {"queue": wait.queue, "position": wait.position}
                kind = "Unschedulable" if wait.kind == "nodes" else "Waiting"  # no node fits, or quota etc.
                events.append((wait.run_id, NewEvent(kind, wait.reason, data)))
            run = seen.runs[wait.run_id]
            message = f"waiting for GPUs in queue {wait.queue}, #{wait.position} in line: {wait.reason}"
            if run.message != message and run.id not in {p.run_id for p in patches}:
                patches.append(RunPatch(run.id, run.version, run={"message": message}))
        preemptions = []
        for preempt in result.preemptions:
            preemptions.append(PreemptionRecord(preempt.victim, preempt.by, preempt.reason, now))
            events.append(
                (
                    preempt.victim,
                    NewEvent(
                        "PreemptionRequested",
                        f"asked to stop at its next checkpoint for run {preempt.by}: {preempt.reason}",
                        {"by": preempt.by},
                    ),
                )
            )
            events.append(
                (
                    preempt.by,
                    NewEvent(
                        "Preempting",
                        f"asked run {preempt.victim} to stop at its next checkpoint: {preempt.reason}",
                        {"victim": preempt.victim},
                    ),
                )
            )
        holding = {h.run_id for h in holders}
        forget = [victim for victim in seen.preemptions if victim not in holding]
        write = AdmissionWrite(
            patches=patches,
            preemptions=preemptions,
            waits=waits,
            usage=usage,
            usage_at=now,
            events=events,
            forget=forget,
            scope=self.only,
        )
        return write, len(result.admitted) + len(result.preemptions)

    @staticmethod
    def _held(holders: Iterable[Holder]) -> dict[tuple[str, str], int]:
        held: dict[tuple[str, str], int] = defaultdict(int)
        for holder in holders:
            for pool, gpus in holder.gpus.items():
                held[(holder.queue, pool)] += gpus
        return dict(held)

    @staticmethod
    def _lingering(run: Run, last: list[Workload]) -> Holder:
        gpus: dict[str, int] = defaultdict(int)
        nodes: dict[str, int] = defaultdict(int)
        for workload in last:
            gpus[workload.pool] += workload.gpus
            nodes[workload.node] += workload.gpus
        return Holder(run.id, run.queue, run.priority, False, dict(gpus), dict(nodes), 0.0, stopping=True)

    @staticmethod
    def _holder(run: Run, seen: _Observed, live: list[Workload]) -> Holder:
        spec = seen.specs[run.id]
        nodes: dict[str, int] = defaultdict(int)
        for workload in live:
            nodes[workload.node] += workload.gpus
        return Holder(
            run_id=run.id,
            queue=run.queue,
            priority=run.priority,
            preemptible=spec.scheduling.preemptible,
            gpus=gang_gpus(tuple(desired_members(spec, run.id, max(run.attempt, 1)))),
            nodes=dict(nodes),
            admitted_at=run.admitted_at or 0.0,
            stopping=run.id in seen.preemptions,
        )

    def _candidate(self, run: Run, seen: _Observed, live: list[Workload], now: float) -> Candidate | None:
        """The run as a candidate, if it waits for GPUs: in its queue, or (gang failed) for nodes."""
        if not waits_in_queue(run) or run.id in seen.preemptions:
            return None
        if self.only is not None and run.id not in self.only:
            return None  # someone else's run, left to a controller of the whole cluster
        if any(w.attempt == run.attempt for w in live):
            return None  # placed already
        spec = seen.specs[run.id]
        if run_problems(spec):
            return None  # the run's own reconcile fails it
        wait = seen.waits.get(run.id)
        return Candidate(
            run_id=run.id,
            queue=run.queue,
            priority=run.priority,
            preemptible=spec.scheduling.preemptible,
            queued_since=wait.since if wait is not None else now,
            members=gang(run, spec),
            holds_quota=run.admitted_at is not None,
            nominated=wait is not None and wait.kind == "stopping",
        )

    def _run_snapshot(self, run: Run, seen: _Observed, live: list[Workload]) -> RunSnapshot:
        """What ``admit_patch`` reads about one run: its workloads, checkpoints and the ports others hold."""
        checkpoints = self.store.checkpoints(run.id)
        return RunSnapshot(
            run=run,
            spec=seen.specs[run.id],
            stages=tuple(self.store.stages(run.id)),
            workloads=tuple(self.store.workloads(run.id)),
            observed={},
            nodes=seen.nodes,
            ports_by_others=ports_in_use(w for w in live if w.run_id != run.id),
            last_checkpoint=last_checkpoint((c.step for c in checkpoints), run.steps_done),
        )

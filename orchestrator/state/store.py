"""The store: owns the SQL engine; every state change is one transaction that writes its events."""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
)
from sqlalchemy.orm import Session

from orchestrator.core.idle import IdleStretch, IdleUpdate
from orchestrator.core.lifecycle import initial_run
from orchestrator.errors import ConflictError, NotFound, SpecError
from orchestrator.records import (
    Checkpoint,
    Event,
    GpuReading,
    GpuSample,
    NewEvent,
    Phase,
    Run,
    RunPatch,
    Stage,
    Step,
    Workload,
    WorkloadStatus,
)
from orchestrator.spec import RunSpec
from orchestrator.state.admission import AdmissionTables, unknown_queue
from orchestrator.state.engine import Sessions, default_database_url, lost, make_engine, unavailable
from orchestrator.state.migrations_runner import upgrade_to_head
from orchestrator.state.models import (
    CheckpointRow,
    EventRow,
    GpuLatestRow,
    PreemptionRow,
    ProblemRow,
    RunIdleRow,
    RunRow,
    RunUtilizationRow,
    StageRow,
    StepRow,
    WorkloadRow,
)
from orchestrator.state.rows import (
    run_record,
    sample_from_json,
    sample_json,
    stage_record,
    step_record,
    unassigned,
    workload_record,
)

__all__ = ["Store"]

UTILIZATION_BUCKET_SECONDS = 60.0
TERMINAL = [phase.value for phase in Phase if phase.terminal]


class Store(AdmissionTables):
    """SQL state of every run. Open one per process; it is safe to share between threads."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = url or default_database_url()
        self.engine = make_engine(self.url)
        self._sessions = Sessions(self.engine, self.url)
        if migrate:
            self.upgrade()

    def upgrade(self) -> str:
        """Apply Alembic migrations up to head; return the revision now in force."""
        try:
            return upgrade_to_head(self.engine)
        except DBAPIError as error:
            if lost(error):
                raise unavailable(self.url, error) from error
            raise

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        """Whether the database answers a trivial query."""
        with self._sessions() as session:
            return session.connection().exec_driver_sql("SELECT 1").scalar() == 1

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    @staticmethod
    def _add_events(session: Session, run_id: str | None, events: Sequence[NewEvent]) -> None:
        now = time.time()
        for new in events:
            session.add(
                EventRow(run_id=run_id, at=now, reason=new.reason, message=new.message, data=new.data)
            )

    # ---- runs -------------------------------------------------------------------------------

    def create_run(self, spec: RunSpec, *, external_ref: str | None = None) -> Run:
        """Store a validated spec as a Pending run with its stages (``initial_run``), in one transaction.

        ``external_ref`` names the object the run mirrors (a TrainingRun's namespace/name/uid); it is
        unique, so mirroring the same object twice fails instead of starting a second run.
        """
        new = initial_run(spec, f"{spec.name}-{secrets.token_hex(3)}", time.time(), external_ref=external_ref)
        with self._transaction() as session:
            self._check_queue(session, spec.scheduling.queue)
            row = RunRow(**{**asdict(new.run), "phase": new.run.phase.value})
            session.add(row)
            for stage in new.stages:
                session.add(StageRow(**asdict(stage)))
            self._add_events(session, new.run.id, [new.event])
            try:
                session.flush()
            except IntegrityError as error:
                raise ConflictError(f"{external_ref} is already mirrored by another run") from error
            return run_record(row)

    @staticmethod
    def _check_queue(session: Session, name: str) -> None:
        """Refuse a run naming a queue nobody applied (in the transaction that would store it)."""
        problem = unknown_queue(session, name)
        if problem:
            raise SpecError(problem)

    def get_run(self, ref: str) -> Run:
        """A run by id, or by name when exactly one run has that name."""
        with self._sessions() as session:
            row = session.get(RunRow, ref)
            if row is None:
                rows = session.scalars(select(RunRow).where(RunRow.name == ref)).all()
                if len(rows) > 1:
                    ids = ", ".join(r.id for r in rows)
                    raise NotFound(f"run {ref!r}: {len(rows)} runs have that name ({ids}); give the run id")
                row = rows[0] if rows else None
            if row is None:
                raise NotFound(f"run {ref!r} not found; `orch list` shows the runs")
            return run_record(row)

    def find_run_by_ref(self, external_ref: str) -> Run | None:
        with self._sessions() as session:
            row = session.scalar(select(RunRow).where(RunRow.external_ref == external_ref))
            return run_record(row) if row is not None else None

    def list_runs(self, *, active_only: bool = False) -> list[Run]:
        with self._sessions() as session:
            query = select(RunRow).order_by(RunRow.created_at)
            if active_only:
                query = query.where(RunRow.phase.not_in(TERMINAL))
            return [run_record(row) for row in session.scalars(query)]

    def apply(self, patch: RunPatch) -> Run:
        """Apply one decision atomically. Raises ``ConflictError`` if the run changed meanwhile."""
        with self._transaction() as session:
            return self._apply(session, patch, time.time())

    def _apply(self, session: Session, patch: RunPatch, now: float) -> Run:
        """``patch`` inside the caller's transaction; ``ConflictError`` (which rolls it back) if the run
        changed since ``patch.expected_version``."""
        values = dict(patch.run, version=RunRow.version + 1, updated_at=now)
        result = session.execute(
            update(RunRow)
            .where(RunRow.id == patch.run_id, RunRow.version == patch.expected_version)
            .values(**values)
        )
        if result.rowcount != 1:
            if session.get(RunRow, patch.run_id) is None:
                raise NotFound(f"run {patch.run_id!r} not found; `orch list` shows the runs")
            raise ConflictError(
                f"run {patch.run_id}: changed by another writer since version {patch.expected_version}; "
                "read it again and retry"
            )
        for stage in patch.stages:
            session.execute(
                update(StageRow)
                .where(StageRow.run_id == patch.run_id, StageRow.index == stage.index)
                .values(**stage.fields)
            )
        for workload in patch.workloads:
            self._upsert_workload(session, workload, now)
        if patch.supersede_steps_after is not None:
            session.execute(
                update(StepRow)
                .where(
                    StepRow.run_id == patch.run_id,
                    StepRow.step > patch.supersede_steps_after,
                    StepRow.superseded.is_(False),
                )
                .values(superseded=True)
            )
        if patch.step is not None:
            session.add(
                StepRow(
                    **{**asdict(patch.step), "engines": list(patch.step.engines)},
                    finished_sim_seconds=patch.run.get("sim_seconds", 0.0),
                )
            )
        if patch.checkpoint is not None:
            session.add(CheckpointRow(**asdict(patch.checkpoint), created_at=now))
        if patch.problems:
            session.execute(
                insert(ProblemRow),
                [dict(asdict(problem), run_id=patch.run_id) for problem in patch.problems],
            )
        if patch.clear_preemption:
            session.execute(delete(PreemptionRow).where(PreemptionRow.victim == patch.run_id))
        self._add_events(session, patch.run_id, patch.events)
        try:
            session.flush()
        except IntegrityError as error:
            raise ConflictError(
                f"run {patch.run_id}: write collides with a row another writer made ({error.orig}); "
                "read it again and retry"
            ) from error
        row = session.get(RunRow, patch.run_id)
        session.refresh(row)
        return run_record(row)

    @staticmethod
    def _upsert_workload(session: Session, workload: Workload, now: float) -> None:
        row = session.get(WorkloadRow, workload.name)
        fields = asdict(workload)
        fields["status"] = workload.status.value
        if row is None:
            session.add(WorkloadRow(**fields, created_at=now, updated_at=now))
            return
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = now

    # ---- telemetry ----------------------------------------------------------------------------

    def record_telemetry(
        self,
        samples: Sequence[GpuSample],
        idle: IdleUpdate,
        events: Mapping[str, Sequence[NewEvent]],
        suspend: Sequence[RunPatch] = (),
        bucket_seconds: float = UTILIZATION_BUCKET_SECONDS,
    ) -> None:
        """Ingest samples in one transaction: latest per GPU, idle stretches and seconds, the
        per-run utilization history (downsampled into time buckets), events, and the suspend requests
        (``commands.request_suspend`` patches; a run changed meanwhile raises ``ConflictError``)."""
        now = time.time()
        with self._transaction() as session:
            latest = {(s.node, s.index): s for s in samples}
            for key in latest.keys() | idle.stretches.keys():
                row = session.get(GpuLatestRow, key)
                if row is None:
                    if key not in latest:
                        continue
                    row = GpuLatestRow(node=key[0], gpu=key[1], idle_reported=False)
                    session.add(row)
                if key in latest:
                    row.sample = sample_json(latest[key])
                    row.updated_at = now  # when a sample arrived: the age `orch gpus` shows
                stretch = idle.stretches.get(key)
                row.idle_run = stretch.run if stretch else None
                row.idle_role = stretch.role if stretch else None
                row.idle_since = stretch.since if stretch else None
                row.idle_reported = bool(stretch and stretch.reported)
            known = {
                r for r in session.scalars(select(RunRow.id).where(RunRow.id.in_({s.run for s in samples})))
            }
            buckets: dict[tuple[str, float], tuple[float, float]] = {}
            for sample in samples:
                if sample.run not in known or sample.utilization_ratio is None:
                    continue
                key = (sample.run, sample.at // bucket_seconds * bucket_seconds)
                held, busy = buckets.get(key, (0.0, 0.0))
                buckets[key] = (held + sample.period_s, busy + sample.period_s * sample.utilization_ratio)
            for (run_id, start), (held, busy) in buckets.items():
                row = session.get(RunUtilizationRow, (run_id, start))
                if row is None:
                    session.add(
                        RunUtilizationRow(
                            run_id=run_id, bucket_start=start, gpu_seconds=held, busy_gpu_seconds=busy
                        )
                    )
                else:
                    row.gpu_seconds += held
                    row.busy_gpu_seconds += busy
            for (run_id, role), seconds in idle.idle_seconds.items():
                if run_id not in known:
                    continue
                row = session.get(RunIdleRow, (run_id, role))
                if row is None:
                    session.add(RunIdleRow(run_id=run_id, role=role, idle_seconds=seconds))
                else:
                    row.idle_seconds += seconds
            for run_id, new in events.items():
                if run_id in known:
                    self._add_events(session, run_id, new)
            for patch in suspend:
                self._apply(session, patch, now)

    def latest_gpu_samples(self) -> list[GpuSample]:
        """The newest sample of every GPU, by pool, node and index (see ``latest_gpu_readings``)."""
        return [reading.sample for reading in self.latest_gpu_readings()]

    def latest_gpu_readings(self) -> list[GpuReading]:
        """The newest sample of every GPU with the wall time it was received, by pool, node and index.

        A sample of a run that has ended (or is gone) is shown unassigned at once: a finished run's
        GPUs are not its GPUs any more, whatever the last sample said.
        """
        with self._sessions() as session:
            rows = session.execute(
                select(GpuLatestRow.sample, GpuLatestRow.updated_at).order_by(
                    GpuLatestRow.node, GpuLatestRow.gpu
                )
            ).all()
            readings = [GpuReading(sample_from_json(sample), received) for sample, received in rows]
            named = {r.sample.run for r in readings if r.sample.run}
            active = set(
                session.scalars(select(RunRow.id).where(RunRow.id.in_(named), RunRow.phase.not_in(TERMINAL)))
            )
        readings = [
            r if not r.sample.run or r.sample.run in active else replace(r, sample=unassigned(r.sample))
            for r in readings
        ]
        return sorted(readings, key=lambda r: (r.sample.pool, r.sample.node, r.sample.index))

    def idle_stretches(self) -> dict[tuple[str, int], IdleStretch | None]:
        with self._sessions() as session:
            return {
                (row.node, row.gpu): IdleStretch(
                    row.idle_run, row.idle_role or "", row.idle_since, row.idle_reported
                )
                if row.idle_run is not None and row.idle_since is not None
                else None
                for row in session.scalars(select(GpuLatestRow))
            }

    def run_utilization(self, run_id: str) -> list[tuple[float, float, float]]:
        """(bucket start, GPU-seconds held, GPU-seconds busy), oldest first."""
        with self._sessions() as session:
            rows = session.scalars(
                select(RunUtilizationRow)
                .where(RunUtilizationRow.run_id == run_id)
                .order_by(RunUtilizationRow.bucket_start)
            )
            return [(r.bucket_start, r.gpu_seconds, r.busy_gpu_seconds) for r in rows]

    def run_idle_seconds(self, run_id: str) -> dict[str, float]:
        with self._sessions() as session:
            rows = session.scalars(select(RunIdleRow).where(RunIdleRow.run_id == run_id))
            return {row.role: row.idle_seconds for row in rows}

    # ---- leases -----------------------------------------------------------------------------

    def acquire_leases(self, owner: str, seconds: float, *, only: Collection[str] | None = None) -> list[str]:
        """Take or renew the lease of every unfinished run (of ``only``, if given) that no live controller
        holds.

        One conditional UPDATE, so two controllers can never both hold a run: whichever
        commits second matches no row for runs the first one took.
        """
        now = time.time()
        chosen = [RunRow.id.in_(list(only))] if only is not None else []
        with self._transaction() as session:
            session.execute(
                update(RunRow)
                .where(
                    *chosen,
                    RunRow.phase.not_in(TERMINAL),
                    or_(
                        RunRow.lease_owner.is_(None),
                        RunRow.lease_owner == owner,
                        RunRow.lease_expires_at < now,
                    ),
                )
                .values(lease_owner=owner, lease_expires_at=now + seconds)
            )
            return list(
                session.scalars(
                    select(RunRow.id)
                    .where(*chosen, RunRow.lease_owner == owner, RunRow.phase.not_in(TERMINAL))
                    .order_by(RunRow.priority.desc(), RunRow.created_at)
                )
            )

    def lease_owners(self) -> dict[str, str]:
        """The controller holding each unfinished run whose lease has not expired, by run id."""
        with self._sessions() as session:
            rows = session.execute(
                select(RunRow.id, RunRow.lease_owner).where(
                    RunRow.phase.not_in(TERMINAL),
                    RunRow.lease_owner.is_not(None),
                    RunRow.lease_expires_at >= time.time(),
                )
            )
            return {run_id: owner for run_id, owner in rows}

    def release_leases(self, owner: str) -> None:
        with self._transaction() as session:
            session.execute(
                update(RunRow)
                .where(RunRow.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=0.0)
            )

    # ---- reads ------------------------------------------------------------------------------

    def stages(self, run_id: str) -> list[Stage]:
        with self._sessions() as session:
            rows = session.scalars(select(StageRow).where(StageRow.run_id == run_id).order_by(StageRow.index))
            return [stage_record(row) for row in rows]

    def workloads(self, run_id: str | None = None, *, live_only: bool = False) -> list[Workload]:
        with self._sessions() as session:
            query = select(WorkloadRow).order_by(WorkloadRow.run_id, WorkloadRow.attempt, WorkloadRow.name)
            if run_id is not None:
                query = query.where(WorkloadRow.run_id == run_id)
            if live_only:
                query = query.where(WorkloadRow.status.in_([s.value for s in WorkloadStatus if s.live]))
            return [workload_record(row) for row in session.scalars(query)]

    def steps(self, run_id: str, *, include_superseded: bool = False) -> list[Step]:
        with self._sessions() as session:
            query = select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.step, StepRow.id)
            if not include_superseded:
                query = query.where(StepRow.superseded.is_(False))
            return [step_record(row) for row in session.scalars(query)]

    def checkpoints(self, run_id: str) -> list[Checkpoint]:
        with self._sessions() as session:
            rows = session.scalars(
                select(CheckpointRow).where(CheckpointRow.run_id == run_id).order_by(CheckpointRow.step)
            )
            return [
                Checkpoint(run_id=r.run_id, step=r.step, uri=r.uri, sim_seconds=r.sim_seconds) for r in rows
            ]

    def dropped_problems(self, run_id: str) -> frozenset[int]:
        with self._sessions() as session:
            ids = session.scalars(
                select(ProblemRow.problem_id).where(ProblemRow.run_id == run_id, ProblemRow.dropped.is_(True))
            )
            return frozenset(ids)

    def problem_count(self, run_id: str, stage_index: int) -> int:
        with self._sessions() as session:
            return (
                session.scalar(
                    select(func.count()).where(
                        and_(ProblemRow.run_id == run_id, ProblemRow.stage_index == stage_index)
                    )
                )
                or 0
            )

    def events(
        self, run_id: str | None = None, *, after_id: int = 0, limit: int | None = None
    ) -> list[Event]:
        with self._sessions() as session:
            query = select(EventRow).where(EventRow.id > after_id).order_by(EventRow.id)
            if run_id is not None:
                query = query.where(EventRow.run_id == run_id)
            if limit is not None:
                query = query.limit(limit)
            return [
                Event(
                    id=r.id, run_id=r.run_id, at=r.at, reason=r.reason, message=r.message, data=dict(r.data)
                )
                for r in session.scalars(query)
            ]

    def row_counts(self) -> dict[str, int]:
        """Rows per table: lets tests prove that a rejected command wrote nothing."""
        counts = {}
        with self._sessions() as session:
            for model in (RunRow, StageRow, WorkloadRow, StepRow, CheckpointRow, ProblemRow, EventRow):
                counts[model.__tablename__] = session.scalar(select(func.count()).select_from(model)) or 0
        return counts

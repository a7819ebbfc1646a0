"""The store: owns the SQL engine; every state change is one transaction that writes its events."""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import platformdirs
from sqlalchemy import Engine, and_, create_engine, delete, event, func, insert, make_url, or_, select, update
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.core.idle import IdleStretch, IdleUpdate
from orchestrator.core.lifecycle import initial_run
from orchestrator.errors import ConflictError, DatabaseUnavailable, NotFound, OrchError
from orchestrator.records import (
    Checkpoint,
    Event,
    GpuReading,
    GpuSample,
    NewEvent,
    Phase,
    ProcessMemory,
    Run,
    RunPatch,
    Stage,
    Step,
    Workload,
    WorkloadStatus,
)
from orchestrator.spec import RunSpec
from orchestrator.state.migrations_runner import upgrade_to_head
from orchestrator.state.models import (
    CheckpointRow,
    EventRow,
    GpuLatestRow,
    ProblemRow,
    RunIdleRow,
    RunRow,
    RunUtilizationRow,
    StageRow,
    StepRow,
    WorkloadRow,
)

__all__ = ["Store", "default_database_url"]

DATABASE_URL_ENV = "ORCH_DATABASE_URL"
UTILIZATION_BUCKET_SECONDS = 60.0
TERMINAL = [phase.value for phase in Phase if phase.terminal]
DATABASE_URL_SETTING = "ORCH_DATABASE_URL / --database-url"
URL_FORM = "sqlite:////path/to/orch.db or postgresql://user:password@host:5432/database"
# The pip package of each DB-API module SQLAlchemy may import for a URL's dialect+driver.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
}


def default_database_url() -> str:
    """``ORCH_DATABASE_URL`` if set, else a SQLite file in the user's data directory."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    directory = Path(platformdirs.user_data_dir("orch"))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'orch.db'}"


def _unavailable(url: str, error: DBAPIError) -> DatabaseUnavailable:
    where = make_url(url).render_as_string(hide_password=True)
    reason = " ".join(str(error.orig or error).split())
    return DatabaseUnavailable(where, reason)


def _lost(error: DBAPIError) -> bool:
    """A lost, refused, terminated or locked connection: the database, not the request, failed."""
    return isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated


class _Sessions:
    """Opens sessions like a ``sessionmaker``; a database that cannot answer raises DatabaseUnavailable."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._maker = sessionmaker(engine, expire_on_commit=False)
        self._url = url

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        try:
            with self._maker() as session:
                yield session
        except DBAPIError as error:
            if _lost(error):
                raise _unavailable(self._url, error) from error
            raise


def _make_engine(url: str) -> Engine:
    """The engine for ``url``, or one line naming the setting and what to fix."""
    try:
        return _create_engine(url)
    except NoSuchModuleError as error:
        kind = url.partition("://")[0]
        message = f"unknown database kind {kind!r}; expected {URL_FORM}"
        raise OrchError(f"{DATABASE_URL_SETTING}: {message}") from error
    except ArgumentError as error:
        shown = re.sub(r":[^:/@]*@", ":***@", url)  # a password, should the text hold one
        message = f"{shown!r} is not a database URL; expected {URL_FORM}"
        raise OrchError(f"{DATABASE_URL_SETTING}: {message}") from error
    except ImportError as error:
        module = error.name or str(error)
        raise OrchError(
            f"{DATABASE_URL_SETTING}: {url.partition('://')[0]}:// needs the driver {module!r}, which is not "
            f"installed; pip install '{DRIVER_PACKAGES.get(module, module)}', "
            "or use postgresql:// (psycopg, installed with orch) or sqlite://"
        ) from error


def _create_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        # A busy timeout given in the URL (?timeout=seconds) wins over the default.
        engine = create_engine(url, connect_args={} if "timeout" in make_url(url).query else {"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let pysqlite leave transactions to us, so BEGIN IMMEDIATE takes the write lock up front.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A host that never answers fails a connect after 10 s (unless the URL says otherwise), not minutes.
    timeout = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, connect_args=timeout)


R = TypeVar("R")


def _record(record_type: type[R], row: object, **converted: object) -> R:
    """Copy a row's columns into the frozen record of the same field names."""
    values = {f.name: getattr(row, f.name) for f in fields(record_type) if f.name not in converted}  # type: ignore[arg-type]
    return record_type(**values, **converted)


def _sample_json(sample: GpuSample) -> dict[str, Any]:
    return asdict(sample)


def _sample_from_json(data: dict[str, Any]) -> GpuSample:
    values = dict(data)
    values["processes"] = tuple(ProcessMemory(**p) for p in values.get("processes") or ())
    values["throttle_reasons"] = tuple(values.get("throttle_reasons") or ())
    known = {f.name for f in fields(GpuSample)}
    return GpuSample(**{k: v for k, v in values.items() if k in known})


def _unassigned(sample: GpuSample) -> GpuSample:
    return replace(sample, run="", role="")


def _run(row: RunRow) -> Run:
    return _record(Run, row, phase=Phase(row.phase))


def _stage(row: StageRow) -> Stage:
    return _record(Stage, row)


def _workload(row: WorkloadRow) -> Workload:
    return _record(Workload, row, status=WorkloadStatus(row.status), env=dict(row.env))


def _step(row: StepRow) -> Step:
    return _record(Step, row, engines=tuple(row.engines or ()))


class Store:
    """SQL state of every run. Open one per process; it is safe to share between threads."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = url or default_database_url()
        self.engine = _make_engine(self.url)
        self._sessions = _Sessions(self.engine, self.url)
        if migrate:
            self.upgrade()

    def upgrade(self) -> str:
        """Apply Alembic migrations up to head; return the revision now in force."""
        try:
            return upgrade_to_head(self.engine)
        except DBAPIError as error:
            if _lost(error):
                raise _unavailable(self.url, error) from error
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
            row = RunRow(**{**asdict(new.run), "phase": new.run.phase.value})
            session.add(row)
            for stage in new.stages:
                session.add(StageRow(**asdict(stage)))
            self._add_events(session, new.run.id, [new.event])
            try:
                session.flush()
            except IntegrityError as error:
                raise ConflictError(f"{external_ref} is already mirrored by another run") from error
            return _run(row)

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
            return _run(row)

    def find_run_by_ref(self, external_ref: str) -> Run | None:
        with self._sessions() as session:
            row = session.scalar(select(RunRow).where(RunRow.external_ref == external_ref))
            return _run(row) if row is not None else None

    def list_runs(self, *, active_only: bool = False) -> list[Run]:
        with self._sessions() as session:
            query = select(RunRow).order_by(RunRow.created_at)
            if active_only:
                query = query.where(RunRow.phase.not_in(TERMINAL))
            return [_run(row) for row in session.scalars(query)]

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
        return _run(row)

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
                    row.sample = _sample_json(latest[key])
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
            readings = [GpuReading(_sample_from_json(sample), received) for sample, received in rows]
            named = {r.sample.run for r in readings if r.sample.run}
            active = set(
                session.scalars(select(RunRow.id).where(RunRow.id.in_(named), RunRow.phase.not_in(TERMINAL)))
            )
        readings = [
            r if not r.sample.run or r.sample.run in active else replace(r, sample=_unassigned(r.sample))
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

    def record_event(self, run_id: str | None, new: NewEvent) -> None:
        with self._transaction() as session:
            self._add_events(session, run_id, [new])

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

    def holds_lease(self, run_id: str, owner: str) -> bool:
        with self._sessions() as session:
            row = session.get(RunRow, run_id)
            return bool(row and row.lease_owner == owner and row.lease_expires_at >= time.time())

    # ---- reads ------------------------------------------------------------------------------

    def stages(self, run_id: str) -> list[Stage]:
        with self._sessions() as session:
            rows = session.scalars(select(StageRow).where(StageRow.run_id == run_id).order_by(StageRow.index))
            return [_stage(row) for row in rows]

    def workloads(self, run_id: str | None = None, *, live_only: bool = False) -> list[Workload]:
        with self._sessions() as session:
            query = select(WorkloadRow).order_by(WorkloadRow.run_id, WorkloadRow.attempt, WorkloadRow.name)
            if run_id is not None:
                query = query.where(WorkloadRow.run_id == run_id)
            if live_only:
                query = query.where(WorkloadRow.status.in_([s.value for s in WorkloadStatus if s.live]))
            return [_workload(row) for row in session.scalars(query)]

    def steps(self, run_id: str, *, include_superseded: bool = False) -> list[Step]:
        with self._sessions() as session:
            query = select(StepRow).where(StepRow.run_id == run_id).order_by(StepRow.step, StepRow.id)
            if not include_superseded:
                query = query.where(StepRow.superseded.is_(False))
            return [_step(row) for row in session.scalars(query)]

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

    def delete_everything(self) -> None:
        """Empty every table (tests only)."""
        with self._transaction() as session:
            for model in (EventRow, ProblemRow, CheckpointRow, StepRow, WorkloadRow, StageRow, RunRow):
                session.execute(delete(model))

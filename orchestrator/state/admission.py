"""The SQL side of admission: queues, the admission lease, queue usage, preemptions in flight, waiting
runs and the shared virtual clock. Mixed into ``Store``, whose sessions and run patches it uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from orchestrator.errors import ConflictError, NotFound
from orchestrator.records import NewEvent, Phase, PreemptionRecord, Run, RunPatch, WaitRecord
from orchestrator.spec.queues import DEFAULT_QUEUE, QueueSpec
from orchestrator.state.models import (
    AdmissionLeaseRow,
    AdmissionWaitRow,
    ClockRow,
    PreemptionRow,
    QueueRow,
    QueueUsageRow,
    RunRow,
)
from orchestrator.state.rows import run_record

__all__ = ["AdmissionTables", "AdmissionWrite", "unknown_queue"]

LEASE_ID = 1
TERMINAL = [phase.value for phase in Phase if phase.terminal]


def unknown_queue(session: Session, name: str) -> str:
    """Why a run may not name queue ``name`` ("" if it may): once queues are applied, only those exist;
    before, only the implicit ``default``."""
    known = list(session.scalars(select(QueueRow.name).order_by(QueueRow.name)))
    if name in known or (not known and name == DEFAULT_QUEUE):
        return ""
    listed = ", ".join(known) if known else f"{DEFAULT_QUEUE} (no queue has been applied)"
    return (
        f"scheduling.queue: unknown queue {name!r}; the queues are {listed}; name one of them or apply "
        f"the queue with `orch queues apply policies/queues/{name}.yaml`"
    )


class AdmissionWrite:
    """What one admission pass writes, all in one fenced transaction."""

    def __init__(
        self,
        patches: Sequence[RunPatch] = (),
        preemptions: Sequence[PreemptionRecord] = (),
        waits: Sequence[WaitRecord] = (),
        usage: Mapping[tuple[str, str], float] | None = None,
        usage_at: float = 0.0,
        events: Sequence[tuple[str, NewEvent]] = (),
        forget: Sequence[str] = (),
        scope: frozenset[str] | None = None,
    ) -> None:
        """``events``: (run id, event) written without touching the run (its owner may be stepping it);
        ``forget``: preemptions of runs that no longer hold GPUs (finished meanwhile); ``scope``: the runs
        whose waits this pass decided (None: all), the others' rows are left as they are."""
        self.patches = tuple(patches)
        self.preemptions = tuple(preemptions)
        self.waits = tuple(waits)
        self.usage = dict(usage or {})
        self.usage_at = usage_at
        self.events = tuple(events)
        self.forget = tuple(forget)
        self.scope = scope


class AdmissionTables:
    """Queues and admission state; ``Store`` provides ``_sessions``, ``_transaction`` and ``_apply``."""

    _sessions: Callable[[], AbstractContextManager[Session]]
    _transaction: Callable[[], AbstractContextManager[Session]]
    _apply: Callable[[Session, RunPatch, float], Run]
    _add_events: Callable[[Session, str | None, Sequence[NewEvent]], None]

    # ---- queues -------------------------------------------------------------------------------

    def queues(self) -> list[QueueSpec]:
        """Every applied queue, by name."""
        with self._sessions() as session:
            rows = session.scalars(select(QueueRow).order_by(QueueRow.name))
            return [QueueSpec.model_validate(row.spec) for row in rows]

    def apply_queues(self, specs: Sequence[QueueSpec]) -> dict[str, str]:
        """Create or update ``specs`` in one transaction; each name → created | updated | unchanged."""
        outcome: dict[str, str] = {}
        now = time.time()
        with self._transaction() as session:
            for spec in specs:
                data = spec.model_dump(mode="json")
                row = session.get(QueueRow, spec.name)
                if row is None:
                    session.add(QueueRow(name=spec.name, spec=data, applied_at=now))
                    outcome[spec.name] = "created"
                elif row.spec != data:
                    row.spec, row.applied_at = data, now
                    outcome[spec.name] = "updated"
                else:
                    outcome[spec.name] = "unchanged"
        return outcome

    def delete_queue(self, name: str) -> None:
        """Delete a queue no unfinished run names; else say which runs hold it."""
        with self._transaction() as session:
            if session.get(QueueRow, name) is None:
                raise NotFound(f"queue {name!r} not found; `orch queues` lists them")
            users = session.scalars(
                select(RunRow.id).where(RunRow.queue == name, RunRow.phase.not_in(TERMINAL)).limit(5)
            ).all()
            if users:
                raise ConflictError(
                    f"queue {name!r} still has unfinished runs ({', '.join(users)}); cancel them or wait"
                )
            session.execute(delete(QueueRow).where(QueueRow.name == name))

    # ---- the admission lease --------------------------------------------------------------------

    def acquire_admission(self, owner: str, seconds: float, *, now: float | None = None) -> int | None:
        """Take or renew the admission lease; its epoch while ``owner`` holds it, else None.

        A new holder gets a new epoch, so a holder whose lease lapsed cannot commit (see
        ``commit_admission``)."""
        now = time.time() if now is None else now
        with self._transaction() as session:
            row = session.get(AdmissionLeaseRow, LEASE_ID, with_for_update=True)
            if row is None:  # made by migration 0008; only a hand-edited database lacks it
                row = AdmissionLeaseRow(id=LEASE_ID, owner=None, epoch=0, expires_at=0.0, pass_at=0.0)
                session.add(row)
            if row.owner == owner and row.expires_at >= now:
                row.expires_at = now + seconds
                return row.epoch
            if row.owner is not None and row.expires_at >= now:
                return None
            row.owner, row.epoch, row.expires_at = owner, row.epoch + 1, now + seconds
            return row.epoch

    def admission_holder(self) -> str | None:
        with self._sessions() as session:
            row = session.get(AdmissionLeaseRow, LEASE_ID)
            return row.owner if row is not None and row.expires_at >= time.time() else None

    def admission_clock(self) -> float:
        """The controller clock's reading at the last admission pass (virtual on the simulated pool): a
        waiting run has waited this minus its ``since``."""
        with self._sessions() as session:
            row = session.get(AdmissionLeaseRow, LEASE_ID)
            return row.pass_at if row is not None else 0.0

    def release_admission(self, owner: str) -> None:
        with self._transaction() as session:
            session.execute(
                update(AdmissionLeaseRow)
                .where(AdmissionLeaseRow.id == LEASE_ID, AdmissionLeaseRow.owner == owner)
                .values(owner=None, expires_at=0.0)
            )

    def commit_admission(
        self, owner: str, epoch: int, write: AdmissionWrite, *, now: float | None = None
    ) -> None:
        """Write one admission pass, or nothing: ``ConflictError`` if ``owner`` no longer holds the lease
        at ``epoch`` or any run changed since the pass read it."""
        now = time.time() if now is None else now
        with self._transaction() as session:
            fenced = session.execute(
                update(AdmissionLeaseRow)
                .where(
                    AdmissionLeaseRow.id == LEASE_ID,
                    AdmissionLeaseRow.owner == owner,
                    AdmissionLeaseRow.epoch == epoch,
                    AdmissionLeaseRow.expires_at >= now,
                )
                .values(pass_at=write.usage_at)
            )
            if fenced.rowcount != 1:
                raise ConflictError(f"admission lease lost by {owner} (epoch {epoch}); admitting nothing")
            for patch in write.patches:
                self._apply(session, patch, now)
            if write.forget:
                session.execute(delete(PreemptionRow).where(PreemptionRow.victim.in_(write.forget)))
            for record in write.preemptions:
                session.merge(PreemptionRow(**_fields(record)))
            for run_id, event in write.events:
                self._add_events(session, run_id, [event])
            self._write_waits(session, write.waits, write.scope)
            for (queue, pool), gpus in write.usage.items():
                session.merge(QueueUsageRow(queue=queue, pool=pool, gpus=gpus, updated_at=write.usage_at))

    @staticmethod
    def _write_waits(session: Session, waits: Sequence[WaitRecord], scope: frozenset[str] | None) -> None:
        """Keep a row per waiting run (of ``scope``, if given), rewritten only when it changed."""
        rows = session.scalars(select(AdmissionWaitRow))
        current = {row.run_id: row for row in rows if scope is None or row.run_id in scope}
        wanted = {wait.run_id: wait for wait in waits}
        gone = [run_id for run_id in current if run_id not in wanted]
        if gone:
            session.execute(delete(AdmissionWaitRow).where(AdmissionWaitRow.run_id.in_(gone)))
        for run_id, wait in wanted.items():
            row = current.get(run_id)
            if row is None:
                session.add(AdmissionWaitRow(**_fields(wait)))
            elif (row.queue, row.position, row.reason, row.kind) != (
                wait.queue,
                wait.position,
                wait.reason,
                wait.kind,
            ):
                row.queue, row.position, row.reason, row.kind = (
                    wait.queue,
                    wait.position,
                    wait.reason,
                    wait.kind,
                )

    # ---- reads --------------------------------------------------------------------------------

    def preemptions(self) -> dict[str, PreemptionRecord]:
        """Runs asked to stop at their next checkpoint, by victim."""
        with self._sessions() as session:
            return {
                row.victim: PreemptionRecord(row.victim, row.by, row.reason, row.at)
                for row in session.scalars(select(PreemptionRow))
            }

    def preemption(self, run_id: str) -> PreemptionRecord | None:
        """The stop asked of one run, if any (one row: what each run's reconcile reads)."""
        with self._sessions() as session:
            row = session.get(PreemptionRow, run_id)
            return PreemptionRecord(row.victim, row.by, row.reason, row.at) if row is not None else None

    def waits(self) -> dict[str, WaitRecord]:
        """Runs waiting in their queues, by run id."""
        with self._sessions() as session:
            return {
                row.run_id: WaitRecord(row.run_id, row.queue, row.position, row.reason, row.since, row.kind)
                for row in session.scalars(select(AdmissionWaitRow))
            }

    def queue_usage(self) -> tuple[dict[tuple[str, str], float], float | None]:
        """Decayed GPUs per (queue, pool), and the clock time they were computed at (None: never)."""
        with self._sessions() as session:
            rows = list(session.scalars(select(QueueUsageRow)))
            usage = {(row.queue, row.pool): row.gpus for row in rows}
            return usage, max((row.updated_at for row in rows), default=None)

    def runs_busy_after(self, now: float) -> list[Run]:
        """Runs whose work (virtual time) ends after ``now``, finished or not: on the simulated pool a run's
        last step is recorded when it starts, and its GPUs stay taken until it ends."""
        with self._sessions() as session:
            return [
                run_record(row) for row in session.scalars(select(RunRow).where(RunRow.sim_ready_at > now))
            ]

    # ---- the shared virtual clock ---------------------------------------------------------------

    def clock(self, name: str) -> float:
        with self._sessions() as session:
            row = session.get(ClockRow, name)
            return row.now if row is not None else 0.0

    def advance_clock(self, name: str, to: float) -> float:
        """Move clock ``name`` forward to ``to`` (never back); the time it reads now."""
        with self._transaction() as session:
            row = session.get(ClockRow, name, with_for_update=True)
            if row is None:
                session.add(ClockRow(name=name, now=to))
                return to
            row.now = max(row.now, to)
            return row.now


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}

"""What ``orch queues`` and the ``orch_queue_*`` metrics show: per queue and pool, the quota, the GPUs its
admitted runs hold, what they borrow beyond the quota, and the runs waiting. Pure: runs and queues in,
rows out.

A run *holds* quota while it is not terminal and has been admitted (``admitted_at`` set); it holds its gang's
GPUs per pool. A run is *pending* in its queue while it is not terminal, not admitted, and Pending,
Resuming, or Suspended because it was preempted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.members import desired_members
from orchestrator.core.queueing import gang_gpus
from orchestrator.records import Phase, Run
from orchestrator.spec import RunSpec
from orchestrator.spec.queues import QueueSpec, default_queue

__all__ = ["QueueRow", "holds_quota", "is_pending", "pool_capacities", "queue_rows", "run_gpus"]


@dataclass(frozen=True)
class QueueRow:
    """One queue in one pool."""

    queue: str
    pool: str
    nominal: int  # GPUs guaranteed
    borrowing_limit: int | None  # most GPUs it may borrow beyond nominal; None: as much as its cohort has
    used: int  # GPUs its admitted runs hold
    borrowed: int  # GPUs held beyond nominal
    pending_runs: int  # runs waiting in the queue for GPUs of this pool
    pending_gpus: int  # the GPUs they ask for
    admitted: int  # runs holding GPUs of this pool
    cohort: str | None
    weight: float
    applied: bool = True  # False: the implicit default queue, or a queue runs name that is not applied


def holds_quota(run: Run) -> bool:
    return not run.phase.terminal and run.admitted_at is not None


def is_pending(run: Run) -> bool:
    if run.phase.terminal or run.admitted_at is not None:
        return False
    return run.phase in (Phase.PENDING, Phase.RESUMING) or (
        run.phase is Phase.SUSPENDED and run.suspend_reason == "preempted"
    )


def run_gpus(run: Run) -> dict[str, int]:
    """GPUs per pool the run's gang holds (or asks for) in its current attempt."""
    spec = RunSpec.model_validate(run.spec)
    return gang_gpus(tuple(desired_members(spec, run.id, max(run.attempt, 1))))


def pool_capacities(runs: Iterable[Run]) -> dict[str, int]:
    """GPUs per pool as the runs' specs declare them (the largest any run declares), for the implicit
    default queue when no cluster inventory is at hand."""
    capacity: dict[str, int] = {}
    for run in runs:
        for name, pool in RunSpec.model_validate(run.spec).pools.items():
            capacity[name] = max(capacity.get(name, 0), pool.gpus)
    return capacity


def queue_rows(
    queues: Sequence[QueueSpec], runs: Sequence[Run], capacities: Mapping[str, int] | None = None
) -> list[QueueRow]:
    """A row per queue and pool, by queue then pool: each applied queue's quota pools, and every pool its
    runs hold or ask for. With no queue applied, the implicit default queue owns ``capacities`` (default:
    the runs' declared pools). A queue runs name but nobody applied shows with no quota."""
    applied = list(queues) or [default_queue(dict(capacities or pool_capacities(runs)))]
    explicit = bool(queues)
    used: dict[tuple[str, str], int] = {}
    admitted: dict[tuple[str, str], int] = {}
    pending_runs: dict[tuple[str, str], int] = {}
    pending_gpus: dict[tuple[str, str], int] = {}
    for run in runs:
        holding, waiting = holds_quota(run), is_pending(run)
        if not (holding or waiting):
            continue
        for pool, gpus in run_gpus(run).items():
            key = (run.queue, pool)
            if holding:
                used[key] = used.get(key, 0) + gpus
                admitted[key] = admitted.get(key, 0) + 1
            else:
                pending_runs[key] = pending_runs.get(key, 0) + 1
                pending_gpus[key] = pending_gpus.get(key, 0) + gpus
    specs = {queue.name: queue for queue in applied}
    keys = {(queue.name, quota.pool) for queue in applied for quota in queue.quotas}
    keys |= set(used) | set(pending_runs)
    rows = []
    for name, pool in sorted(keys):
        spec = specs.get(name)
        quota = next((q for q in spec.quotas if q.pool == pool), None) if spec else None
        nominal = quota.nominal if quota else 0
        held = used.get((name, pool), 0)
        rows.append(
            QueueRow(
                queue=name,
                pool=pool,
                nominal=nominal,
                borrowing_limit=quota.borrowing_limit if quota else None,
                used=held,
                borrowed=max(0, held - nominal),
                pending_runs=pending_runs.get((name, pool), 0),
                pending_gpus=pending_gpus.get((name, pool), 0),
                admitted=admitted.get((name, pool), 0),
                cohort=spec.cohort if spec else None,
                weight=spec.weight if spec else 1.0,
                applied=explicit and spec is not None,
            )
        )
    return rows

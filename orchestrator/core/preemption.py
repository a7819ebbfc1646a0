"""Which admitted runs a waiting run may stop at their next checkpoint, and the smallest set that lets it in.

A holder is a possible victim when it is preemptible, not already stopping, past its queue's minimum run
time, and one of: (a) a lower-priority run of the candidate's own queue (``preempt_within_queue``);
(b) a run of another queue of the cohort that borrows in a pool the candidate needs, while the candidate
stays within its own nominal quota (``reclaim_within_cohort``: any | lower-priority | never); (c) a
lower-priority run of any other queue holding GPUs in a pool the candidate needs (for nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.queueing import Candidate, Holder, QueueView
from orchestrator.core.quota import QuotaLedger

__all__ = ["Victim", "protected", "smallest_set", "victims_for"]

_DEFAULT = QueueView(name="", nominal={})


@dataclass(frozen=True)
class Victim:
    holder: Holder
    why: str  # why this run may be stopped for the candidate


def protected(holder: Holder, queues: Mapping[str, QueueView], now: float) -> bool:
    """A run admitted less than its queue's ``min_run_s`` ago is not preempted (no thrashing)."""
    return holder.admitted_at + queues.get(holder.queue, _DEFAULT).min_run_s > now


def victims_for(
    candidate: Candidate,
    queue: QueueView,
    holders: Sequence[Holder],
    ledger: QuotaLedger,
    now: float,
    taken: set[str],
) -> list[Victim]:
    """The possible victims in the order they are chosen: lowest priority, then most recently admitted."""
    pools = set(candidate.gpus)
    within_nominal = ledger.within_nominal(queue.name, candidate.gpus)
    found: list[Victim] = []
    for holder in holders:
        if (
            not holder.preemptible
            or holder.stopping
            or holder.run_id in taken
            or not pools & set(holder.gpus)
            or protected(holder, ledger.queues, now)
        ):
            continue
        why = _why(candidate, queue, holder, ledger, pools, within_nominal)
        if why:
            found.append(Victim(holder, why))
    found.sort(key=lambda v: (v.holder.priority, -v.holder.admitted_at, v.holder.run_id))
    return found


def _why(
    candidate: Candidate,
    queue: QueueView,
    holder: Holder,
    ledger: QuotaLedger,
    pools: set[str],
    within_nominal: bool,
) -> str:
    lower = holder.priority < candidate.priority
    if holder.queue == queue.name:
        if queue.preempt_within_queue and lower:
            return f"it has lower priority ({holder.priority} < {candidate.priority}) in the same queue"
        return ""
    if within_nominal and queue.cohort is not None and ledger.cohort(holder.queue) == queue.cohort:
        lent = sorted(p for p in pools & set(holder.gpus) if ledger.borrowing(holder.queue, p) > 0)
        policy = queue.reclaim_within_cohort
        if lent and (policy == "any" or (policy == "lower-priority" and lower)):
            pool = lent[0]
            return (
                f"queue {holder.queue} borrows {ledger.borrowing(holder.queue, pool)} GPUs of pool {pool} "
                f"from cohort {queue.cohort}, and queue {queue.name} needs its nominal quota back"
            )
    if lower:
        return (
            f"it has lower priority ({holder.priority} < {candidate.priority}) and holds GPUs of pool "
            f"{', '.join(sorted(pools & set(holder.gpus)))} the run needs"
        )
    return ""


def smallest_set(
    returning: Sequence[Holder], victims: Sequence[Victim], fits: Callable[[list[Holder]], bool]
) -> tuple[list[Holder], list[Victim]] | None:
    """The holders already stopping and the new victims without which the candidate would not fit, or None
    when even all of them are not enough. Greedy in order, then every member not needed is dropped
    (new victims highest priority first, then the stopping ones): no single one can be left out."""
    everything = [*returning, *(v.holder for v in victims)]
    if not everything or not fits(everything):
        return None
    chosen: list[Holder] = []
    for holder in everything:
        chosen.append(holder)
        if fits(chosen):
            break
    by_id = {v.holder.run_id: v for v in victims}
    new = [h for h in chosen if h.run_id in by_id]
    drop_order = sorted(new, key=lambda h: (-h.priority, h.admitted_at, h.run_id))
    drop_order += [h for h in chosen if h.run_id not in by_id]
    for holder in drop_order:
        rest = [h for h in chosen if h.run_id != holder.run_id]
        if fits(rest):
            chosen = rest
    kept = {h.run_id for h in chosen}
    return (
        [h for h in chosen if h.run_id not in by_id],
        [v for v in victims if v.holder.run_id in kept],
    )

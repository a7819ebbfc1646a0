"""Quota in one admission pass: GPUs used per (queue, pool) and (cohort, pool), and whether a run fits.

A queue without a cohort fits while ``used + g <= nominal``. A queue in a cohort fits while
``used + g <= nominal + borrowing_limit`` (``None``: no limit) and ``cohort used + g <= cohort nominal``
(the sum of its queues' nominals); what lies beyond the queue's nominal is borrowed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.core.queueing import Holder, QueueView

__all__ = ["QuotaFit", "QuotaLedger"]

_SHOWN = 3  # runs named in a reason


@dataclass(frozen=True)
class QuotaFit:
    ok: bool
    borrowed: Mapping[str, int] = field(default_factory=dict)
    reason: str = ""


def names(runs: Sequence[str]) -> str:
    """``x, y, z and 2 more``."""
    shown = ", ".join(runs[:_SHOWN])
    return shown + (f" and {len(runs) - _SHOWN} more" if len(runs) > _SHOWN else "")


class QuotaLedger:
    """GPUs counted against each queue and cohort; ``add`` as runs are admitted or reserved in the pass."""

    def __init__(self, queues: Sequence[QueueView], holders: Iterable[Holder]) -> None:
        self.queues = {queue.name: queue for queue in queues}
        self.used: dict[tuple[str, str], int] = defaultdict(int)
        self.runs: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._cohort_used: dict[tuple[str, str], int] = defaultdict(int)
        self._cohort_nominal: dict[tuple[str, str], int] = defaultdict(int)
        for queue in queues:
            if queue.cohort is not None:
                for pool, gpus in queue.nominal.items():
                    self._cohort_nominal[(queue.cohort, pool)] += gpus
        for holder in holders:
            self.add(holder.queue, holder.gpus, holder.run_id)

    def cohort(self, queue: str) -> str | None:
        view = self.queues.get(queue)
        return view.cohort if view is not None else None

    def nominal(self, queue: str, pool: str) -> int:
        view = self.queues.get(queue)
        return view.nominal.get(pool, 0) if view is not None else 0

    def add(self, queue: str, gpus: Mapping[str, int], run_id: str) -> None:
        cohort = self.cohort(queue)
        for pool, count in gpus.items():
            self.used[(queue, pool)] += count
            self.runs[(queue, pool)].append(run_id)
            if cohort is not None:
                self._cohort_used[(cohort, pool)] += count

    def offset(self, queue: str, gpus: Mapping[str, int], released: Iterable[Holder]) -> None:
        """A run reserved ``gpus`` of ``queue`` that ``released`` holders will give back: count no more
        than the net in the queue and its cohort. What the holders give back beyond ``gpus`` stays
        counted (they hold it until they stop), so the pass hands out nothing that is not free yet."""
        cohort = self.cohort(queue)
        same_queue: dict[str, int] = defaultdict(int)
        same_cohort: dict[str, int] = defaultdict(int)
        for holder in released:
            for pool, count in holder.gpus.items():
                if holder.queue == queue:
                    same_queue[pool] += count
                if cohort is not None and self.cohort(holder.queue) == cohort:
                    same_cohort[pool] += count
        for pool, need in gpus.items():
            self.used[(queue, pool)] -= min(need, same_queue[pool])
            if cohort is not None:
                self._cohort_used[(cohort, pool)] -= min(need, same_cohort[pool])

    def borrowing(self, queue: str, pool: str) -> int:
        return max(0, self.used.get((queue, pool), 0) - self.nominal(queue, pool))

    def within_nominal(self, queue: str, gpus: Mapping[str, int]) -> bool:
        return all(self.used.get((queue, p), 0) + g <= self.nominal(queue, p) for p, g in gpus.items())

    def check(self, queue: str, gpus: Mapping[str, int], released: Iterable[Holder] = ()) -> QuotaFit:
        """Whether ``gpus`` fit the queue's quota once the ``released`` holders' GPUs are given back."""
        view = self.queues[queue]
        freed: dict[tuple[str, str], int] = defaultdict(int)
        cohort_freed: dict[tuple[str, str], int] = defaultdict(int)
        for holder in released:
            other = self.cohort(holder.queue)
            for pool, count in holder.gpus.items():
                freed[(holder.queue, pool)] += count
                if other is not None:
                    cohort_freed[(other, pool)] += count
        borrowed: dict[str, int] = {}
        for pool, need in sorted(gpus.items()):
            used = self.used.get((queue, pool), 0) - freed[(queue, pool)]
            nominal = view.nominal.get(pool, 0)
            held = f" (runs {names(self.runs[(queue, pool)])})" if used > 0 else ""
            mine = f"queue {queue}: quota {used} of {nominal} GPUs of pool {pool} in use{held}"
            if view.cohort is None:
                if used + need > nominal:
                    return QuotaFit(False, reason=f"{mine}, the run needs {need}; no cohort to borrow from")
                continue
            limit = view.borrowing_limit.get(pool)
            if limit is not None and used + need > nominal + limit:
                why = f"{mine}, the run needs {need}; it may borrow at most {limit} from cohort {view.cohort}"
                return QuotaFit(False, reason=why)
            key = (view.cohort, pool)
            cohort_used = self._cohort_used[key] - cohort_freed[key]
            if cohort_used + need > self._cohort_nominal[key]:
                lends = max(0, self._cohort_nominal[key] - cohort_used)
                why = (
                    f"{mine}, the run needs {need}; cohort {view.cohort} has {cohort_used} of "
                    f"{self._cohort_nominal[key]} GPUs of pool {pool} in use and lends "
                    + (f"only {lends}" if lends else "none")
                )
                return QuotaFit(False, reason=why)
            beyond = max(0, used + need - nominal) - max(0, used - nominal)
            if beyond:
                borrowed[pool] = beyond
        return QuotaFit(True, borrowed=borrowed)

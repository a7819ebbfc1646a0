"""One admission pass over one snapshot, in the style of Kueue's scheduler loop.

1. Build the pass's state: one free-GPU map (``snapshot.nodes`` less ``snapshot.used``), consumed as gangs
   are bound; quota used per (queue, pool) and (cohort, pool) from every holder (stopping ones included:
   they hold until they release).
2. Runs that hold quota already (admitted, their gang failed) need nodes only: they go first.
3. Each queue's line: effective priority (priority + one level per ``aging_s`` waited), then waited
   longest, then run id.
4. Heads in order: a head that has waited longer than ``starvation_s`` before any other (longest first);
   then the head of the queue with the lowest weighted dominant share (``fairshare``).
5. Fit the head against quota (nominal, borrowing, cohort) and nodes (``place_gang`` with its queue's
   policy) → admit and bind; otherwise, if GPUs of runs already stopping (not claimed by another run of
   this pass), plus the smallest set of new victims (``preemption``), would let it in → preempt them and
   reserve the GPUs and quota for it (nominated), so nobody else in the pass takes them; otherwise wait
   with the reason. A starving head that does not fit for lack of nodes closes its pools for the rest of
   the pass. Best effort FIFO: the next run of the queue is tried either way.

Pure: no clock reads (``snapshot.now``), deterministic for one snapshot.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.core.fairshare import decay_usage, dominant_share, effective_priority, is_starving
from orchestrator.core.placement import FreeMap, MemberRequest, Placement, PlacementPolicy, place_gang
from orchestrator.core.preemption import protected, smallest_set, victims_for
from orchestrator.core.queueing import (
    AdmissionResult,
    AdmissionSnapshot,
    Admit,
    Candidate,
    Holder,
    Preempt,
    QueueView,
    Wait,
)
from orchestrator.core.quota import QuotaLedger, names

__all__ = ["admission_pass", "decay_usage", "line_order"]


def admission_pass(snapshot: AdmissionSnapshot) -> AdmissionResult:
    """Admit, preempt for, or explain the wait of every candidate of ``snapshot``."""
    state = _Pass(snapshot)  # 1.
    queues = state.queues
    placed_again = sorted((c for c in snapshot.candidates if c.holds_quota), key=_fifo)
    for candidate in placed_again:  # 2.
        state.place_again(candidate)
    lines = _lines(snapshot, queues)  # 3.
    for candidate in snapshot.candidates:
        if not candidate.holds_quota and candidate.queue not in queues:
            state.wait(candidate, f"queue {candidate.queue!r} does not exist", "queue")
    for candidate in sorted((c for line in lines.values() for c in line if c.nominated), key=_fifo):
        state.consider(candidate, queues[candidate.queue])  # its victims' GPUs were kept for it
    cursor = {name: sum(1 for c in line if c.nominated) for name, line in lines.items()}
    heap = [
        state.head_key(name, line[cursor[name]]) for name, line in lines.items() if cursor[name] < len(line)
    ]
    heapq.heapify(heap)
    while heap:  # 4.
        name = heapq.heappop(heap)[-1]
        candidate = lines[name][cursor[name]]
        state.consider(candidate, queues[name])  # 5.
        cursor[name] += 1
        if cursor[name] < len(lines[name]):
            heapq.heappush(heap, state.head_key(name, lines[name][cursor[name]]))
    return state.result(lines, placed_again)


def line_order(candidate: Candidate, queue: QueueView, now: float) -> tuple[int, float, str]:
    """Sort key of a queue's line: highest effective priority, then waited longest, then run id."""
    level = effective_priority(candidate.priority, candidate.queued_since, now, queue.aging_s)
    return (-level, candidate.queued_since, candidate.run_id)


def _fifo(candidate: Candidate) -> tuple[int, float, str]:
    return (-candidate.priority, candidate.queued_since, candidate.run_id)


def _lines(snapshot: AdmissionSnapshot, queues: dict[str, QueueView]) -> dict[str, list[Candidate]]:
    """Each queue's line: nominated runs first, then in ``line_order``."""
    lines: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in snapshot.candidates:
        if not candidate.holds_quota and candidate.queue in queues:
            lines[candidate.queue].append(candidate)
    for name, line in lines.items():
        line.sort(key=lambda c: (not c.nominated, *line_order(c, queues[name], snapshot.now)))
    return dict(sorted(lines.items()))


def _gpus_on_nodes(members: Sequence[MemberRequest], placement: Placement) -> dict[str, int]:
    taken: dict[str, int] = defaultdict(int)
    for member in members:
        if member.same_node_as is None:
            taken[placement.nodes[member.key]] += member.gpus
    return taken


def _gpus_text(gpus: dict[str, int]) -> str:
    return ", ".join(f"{count} GPUs of pool {pool}" for pool, count in sorted(gpus.items())) or "no GPUs"


@dataclass(frozen=True)
class _Plan:
    placement: Placement
    returning: list[Holder]  # already stopping, their GPUs claimed for this run
    victims: list[tuple[Holder, str]]  # stopped now for this run, and why


class _Pass:
    """The mutable state of one pass: free GPUs, quota used, claims, closed pools, and the decisions."""

    def __init__(self, snapshot: AdmissionSnapshot) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.queues = {queue.name: queue for queue in snapshot.queues}
        self.free = FreeMap(snapshot.nodes, snapshot.used)
        holder_ids = {holder.run_id for holder in snapshot.holders}
        # A run placed again holds quota; count it when the controller did not list it as a holder too.
        extra = [
            Holder(c.run_id, c.queue, c.priority, c.preemptible, c.gpus, {}, c.queued_since)
            for c in snapshot.candidates
            if c.holds_quota and c.run_id not in holder_ids
        ]
        self.ledger = QuotaLedger(snapshot.queues, [*snapshot.holders, *extra])
        self.holders = sorted(snapshot.holders, key=lambda h: h.run_id)
        # Looked at for every candidate that does not fit: kept short, once per pass.
        self._stopping = [h for h in self.holders if h.stopping]
        self._stoppable = [
            h
            for h in self.holders
            if h.preemptible and not h.stopping and not protected(h, self.queues, self.now)
        ]
        self.claimed: set[str] = set()  # stopping or preempted holders whose GPUs a nominated run will take
        self.closed: dict[str, str] = {}  # pool → the starving run it is kept for
        self.capacity = {pool: self.free.pool_capacity(pool) for pool in {n.pool for n in snapshot.nodes}}
        self.in_pass: dict[tuple[str, str], int] = defaultdict(int)
        self.admitted: list[Admit] = []
        self.preemptions: list[Preempt] = []
        self.waits: dict[str, tuple[str, str]] = {}  # run id → (reason, kind)
        self._held_by: dict[str, tuple[list[str], int]] = {}
        self._unfit: set[tuple[tuple[str, ...], tuple[tuple[str, int, bool], ...]]] = set()

    # ---- order -------------------------------------------------------------------------------------

    def head_key(self, queue: str, head: Candidate) -> tuple[int, float, str, str]:
        settings = self.snapshot.settings
        if is_starving(head.queued_since, self.now, settings.starvation_s):
            return (0, head.queued_since, head.run_id, queue)
        view = self.queues[queue]
        share = dominant_share(queue, view.weight, self.snapshot.usage, self.in_pass, self.capacity)
        return (1, share, "", queue)

    # ---- decisions ---------------------------------------------------------------------------------

    def place_again(self, candidate: Candidate) -> None:
        queue = self.queues.get(candidate.queue)
        policy = queue.placement if queue is not None else PlacementPolicy()
        placement = self._place(candidate, policy)
        if placement.ok:
            self.admitted.append(Admit(candidate.run_id, dict(placement.nodes)))
        else:
            self.wait(candidate, self._nodes_reason(candidate), "nodes")

    def consider(self, candidate: Candidate, queue: QueueView) -> None:
        gpus = candidate.gpus
        held = sorted(pool for pool in gpus if pool in self.closed)
        if held:
            run = self.closed[held[0]]
            why = f"pool {held[0]} is kept for run {run}, which has waited longest and needs its freed GPUs"
            self.wait(candidate, why, "held")
            return
        quota = self.ledger.check(queue.name, gpus)
        if quota.ok:
            placement = self._place(candidate, queue.placement)
            if placement.ok:
                self._count(candidate, queue.name)
                self.admitted.append(Admit(candidate.run_id, dict(placement.nodes), dict(quota.borrowed)))
                return
        plan = self._plan(candidate, queue)
        if plan is not None:
            self._nominate(candidate, queue, plan)
            return
        if not quota.ok:
            self.wait(candidate, quota.reason, "quota")
            return
        self.wait(candidate, self._nodes_reason(candidate), "nodes")
        if is_starving(candidate.queued_since, self.now, self.snapshot.settings.starvation_s):
            for pool in gpus:
                self.closed.setdefault(pool, candidate.run_id)

    def _place(self, candidate: Candidate, policy: PlacementPolicy) -> Placement:
        """Place and bind the gang, or say why not. GPUs are only taken during a pass (dry runs give back
        what they borrow), so a gang of a shape that did not fit will not fit later in the pass either:
        such a shape is refused without a search."""
        shape = (
            policy.scores,
            tuple(sorted((m.pool, m.gpus, m.same_node_as is None) for m in candidate.members)),
        )
        if shape in self._unfit:
            return Placement(nodes={}, reason="a gang of this shape did not fit earlier in the pass")
        placement = place_gang(candidate.members, self.free, policy, keep=True)
        if not placement.ok:
            self._unfit.add(shape)
        return placement

    def wait(self, candidate: Candidate, reason: str, kind: str) -> None:
        self.waits[candidate.run_id] = (reason, kind)

    # ---- preemption --------------------------------------------------------------------------------

    def _plan(self, candidate: Candidate, queue: QueueView) -> _Plan | None:
        pools = set(candidate.gpus)
        returning = [h for h in self._stopping if h.run_id not in self.claimed and pools & set(h.gpus)]
        victims = victims_for(candidate, queue, self._stoppable, self.ledger, self.now, self.claimed)
        if not returning and not victims:
            return None
        found: dict[tuple[str, ...], Placement] = {}

        def fits(released: list[Holder]) -> bool:
            if not self.ledger.check(queue.name, candidate.gpus, released).ok:
                return False
            placement = self._dry_run(candidate.members, queue.placement, released)
            found[tuple(h.run_id for h in released)] = placement
            return placement.ok

        chosen = smallest_set(returning, victims, fits)
        if chosen is None:
            return None
        stopping, new = chosen
        released = [*stopping, *(v.holder for v in new)]
        key = tuple(h.run_id for h in released)
        placement = found.get(key) or self._dry_run(candidate.members, queue.placement, released)
        return _Plan(placement, stopping, [(v.holder, v.why) for v in new])

    def _dry_run(
        self, members: Sequence[MemberRequest], policy: PlacementPolicy, released: Iterable[Holder]
    ) -> Placement:
        given = [(n, g) for h in released for n, g in h.nodes.items() if n in self.free.nodes]
        for node, gpus in given:
            self.free.give(node, gpus)
        try:
            return place_gang(members, self.free, policy)
        finally:
            for node, gpus in given:
                self.free.take(node, gpus)

    def _nominate(self, candidate: Candidate, queue: QueueView, plan: _Plan) -> None:
        """Reserve for ``candidate`` what it will take once its victims release: the quota (net of what the
        victims give back to its queue and cohort) and, per node, the GPUs the victims will not give back."""
        released = [*plan.returning, *(holder for holder, _ in plan.victims)]
        back: dict[str, int] = defaultdict(int)
        for holder in released:
            self.claimed.add(holder.run_id)
            for node, gpus in holder.nodes.items():
                back[node] += gpus
        for node, gpus in _gpus_on_nodes(candidate.members, plan.placement).items():
            if gpus > back[node]:
                self.free.take(node, gpus - back[node])
        self._count(candidate, queue.name)
        self.ledger.offset(queue.name, candidate.gpus, released)  # the victims' quota becomes its own
        needs = _gpus_text(candidate.gpus)
        for holder, why in plan.victims:
            reason = f"run {candidate.run_id} (queue {queue.name}) needs {needs}; run {holder.run_id}: {why}"
            self.preemptions.append(Preempt(holder.run_id, candidate.run_id, reason))
        freed = sum(g for h in released for p, g in h.gpus.items() if p in candidate.gpus)
        ids = [h.run_id for h in released]
        since = "preempted for this run" if plan.victims else "already stopping"
        run_s = "run" if len(ids) == 1 else "runs"
        why = f"waiting for {run_s} {names(ids)} to stop and release {freed} GPUs ({since})"
        self.wait(candidate, why, "stopping")

    # ---- bookkeeping -------------------------------------------------------------------------------

    def _count(self, candidate: Candidate, queue: str) -> None:
        self.ledger.add(queue, candidate.gpus, candidate.run_id)
        for pool, gpus in candidate.gpus.items():
            self.in_pass[(queue, pool)] += gpus

    def _nodes_reason(self, candidate: Candidate) -> str:
        """Which pool is short, by how much, and which runs hold it: O(1) per pool, from the index."""
        for pool, need in sorted(candidate.gpus.items()):
            largest = max((m.gpus for m in candidate.members if m.pool == pool), default=0)
            index = self.free.pool_index(pool)
            if index is None or index.top < largest:
                return f"pool {pool}: no ready node has {largest} GPUs for one member of the gang"
            free = self.free.pool_free(pool)
            holding, held = self._holding(pool)
            who = f" (runs {names(holding)} hold {held})" if holding else ""
            if free < need:
                return f"pool {pool}: {free} GPUs free, the gang needs {need}{who}"
            if len(candidate.gpus) == 1:
                return (
                    f"pool {pool}: {free} GPUs free but scattered; the gang needs {need}, "
                    f"{largest} on one node{who}"
                )
        return f"the gang needs {_gpus_text(candidate.gpus)}; they are free, but not on nodes that fit it"

    def _holding(self, pool: str) -> tuple[list[str], int]:
        """The runs holding GPUs of ``pool`` (most first) and how many they hold, once per pass."""
        if pool not in self._held_by:
            held: dict[str, int] = defaultdict(int)
            for holder in self.holders:
                for node, gpus in holder.nodes.items():
                    view = self.free.nodes.get(node)
                    if view is not None and view.pool == pool:
                        held[holder.run_id] += gpus
            ranked = sorted(held, key=lambda run: (-held[run], run))
            self._held_by[pool] = (ranked, sum(held.values()))
        return self._held_by[pool]

    def result(self, lines: dict[str, list[Candidate]], placed_again: list[Candidate]) -> AdmissionResult:
        waiting: list[Wait] = []
        positions: dict[str, int] = defaultdict(int)
        for candidate in [*placed_again, *(c for line in lines.values() for c in line)]:
            positions[candidate.queue] += 1
            if candidate.run_id in self.waits:
                reason, kind = self.waits[candidate.run_id]
                position = positions[candidate.queue]
                waiting.append(Wait(candidate.run_id, candidate.queue, position, reason, kind))
        for candidate in self.snapshot.candidates:
            if candidate.queue not in self.queues and not candidate.holds_quota:
                reason, kind = self.waits[candidate.run_id]
                waiting.append(Wait(candidate.run_id, candidate.queue, 1, reason, kind))
        return AdmissionResult(tuple(self.admitted), tuple(self.preemptions), tuple(waiting))

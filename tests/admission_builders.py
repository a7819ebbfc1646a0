"""Builders for admission tests (``make_run("x").gpus(16).queue("a").candidate()``) and an oracle that says,
independently of ``orchestrator.core.admission``, whether a run fits quota and nodes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.core.placement import FreeMap, MemberRequest, NodeView, PlacementPolicy, place_gang
from orchestrator.core.queueing import (
    AdmissionSettings,
    AdmissionSnapshot,
    Admit,
    Candidate,
    Holder,
    QueueView,
    gang_gpus,
)


@dataclass(frozen=True)
class RunBuilder:
    run_id: str
    queue_name: str = "a"
    prio: int = 0
    can_preempt: bool = True
    members: tuple[MemberRequest, ...] = (MemberRequest("trainer-0", "h100", 8),)
    since: float = 0.0
    at: float = -10_000.0
    node_gpus: Mapping[str, int] | None = None
    is_stopping: bool = False
    holds: bool = False

    def queue(self, name: str) -> RunBuilder:
        return replace(self, queue_name=name)

    def priority(self, value: int) -> RunBuilder:
        return replace(self, prio=value)

    def preemptible(self, value: bool = True) -> RunBuilder:
        return replace(self, can_preempt=value)

    def gpus(self, count: int, pool: str = "h100", per_member: int | None = None) -> RunBuilder:
        """``count`` GPUs of ``pool`` in members of ``per_member`` each (default: one member, up to 8)."""
        per = per_member or min(count, 8)
        members = tuple(MemberRequest(f"trainer-{i}", pool, per, index=i) for i in range(count // per))
        return replace(self, members=members)

    def also(self, count: int, pool: str) -> RunBuilder:
        """One more member of ``count`` GPUs in ``pool``."""
        member = MemberRequest(f"m-{pool}-{len(self.members)}", pool, count)
        return replace(self, members=(*self.members, member))

    def queued(self, since: float) -> RunBuilder:
        return replace(self, since=since)

    def admitted(self, at: float) -> RunBuilder:
        return replace(self, at=at)

    def on(self, nodes: Mapping[str, int]) -> RunBuilder:
        return replace(self, node_gpus=dict(nodes))

    def stopping(self) -> RunBuilder:
        return replace(self, is_stopping=True)

    def holding_quota(self) -> RunBuilder:
        return replace(self, holds=True)

    def candidate(self) -> Candidate:
        return Candidate(
            self.run_id, self.queue_name, self.prio, self.can_preempt, self.since, self.members, self.holds
        )

    def holder(self) -> Holder:
        assert self.node_gpus is not None, "a holder needs .on({node: gpus})"
        return Holder(
            self.run_id,
            self.queue_name,
            self.prio,
            self.can_preempt,
            gang_gpus(self.members),
            self.node_gpus,
            self.at,
            self.is_stopping,
        )


def make_run(run_id: str) -> RunBuilder:
    return RunBuilder(run_id)


def make_queue(name: str, nominal: Mapping[str, int] | int = 16, **fields: object) -> QueueView:
    quota = {"h100": nominal} if isinstance(nominal, int) else dict(nominal)
    return QueueView(name=name, nominal=quota, **fields)  # type: ignore[arg-type]


def make_nodes(count: int, pool: str = "h100", gpus: int = 8, prefix: str | None = None) -> list[NodeView]:
    stem = prefix if prefix is not None else f"{pool}-"
    return [NodeView(f"{stem}{i}", pool, gpus) for i in range(count)]


def used_by(holders: Iterable[Holder]) -> dict[str, int]:
    used: dict[str, int] = defaultdict(int)
    for holder in holders:
        for node, gpus in holder.nodes.items():
            used[node] += gpus
    return dict(used)


def make_snapshot(
    *,
    queues: Sequence[QueueView],
    nodes: Sequence[NodeView],
    holders: Sequence[Holder] = (),
    candidates: Sequence[Candidate] = (),
    now: float = 0.0,
    usage: Mapping[tuple[str, str], float] | None = None,
    starvation_s: float = 3600.0,
) -> AdmissionSnapshot:
    return AdmissionSnapshot(
        now=now,
        queues=tuple(queues),
        nodes=tuple(nodes),
        used=used_by(holders),
        holders=tuple(holders),
        candidates=tuple(candidates),
        usage=dict(usage or {}),
        settings=AdmissionSettings(starvation_s=starvation_s),
    )


def holder_from(candidate: Candidate, admit: Admit, now: float) -> Holder:
    """The holder an admitted candidate becomes once its gang is bound where the pass said."""
    nodes: dict[str, int] = defaultdict(int)
    for member in candidate.members:
        if member.same_node_as is None:
            nodes[admit.nodes[member.key]] += member.gpus
    return Holder(
        candidate.run_id,
        candidate.queue,
        candidate.priority,
        candidate.preemptible,
        candidate.gpus,
        dict(nodes),
        now,
    )


# ---- the oracle -------------------------------------------------------------------------------------


def quota_use(holders: Iterable[Holder]) -> dict[tuple[str, str], int]:
    use: dict[tuple[str, str], int] = defaultdict(int)
    for holder in holders:
        for pool, gpus in holder.gpus.items():
            use[(holder.queue, pool)] += gpus
    return use


def quota_violations(queues: Sequence[QueueView], holders: Sequence[Holder]) -> list[str]:
    """Every (queue, pool) over nominal + borrowing limit, every (cohort, pool) over its nominal."""
    views = {q.name: q for q in queues}
    use = quota_use(holders)
    bad: list[str] = []
    cohort_use: dict[tuple[str, str], int] = defaultdict(int)
    cohort_nominal: dict[tuple[str, str], int] = defaultdict(int)
    for queue in queues:
        if queue.cohort:
            for pool, gpus in queue.nominal.items():
                cohort_nominal[(queue.cohort, pool)] += gpus
    for (name, pool), gpus in use.items():
        view = views[name]
        limit = view.borrowing_limit.get(pool) if view.cohort else 0
        ceiling = view.nominal.get(pool, 0) + (limit if limit is not None else 10**9)
        if gpus > ceiling:
            bad.append(f"queue {name} uses {gpus} of pool {pool}, ceiling {ceiling}")
        if view.cohort:
            cohort_use[(view.cohort, pool)] += gpus
    for key, gpus in cohort_use.items():
        if gpus > cohort_nominal[key]:
            bad.append(f"cohort {key} uses {gpus} of {cohort_nominal[key]}")
    return bad


def node_violations(nodes: Sequence[NodeView], holders: Sequence[Holder]) -> list[str]:
    size = {node.name: node.gpus for node in nodes}
    return [f"node {n}: {g} of {size[n]}" for n, g in used_by(holders).items() if g > size[n]]


def fits_quota(queues: Sequence[QueueView], holders: Sequence[Holder], candidate: Candidate) -> bool:
    extra = Holder(candidate.run_id, candidate.queue, 0, False, candidate.gpus, {}, 0.0)
    return not quota_violations(queues, [*holders, extra])


def fits_nodes(
    nodes: Sequence[NodeView],
    used: Mapping[str, int],
    candidate: Candidate,
    policy: PlacementPolicy | None = None,
) -> bool:
    return place_gang(candidate.members, FreeMap(nodes, used), policy or PlacementPolicy()).ok

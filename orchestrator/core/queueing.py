"""The values one admission pass reads and returns (``orchestrator.core.admission.admission_pass``).

The controller builds an ``AdmissionSnapshot`` from SQL (queues, runs, live workloads, queue usage) and
the cluster (nodes); the pass returns an ``AdmissionResult`` the controller writes in one fenced SQL
transaction. Times are the controller's clock: virtual seconds on the simulated pool, wall seconds
elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from orchestrator.core.placement import MemberRequest, NodeView, PlacementPolicy

__all__ = [
    "AdmissionResult",
    "AdmissionSettings",
    "AdmissionSnapshot",
    "Admit",
    "Candidate",
    "Holder",
    "Preempt",
    "QueueView",
    "Wait",
    "gang_gpus",
]


def gang_gpus(members: tuple[MemberRequest, ...]) -> dict[str, int]:
    """GPUs a gang holds per pool (colocated members share their host's)."""
    gpus: dict[str, int] = {}
    for member in members:
        if member.same_node_as is None:
            gpus[member.pool] = gpus.get(member.pool, 0) + member.gpus
    return gpus


@dataclass(frozen=True)
class AdmissionSettings:
    usage_half_life_s: float = 3600.0  # fair share: how fast past GPU usage is forgotten
    starvation_s: float = 3600.0  # a head waiting longer keeps its pool's freed GPUs for itself


@dataclass(frozen=True)
class QueueView:
    name: str
    nominal: Mapping[str, int]  # pool → GPUs guaranteed (a pool not named: 0)
    borrowing_limit: Mapping[str, int | None] = field(default_factory=dict)  # pool → most borrowed; None: any
    cohort: str | None = None
    weight: float = 1.0
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    preempt_within_queue: bool = True  # a waiting run may stop lower-priority preemptible runs of its queue
    reclaim_within_cohort: str = "any"  # any | lower-priority | never: stop borrowers to get nominal back
    min_run_s: float = 600.0  # an admitted run is protected from preemption this long
    aging_s: float = 600.0  # a waiting run gains one priority level per this many seconds waited


@dataclass(frozen=True)
class Holder:
    """A run that holds quota (admitted, its gang placed or being placed again)."""

    run_id: str
    queue: str
    priority: int
    preemptible: bool
    gpus: Mapping[str, int]  # pool → GPUs
    nodes: Mapping[str, int]  # node → GPUs it holds there
    admitted_at: float
    stopping: bool = False  # already asked to stop at its next checkpoint (a preemption in flight)


@dataclass(frozen=True)
class Candidate:
    """A run waiting for GPUs: new, preempted back into its queue, or resumed by a user."""

    run_id: str
    queue: str
    priority: int
    preemptible: bool
    queued_since: float
    members: tuple[MemberRequest, ...]
    holds_quota: bool = False  # admitted already (its gang failed): needs nodes, not quota
    nominated: bool = False  # it preempted runs for their GPUs (last pass): it goes first to take them

    @cached_property
    def gpus(self) -> dict[str, int]:
        return gang_gpus(self.members)


@dataclass(frozen=True)
class AdmissionSnapshot:
    now: float
    queues: tuple[QueueView, ...]
    nodes: tuple[NodeView, ...]
    used: Mapping[str, int]  # node → GPUs held by live workloads
    holders: tuple[Holder, ...]
    candidates: tuple[Candidate, ...]
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (queue, pool) → decayed GPUs
    settings: AdmissionSettings = field(default_factory=AdmissionSettings)


@dataclass(frozen=True)
class Admit:
    run_id: str
    nodes: Mapping[str, str]  # member key → node
    borrowed: Mapping[str, int] = field(default_factory=dict)  # pool → GPUs beyond the queue's nominal


@dataclass(frozen=True)
class Preempt:
    victim: str
    by: str
    reason: str  # one sentence: who needs what, and why this run was chosen


@dataclass(frozen=True)
class Wait:
    run_id: str
    queue: str
    position: int  # 1-based place in its queue's line
    reason: str  # which quota or which GPUs it waits for, and who holds them
    # quota | nodes | held (a starving run keeps the pool) | stopping (victims are releasing GPUs for it)
    # | queue (the queue does not exist)
    kind: str = ""


@dataclass(frozen=True)
class AdmissionResult:
    admitted: tuple[Admit, ...] = ()
    preemptions: tuple[Preempt, ...] = ()
    waiting: tuple[Wait, ...] = ()

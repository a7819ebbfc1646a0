"""What the controller observed about one run, frozen, so every decision is a pure function of it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.core.placement import NodeView
from orchestrator.records import PreemptionRecord, Run, Stage, Workload
from orchestrator.spec import RunSpec

__all__ = ["ObservedWorkload", "RunSnapshot"]


@dataclass(frozen=True)
class ObservedWorkload:
    """A workload as the cluster reports it."""

    name: str
    run_id: str
    node: str
    phase: str  # Pending | Running | Failed
    reason: str = ""


@dataclass(frozen=True)
class RunSnapshot:
    run: Run
    spec: RunSpec
    stages: tuple[Stage, ...]
    workloads: tuple[Workload, ...]
    observed: Mapping[str, ObservedWorkload]
    nodes: tuple[NodeView, ...]
    used_by_others: Mapping[str, int] = field(default_factory=dict)
    ports_by_others: Mapping[str, frozenset[int]] = field(default_factory=dict)  # engine ports per node
    last_checkpoint: int = 0
    dropped_problems: frozenset[int] = frozenset()
    preemption: PreemptionRecord | None = None  # asked to stop at its next checkpoint for another run

    @property
    def stage(self) -> Stage:
        return self.stages[self.run.stage_index]

    @property
    def current_workloads(self) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.attempt == self.run.attempt and w.status.live)

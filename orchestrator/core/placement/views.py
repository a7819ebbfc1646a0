"""What placement reads and returns: node views, member requests, a placement, a placement policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MemberRequest", "NodeView", "Placement", "PlacementPolicy"]


@dataclass(frozen=True)
class NodeView:
    name: str
    pool: str
    gpus: int
    ready: bool = True
    zone: str = ""  # topology.kubernetes.io/zone, or the simulated cluster file's zone
    rack: str = ""  # the rack label, where the cluster has one


@dataclass(frozen=True)
class MemberRequest:
    key: str
    pool: str
    gpus: int
    same_node_as: str | None = None  # colocated members share another member's node and GPUs
    role: str = ""
    index: int = 0


@dataclass(frozen=True)
class Placement:
    """Either every member bound to a node, or why not (and nothing bound)."""

    nodes: Mapping[str, str]
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class PlacementPolicy:
    """Score plugins by name, most important first (later ones break ties); see ``plugins.SCORES``."""

    scores: tuple[str, ...] = ("best-fit",)

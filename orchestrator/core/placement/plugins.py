"""Filter and score plugins, in the style of kube-scheduler's framework.

A node is a candidate for a member when every filter passes. Each score plugin then gives a candidate
0–100 from two facts: the GPUs the node would have ``left`` after taking the member, and its ``Affinity``
to the gang's members placed so far (see ``topology``). A ``PlacementPolicy`` names score plugins most
important first; candidates compare by the tuple of their scores (higher wins), then by node name (lower
wins). Both the exhaustive and the indexed search call these same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from orchestrator.core.placement.views import MemberRequest, NodeView

__all__ = [
    "FILTERS",
    "SCORES",
    "Affinity",
    "BestFit",
    "EnoughGpus",
    "FilterPlugin",
    "InPool",
    "NodeReady",
    "ScorePlugin",
    "Spread",
    "Topology",
    "score_plugins",
]

MAX_SCORE = 100


class Affinity(IntEnum):
    """A node's closeness to the gang, best last; a node has the highest that applies."""

    NONE = 0
    HOLDING_ZONE = 1  # its zone could hold all the gang's members of its pool when the gang began
    HOLDING_RACK = 2  # its rack could
    ZONE = 3  # a member of the gang is already placed in its zone
    RACK = 4  # … in its rack
    NODE = 5  # … on it


class FilterPlugin(Protocol):
    name: str

    def passes(self, node: NodeView, member: MemberRequest, free: int) -> bool:
        """Whether ``node`` (with ``free`` GPUs) may take ``member`` at all."""
        ...


class ScorePlugin(Protocol):
    name: str
    uses_affinity: bool

    def score(self, left: int, affinity: Affinity) -> int:
        """0–100, higher is better, for a candidate left with ``left`` GPUs free at ``affinity``."""
        ...


@dataclass(frozen=True)
class NodeReady:
    name: str = "node-ready"

    def passes(self, node: NodeView, member: MemberRequest, free: int) -> bool:
        return node.ready


@dataclass(frozen=True)
class InPool:
    name: str = "in-pool"

    def passes(self, node: NodeView, member: MemberRequest, free: int) -> bool:
        return node.pool == member.pool


@dataclass(frozen=True)
class EnoughGpus:
    name: str = "enough-gpus"

    def passes(self, node: NodeView, member: MemberRequest, free: int) -> bool:
        return free >= member.gpus


@dataclass(frozen=True)
class BestFit:
    """Fewest GPUs left over (one point per GPU): fills partly used nodes and keeps whole nodes free."""

    name: str = "best-fit"
    uses_affinity: bool = False

    def score(self, left: int, affinity: Affinity) -> int:
        return MAX_SCORE - min(left, MAX_SCORE)


@dataclass(frozen=True)
class Spread:
    """Most GPUs left over (one point per GPU): spreads load over the emptiest nodes."""

    name: str = "spread"
    uses_affinity: bool = False

    def score(self, left: int, affinity: Affinity) -> int:
        return min(left, MAX_SCORE)


_TOPOLOGY_POINTS = {
    Affinity.NODE: 100,
    Affinity.RACK: 80,
    Affinity.ZONE: 60,
    Affinity.HOLDING_RACK: 40,
    Affinity.HOLDING_ZONE: 20,
    Affinity.NONE: 0,
}


@dataclass(frozen=True)
class Topology:
    """Keeps a gang compact: a node already holding a member, then its rack, then its zone; a gang's first
    member goes to a rack (else a zone) that can hold the whole gang."""

    name: str = "topology"
    uses_affinity: bool = True

    def score(self, left: int, affinity: Affinity) -> int:
        return _TOPOLOGY_POINTS[affinity]


FILTERS: tuple[FilterPlugin, ...] = (NodeReady(), InPool(), EnoughGpus())
SCORES: dict[str, ScorePlugin] = {plugin.name: plugin for plugin in (BestFit(), Spread(), Topology())}


def score_plugins(names: Sequence[str]) -> tuple[ScorePlugin, ...]:
    """The score plugins a policy names, in its order."""
    unknown = [name for name in names if name not in SCORES]
    if unknown:
        raise ValueError(f"unknown placement plugin {unknown[0]!r}; use one of {', '.join(SCORES)}")
    return tuple(SCORES[name] for name in names)

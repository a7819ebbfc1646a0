"""Where a gang stands while it is placed: the nodes, racks and zones its members took so far, and the
domains (racks, zones) that could hold each pool's members when its placement began.

A rack is named by (zone, rack label); a node without a zone (rack) label is in no zone (rack).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from orchestrator.core.placement.plugins import Affinity
from orchestrator.core.placement.views import MemberRequest, NodeView

__all__ = ["GangState", "Holding", "affinity", "gang_sizes", "holds"]

RackKey = tuple[str, str]  # (zone, rack)


@dataclass(frozen=True)
class Holding:
    """The racks and zones of one pool that could hold all the gang's members of that pool."""

    racks: frozenset[RackKey] = frozenset()
    zones: frozenset[str] = frozenset()


@dataclass
class GangState:
    """Scratch state of one ``place_gang`` call (mutable: members are added as they are placed)."""

    nodes: set[str] = field(default_factory=set)
    racks: set[RackKey] = field(default_factory=set)
    zones: set[str] = field(default_factory=set)
    holding: dict[str, Holding] = field(default_factory=dict)  # pool → domains; filled when the gang begins

    def add(self, node: NodeView) -> None:
        self.nodes.add(node.name)
        if node.zone:
            self.zones.add(node.zone)
        if node.rack:
            self.racks.add((node.zone, node.rack))


def gang_sizes(members: Sequence[MemberRequest]) -> dict[str, list[int]]:
    """GPUs of each member that takes a node of its own, per pool (colocated members take none)."""
    sizes: dict[str, list[int]] = {}
    for member in members:
        if member.same_node_as is None:
            sizes.setdefault(member.pool, []).append(member.gpus)
    return sizes


def holds(counts: Sequence[int], sizes: Collection[int]) -> bool:
    """Whether nodes with ``counts[f]`` nodes having ``f`` GPUs free can take members of these ``sizes``,
    placing the largest first on the node that fits it best (a deterministic, slightly pessimistic test)."""
    if not sizes:
        return True
    largest = max(sizes)
    if sum(counts[largest:]) >= len(sizes):
        return True  # a node each: the fit below would succeed too
    if sum(f * count for f, count in enumerate(counts)) < sum(sizes):
        return False
    left = list(counts)
    for size in sorted(sizes, reverse=True):
        for f in range(size, len(left)):
            if left[f]:
                left[f] -= 1
                left[f - size] += 1
                break
        else:
            return False
    return True


def affinity(node: NodeView, state: GangState) -> Affinity:
    """The closeness of ``node`` to the gang: the highest ``Affinity`` that applies."""
    rack = (node.zone, node.rack) if node.rack else None
    if node.name in state.nodes:
        return Affinity.NODE
    if rack is not None and rack in state.racks:
        return Affinity.RACK
    if node.zone and node.zone in state.zones:
        return Affinity.ZONE
    holding = state.holding.get(node.pool, Holding())
    if rack is not None and rack in holding.racks:
        return Affinity.HOLDING_RACK
    if node.zone and node.zone in holding.zones:
        return Affinity.HOLDING_ZONE
    return Affinity.NONE

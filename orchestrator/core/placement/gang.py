"""Place one gang on a ``FreeMap``, all members or none, under a ``PlacementPolicy``."""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.core.placement.freemap import FreeMap
from orchestrator.core.placement.views import MemberRequest, Placement, PlacementPolicy

__all__ = ["bind", "place_gang"]


def place_gang(members: Sequence[MemberRequest], free: FreeMap, policy: PlacementPolicy) -> Placement:
    """Where every member of the gang would go, or why it cannot; ``free`` is left as it was."""
    bound: dict[str, str] = {}
    taken: list[tuple[str, int]] = []
    try:
        for member in members:
            if member.same_node_as is not None:
                bound[member.key] = bound[member.same_node_as]
                continue
            fits = [n for n in free.pool_nodes(member.pool) if free.free(n.name) >= member.gpus]
            if not fits:
                reason = f"no node of pool {member.pool!r} has {member.gpus} GPUs free"
                return Placement(nodes={}, reason=reason)
            best = min(fits, key=lambda n: (free.free(n.name) - member.gpus, n.name))
            free.take(best.name, member.gpus)
            taken.append((best.name, member.gpus))
            bound[member.key] = best.name
        return Placement(nodes=bound)
    finally:
        for node, gpus in taken:
            free.give(node, gpus)


def bind(members: Sequence[MemberRequest], placement: Placement, free: FreeMap) -> None:
    """Take the GPUs of a successful ``placement`` from ``free``."""
    for member in members:
        if member.same_node_as is None:
            free.take(placement.nodes[member.key], member.gpus)

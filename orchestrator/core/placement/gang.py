"""Place one gang on a ``FreeMap``, all members or none, under a ``PlacementPolicy``.

Members are placed in order, each on the best candidate node for it (``search``), the gang's state
(nodes, racks, zones taken so far) informing the next; a colocated member shares its host's node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orchestrator.core.placement.freemap import FreeMap
from orchestrator.core.placement.plugins import score_plugins
from orchestrator.core.placement.search import (
    choose_exhaustive,
    choose_indexed,
    holding_exhaustive,
    holding_indexed,
)
from orchestrator.core.placement.topology import GangState, Holding, gang_sizes
from orchestrator.core.placement.views import MemberRequest, Placement, PlacementPolicy

__all__ = ["bind", "place_gang", "place_gang_exhaustive"]

_Choose = Callable[[FreeMap, MemberRequest, GangState, tuple[str, ...]], "str | None"]
_Holding = Callable[[FreeMap, str, list[int]], Holding]


def place_gang(
    members: Sequence[MemberRequest], free: FreeMap, policy: PlacementPolicy, *, keep: bool = False
) -> Placement:
    """Where every member of the gang would go, or why it cannot; ``free`` is left as it was, unless
    ``keep``: then a placement found is bound in ``free`` too (as ``bind`` would). Each member costs about
    O(GPUs per node) index look-ups, not O(nodes)."""
    return _place(members, free, policy, choose_indexed, holding_indexed, keep=keep)


def place_gang_exhaustive(
    members: Sequence[MemberRequest], free: FreeMap, policy: PlacementPolicy
) -> Placement:
    """``place_gang`` by scanning every node for every member: the reference the index is tested against."""
    return _place(members, free, policy, choose_exhaustive, holding_exhaustive)


def _place(
    members: Sequence[MemberRequest],
    free: FreeMap,
    policy: PlacementPolicy,
    choose: _Choose,
    holding: _Holding,
    *,
    keep: bool = False,
) -> Placement:
    for pool, need in _pool_needs(members).items():  # cheap refusal: not enough GPUs free in the pool
        if free.pool_free(pool) < need:
            return Placement(
                nodes={}, reason=f"pool {pool!r} has {free.pool_free(pool)} GPUs free, not {need}"
            )
    scores = tuple(policy.scores)
    state = GangState()
    if any(plugin.uses_affinity for plugin in score_plugins(scores)):
        free.index_topology()
        # The domains that could hold each pool's members are judged once, before any member is placed.
        state.holding = {pool: holding(free, pool, sizes) for pool, sizes in gang_sizes(members).items()}
    bound: dict[str, str] = {}
    taken: list[tuple[str, int]] = []
    try:
        for member in members:
            if member.same_node_as is not None:
                bound[member.key] = bound[member.same_node_as]
                continue
            node = choose(free, member, state, scores)
            if node is None:
                reason = f"no node of pool {member.pool!r} has {member.gpus} GPUs free"
                return Placement(nodes={}, reason=reason)
            free.take(node, member.gpus)
            taken.append((node, member.gpus))
            state.add(free.nodes[node])
            bound[member.key] = node
        if keep:
            taken = []  # bound: the GPUs stay taken
        return Placement(nodes=bound)
    finally:
        for node, gpus in reversed(taken):
            free.give(node, gpus)


def _pool_needs(members: Sequence[MemberRequest]) -> dict[str, int]:
    needs: dict[str, int] = {}
    for member in members:
        if member.same_node_as is None:
            needs[member.pool] = needs.get(member.pool, 0) + member.gpus
    return needs


def bind(members: Sequence[MemberRequest], placement: Placement, free: FreeMap) -> None:
    """Take the GPUs of a successful ``placement`` from ``free``."""
    for member in members:
        if member.same_node_as is None:
            free.take(placement.nodes[member.key], member.gpus)

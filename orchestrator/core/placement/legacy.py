"""The placement of one run alone (every member scans every node), all-or-nothing.

Kept for `orch validate` and as the baseline of bench/admission_throughput.py.

Like a kube-scheduler cycle in miniature: a node passes the filter when it is ready, in the
requested pool and has the GPUs free; among those the best-fit score (fewest GPUs left over)
wins, which keeps whole nodes free for the next gang.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.placement.views import MemberRequest, NodeView, Placement

__all__ = ["place_all"]


def _fits(node: NodeView, pool: str, gpus: int, free: Mapping[str, int]) -> bool:
    return node.ready and node.pool == pool and free[node.name] >= gpus


def place_all(
    members: Sequence[MemberRequest], nodes: Sequence[NodeView], used: Mapping[str, int]
) -> Placement:
    """Bind all ``members`` given GPUs already ``used`` per node, or bind none and say why."""
    free = {node.name: node.gpus - used.get(node.name, 0) for node in nodes}
    bound: dict[str, str] = {}
    for member in members:
        if member.same_node_as is not None:
            bound[member.key] = bound[member.same_node_as]
            continue
        candidates = [node for node in nodes if _fits(node, member.pool, member.gpus, free)]
        if not candidates:
            return Placement(nodes={}, reason=_why_not(member, members, nodes, used))
        best = min(candidates, key=lambda node: (free[node.name] - member.gpus, node.name))
        free[best.name] -= member.gpus
        bound[member.key] = best.name
    return Placement(nodes=bound)


def _why_not(
    member: MemberRequest,
    members: Sequence[MemberRequest],
    nodes: Sequence[NodeView],
    used: Mapping[str, int],
) -> str:
    pool_nodes = [node for node in nodes if node.pool == member.pool]
    if not pool_nodes:
        return f"pool {member.pool!r} has no nodes"
    ready = [node for node in pool_nodes if node.ready]
    free = sum(node.gpus - used.get(node.name, 0) for node in ready)
    wanted = sum(m.gpus for m in members if m.pool == member.pool and m.same_node_as is None)
    return (
        f"pool {member.pool!r} has {free} of {sum(n.gpus for n in pool_nodes)} GPUs free on "
        f"{len(ready)} ready node(s); the gang needs {wanted} "
        f"(member {member.key} needs {member.gpus} on one node)"
    )

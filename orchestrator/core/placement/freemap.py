"""The free GPUs of every node during one admission pass, consumed as gangs are placed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.placement.views import NodeView

__all__ = ["FreeMap"]


class FreeMap:
    """Free GPUs per ready node, with the nodes of each pool. Mutable: ``take`` as gangs are bound,
    ``give`` back for a what-if (a preemption dry run)."""

    def __init__(self, nodes: Sequence[NodeView], used: Mapping[str, int]) -> None:
        self.nodes: dict[str, NodeView] = {node.name: node for node in nodes}
        self._free = {node.name: node.gpus - used.get(node.name, 0) for node in nodes}

    def free(self, node: str) -> int:
        return self._free[node] if self.nodes[node].ready else 0

    def take(self, node: str, gpus: int) -> None:
        if gpus > self._free[node]:
            raise ValueError(f"node {node}: {gpus} GPUs asked, {self._free[node]} free")
        self._free[node] -= gpus

    def give(self, node: str, gpus: int) -> None:
        self._free[node] += gpus

    def pool_nodes(self, pool: str) -> list[NodeView]:
        return [node for node in self.nodes.values() if node.pool == pool]

    def pool_free(self, pool: str) -> int:
        return sum(self.free(node.name) for node in self.pool_nodes(pool))

    def pool_capacity(self, pool: str) -> int:
        return sum(node.gpus for node in self.pool_nodes(pool) if node.ready)

"""The free GPUs of every node during one admission pass, consumed as gangs are placed.

Besides the free count per node, a ``FreeMap`` keeps an index of the ready nodes: for each pool, and each
zone and rack within a pool, the nodes bucketed by free GPUs, each bucket a min-heap of node names whose
stale entries (the node has since moved bucket) are dropped when met. Finding the lowest-named node with
exactly ``f`` GPUs free in a domain is then amortised O(log n), with no dependence on hash order.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from orchestrator.core.placement.views import NodeView

__all__ = ["Bucketed", "FreeMap", "PoolIndex"]


class Bucketed:
    """The ready nodes of one domain (a pool, or a zone or rack of a pool) by free GPUs."""

    __slots__ = ("_free", "capacity", "counts", "free", "heaps")

    def __init__(self, free: dict[str, int], size: int) -> None:
        self._free = free  # the FreeMap's own dict: an entry is stale when its node's count moved
        self.heaps: list[list[str]] = [[] for _ in range(size)]
        self.counts = [0] * size  # nodes with exactly f GPUs free (nodes with fewer than 0: none)
        self.free = 0  # GPUs free over the domain's nodes
        self.capacity = 0  # GPUs over the domain's nodes

    def move(self, name: str, old: int, new: int) -> None:
        self.free += new - old
        if old >= 0:
            self.counts[old] -= 1
        if new >= 0:
            self._grow(new)
            self.counts[new] += 1
            # A stale entry of the node may still sit in heaps[new] (it is valid again now): the duplicate
            # costs a pop later; a FreeMap lives for one pass, so heaps grow by at most one per move.
            heapq.heappush(self.heaps[new], name)

    def lowest(self, free: int) -> str | None:
        """The lowest-named node with exactly ``free`` GPUs free, if any."""
        if free >= len(self.heaps):
            return None
        heap = self.heaps[free]
        while heap:
            name = heap[0]
            if self._free[name] == free:
                return name
            heapq.heappop(heap)
        return None

    def _grow(self, free: int) -> None:
        while free >= len(self.heaps):
            self.heaps.append([])
            self.counts.append(0)


class PoolIndex:
    """A pool's ready nodes: the whole pool, its zones and its racks (by (zone, rack label))."""

    __slots__ = ("pool", "racks", "zones")

    def __init__(self, pool: Bucketed) -> None:
        self.pool = pool
        self.zones: dict[str, Bucketed] = {}
        self.racks: dict[tuple[str, str], Bucketed] = {}

    @property
    def top(self) -> int:
        """The most GPUs free any of its nodes may have (the highest bucket)."""
        return len(self.pool.heaps) - 1


class FreeMap:
    """Free GPUs per ready node, with the nodes of each pool. Mutable: ``take`` as gangs are bound,
    ``give`` back for a what-if (a preemption dry run). Building it is O(nodes log nodes); ``take``,
    ``give``, ``free``, ``pool_free`` and ``pool_capacity`` are O(1) (plus a heap push)."""

    def __init__(self, nodes: Sequence[NodeView], used: Mapping[str, int]) -> None:
        self.nodes: dict[str, NodeView] = {node.name: node for node in nodes}
        self._free = {name: node.gpus - used.get(name, 0) for name, node in self.nodes.items()}
        self._pool_nodes: dict[str, list[NodeView]] = {}
        for node in self.nodes.values():
            self._pool_nodes.setdefault(node.pool, []).append(node)
        self._index: dict[str, PoolIndex] = {}
        self._domains: dict[str, tuple[Bucketed, ...]] = {}  # ready node → the domains it counts in
        self._build()

    def _build(self) -> None:
        free = self._free
        size: dict[str, int] = {}
        for node in self.nodes.values():
            if node.ready:
                size[node.pool] = max(size.get(node.pool, 0), node.gpus + 1, free[node.name] + 1)
        for pool, pool_size in size.items():
            self._index[pool] = PoolIndex(Bucketed(free, pool_size))
        # In name order, so every bucket list is already a heap. Inlined: this runs once per pass per node.
        # Zones and racks are indexed only once a topology plugin asks (``index_topology``).
        for name in sorted(self.nodes):
            node = self.nodes[name]
            if not node.ready:
                continue
            pool = self._index[node.pool].pool
            gpus = free[name]
            pool.capacity += node.gpus
            pool.free += gpus
            if gpus >= 0:
                pool.counts[gpus] += 1
                pool.heaps[gpus].append(name)
            self._domains[name] = (pool,)
        self._topology = False

    def index_topology(self) -> None:
        """Index each pool's zones and racks too (once): what the topology plugin searches."""
        if self._topology:
            return
        self._topology = True
        free = self._free
        for name in sorted(self._domains):
            node = self.nodes[name]
            index = self._index[node.pool]
            added: tuple[Bucketed, ...] = ()
            if node.zone:
                zone = index.zones.get(node.zone)
                if zone is None:
                    zone = index.zones[node.zone] = Bucketed(free, len(index.pool.heaps))
                added += (zone,)
            if node.rack:
                key = (node.zone, node.rack)
                rack = index.racks.get(key)
                if rack is None:
                    rack = index.racks[key] = Bucketed(free, len(index.pool.heaps))
                added += (rack,)
            gpus = free[name]
            for domain in added:
                domain.capacity += node.gpus
                domain.free += gpus
                if gpus >= 0:
                    domain._grow(gpus)
                    domain.counts[gpus] += 1
                    domain.heaps[gpus].append(name)
            self._domains[name] += added

    def free(self, node: str) -> int:
        return self._free[node] if self.nodes[node].ready else 0

    def take(self, node: str, gpus: int) -> None:
        old = self._free[node]
        if gpus > old:
            raise ValueError(f"node {node}: {gpus} GPUs asked, {old} free")
        self._move(node, old, old - gpus)

    def give(self, node: str, gpus: int) -> None:
        old = self._free[node]
        self._move(node, old, old + gpus)

    def _move(self, node: str, old: int, new: int) -> None:
        self._free[node] = new
        for domain in self._domains.get(node, ()):
            domain.move(node, old, new)

    def pool_nodes(self, pool: str) -> list[NodeView]:
        return list(self._pool_nodes.get(pool, ()))

    def pool_free(self, pool: str) -> int:
        index = self._index.get(pool)
        return index.pool.free if index is not None else 0

    def pool_capacity(self, pool: str) -> int:
        index = self._index.get(pool)
        return index.pool.capacity if index is not None else 0

    def pool_index(self, pool: str) -> PoolIndex | None:
        """The index of a pool's ready nodes (None: the pool has none)."""
        return self._index.get(pool)

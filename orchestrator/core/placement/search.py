"""Choosing one member's node: the reference (scan every node) and the indexed search over a ``FreeMap``.

Both return the candidate (every filter passes) with the highest tuple of scores, the lowest node name
among equals. The indexed search relies on a candidate's scores depending only on the GPUs it would have
left and its ``Affinity``: it walks (free GPUs, affinity) groups from the best score tuple down and asks
the index for the lowest-named node of each group. A node of affinity ``a`` lies in the domains of ``a``
(e.g. the racks holding gang members) but so may nodes of a higher affinity; those score strictly higher
at the same free count, so their group was walked first and found empty, and the node found is of
affinity ``a`` exactly.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise

from orchestrator.core.placement.freemap import Bucketed, FreeMap, PoolIndex
from orchestrator.core.placement.plugins import FILTERS, Affinity, score_plugins
from orchestrator.core.placement.topology import GangState, Holding, affinity, holds
from orchestrator.core.placement.views import MemberRequest

__all__ = ["choose_exhaustive", "choose_indexed", "holding_exhaustive", "holding_indexed", "search_order"]

Group = tuple[int, Affinity]  # (GPUs free on the node, its affinity)


def choose_exhaustive(
    free: FreeMap, member: MemberRequest, state: GangState, scores: tuple[str, ...]
) -> str | None:
    """Scan every node: filter, score, keep the best."""
    plugins = score_plugins(scores)
    best: tuple[tuple[int, ...], str] | None = None
    for node in free.nodes.values():
        gpus = free.free(node.name)
        if not all(plugin.passes(node, member, gpus) for plugin in FILTERS):
            continue
        near = affinity(node, state)
        points = tuple(plugin.score(gpus - member.gpus, near) for plugin in plugins)
        if best is None or points > best[0] or (points == best[0] and node.name < best[1]):
            best = (points, node.name)
    return None if best is None else best[1]


def holding_exhaustive(free: FreeMap, pool: str, sizes: list[int]) -> Holding:
    """The racks and zones of ``pool`` whose ready nodes could hold members of these ``sizes``."""
    racks: dict[tuple[str, str], list[int]] = {}
    zones: dict[str, list[int]] = {}
    for node in free.pool_nodes(pool):
        if not node.ready:
            continue
        if node.rack:
            racks.setdefault((node.zone, node.rack), []).append(free.free(node.name))
        if node.zone:
            zones.setdefault(node.zone, []).append(free.free(node.name))
    return Holding(
        racks=frozenset(key for key, frees in racks.items() if holds(_counts(frees), sizes)),
        zones=frozenset(key for key, frees in zones.items() if holds(_counts(frees), sizes)),
    )


def _counts(frees: list[int]) -> list[int]:
    counts = [0] * (max(frees) + 1 if frees else 0)
    for f in frees:
        if f >= 0:
            counts[f] += 1
    return counts


@lru_cache(maxsize=4096)
def search_order(scores: tuple[str, ...], gpus: int, top: int) -> tuple[tuple[Group, ...], ...]:
    """(free, affinity) groups for a member of ``gpus`` on nodes with up to ``top`` GPUs free, best score
    tuple first; groups with equal scores share a tier (their nodes then compare by name)."""
    plugins = score_plugins(scores)
    nears = tuple(Affinity) if any(plugin.uses_affinity for plugin in plugins) else (Affinity.NONE,)
    tiers: dict[tuple[int, ...], list[Group]] = {}
    for f in range(gpus, top + 1):
        points = [tuple(plugin.score(f - gpus, near) for plugin in plugins) for near in nears]
        if any(lower >= higher for lower, higher in pairwise(points)):
            raise ValueError(f"placement {scores}: scores must rise strictly with affinity")
        for near, point in zip(nears, points, strict=True):
            tiers.setdefault(point, []).append((f, near))
    return tuple(tuple(tiers[point]) for point in sorted(tiers, reverse=True))


def choose_indexed(
    free: FreeMap, member: MemberRequest, state: GangState, scores: tuple[str, ...]
) -> str | None:
    """The node ``choose_exhaustive`` picks, found through the ``FreeMap``'s index."""
    index = free.pool_index(member.pool)
    if index is None:
        return None
    sources: dict[Affinity, list[Bucketed]] = {}
    hosts: list[str] | None = None
    for tier in search_order(scores, member.gpus, index.top):
        best: str | None = None
        for f, near in tier:
            if near is Affinity.NODE:
                if hosts is None:
                    hosts = [name for name in state.nodes if free.nodes[name].pool == member.pool]
                for name in hosts:
                    if free.free(name) == f and (best is None or name < best):
                        best = name
                continue
            domains = sources.get(near)
            if domains is None:
                domains = sources[near] = _domains(index, member.pool, state, near)
            for domain in domains:
                if f >= len(domain.counts) or not domain.counts[f]:
                    continue
                name = domain.lowest(f)
                if name is not None and (best is None or name < best):
                    best = name
        if best is not None:
            return best
    return None


def _domains(index: PoolIndex, pool: str, state: GangState, near: Affinity) -> list[Bucketed]:
    if near is Affinity.NONE:
        return [index.pool]
    holding = state.holding.get(pool, Holding())
    racks = state.racks if near is Affinity.RACK else holding.racks if near is Affinity.HOLDING_RACK else None
    if racks is not None:
        return [index.racks[key] for key in racks if key in index.racks]
    zones = state.zones if near is Affinity.ZONE else holding.zones
    return [index.zones[zone] for zone in zones if zone in index.zones]


def holding_indexed(free: FreeMap, pool: str, sizes: list[int]) -> Holding:
    """``holding_exhaustive``, from the index's counts."""
    index = free.pool_index(pool)
    if index is None:
        return Holding()
    return Holding(
        racks=frozenset(key for key, rack in index.racks.items() if holds(rack.counts, sizes)),
        zones=frozenset(zone for zone, domain in index.zones.items() if holds(domain.counts, sizes)),
    )

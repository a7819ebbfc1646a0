"""Micro-measure of gang placement alone (no queues, no quotas): the indexed ``place_gang`` against today's
``place_all`` (every member scans every node), on the same stream of gangs.

    PYTHONPATH=$PWD python bench/placement_search.py [--nodes 5000] [--pods 10000] [--seed 1]

Cluster: nodes × 8 GPUs in 4 zones, racks of 40 nodes, all free. Gangs of 1–64 members (mostly small),
members of 1, 2, 4 or 8 GPUs, placed and bound one after another until ``--pods`` members were tried.
The indexed run includes building the ``FreeMap``. Prints pods/s for both and GPUs stranded (free GPUs
on partly used nodes) at the end; not a test, and not bench/admission_throughput.py (queues, quotas).
"""

from __future__ import annotations

import argparse
import random
import time

from orchestrator.core.placement import (
    FreeMap,
    MemberRequest,
    NodeView,
    PlacementPolicy,
    bind,
    place_all,
    place_gang,
)

GPUS = 8
POOL = "h100"


def cluster(count: int) -> list[NodeView]:
    return [
        NodeView(f"node-{i:05d}", POOL, GPUS, zone=f"zone-{i * 4 // count}", rack=f"rack-{i // 40:03d}")
        for i in range(count)
    ]


def gangs(pods: int, seed: int) -> list[list[MemberRequest]]:
    rng = random.Random(seed)
    out: list[list[MemberRequest]] = []
    made = 0
    while made < pods:
        size = min(pods - made, rng.choice((1, 1, 1, 2, 2, 4, 4, 8, 8, 16, 32, 64)))
        gpus = rng.choices((1, 2, 4, 8), weights=(3, 3, 3, 2))[0]
        out.append([MemberRequest(f"g{len(out)}-{i}", POOL, gpus) for i in range(size)])
        made += size
    return out


def stranded(nodes: list[NodeView], free: dict[str, int]) -> int:
    return sum(free[node.name] for node in nodes if 0 < free[node.name] < node.gpus)


def indexed(nodes: list[NodeView], stream: list[list[MemberRequest]], policy: PlacementPolicy) -> tuple:
    start = time.perf_counter()
    free = FreeMap(nodes, {})
    placed = 0
    for members in stream:
        placement = place_gang(members, free, policy)
        if placement.ok:
            bind(members, placement, free)
            placed += len(members)
    seconds = time.perf_counter() - start
    return placed, seconds, stranded(nodes, {node.name: free.free(node.name) for node in nodes})


def legacy(nodes: list[NodeView], stream: list[list[MemberRequest]]) -> tuple:
    start = time.perf_counter()
    used: dict[str, int] = {}
    placed = 0
    for members in stream:
        placement = place_all(members, nodes, used)
        if placement.ok:
            for member in members:
                node = placement.nodes[member.key]
                used[node] = used.get(node, 0) + member.gpus
            placed += len(members)
    seconds = time.perf_counter() - start
    return placed, seconds, stranded(nodes, {node.name: node.gpus - used.get(node.name, 0) for node in nodes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-legacy", action="store_true", help="skip the (slow) baseline")
    args = parser.parse_args()
    nodes = cluster(args.nodes)
    stream = gangs(args.pods, args.seed)
    builds = []
    for _ in range(5):
        build = time.perf_counter()
        FreeMap(nodes, {})
        builds.append(time.perf_counter() - build)
    print(f"FreeMap build, {args.nodes} nodes: {min(builds) * 1e3:.1f} ms (best of 5)")
    print(f"{len(stream)} gangs, {args.pods} pods, {sum(len(g) * g[0].gpus for g in stream)} GPUs asked")
    for scores in (("best-fit",), ("spread",), ("topology", "best-fit")):
        placed, seconds, left = indexed(nodes, stream, PlacementPolicy(scores=scores))
        print(
            f"place_gang {'+'.join(scores):18s} {args.pods / seconds:9.0f} pods/s  "
            f"({placed} placed, {seconds:.3f} s, {left} GPUs stranded)"
        )
    if not args.no_legacy:
        placed, seconds, left = legacy(nodes, stream)
        print(
            f"place_all  {'best-fit (legacy)':18s} {args.pods / seconds:9.0f} pods/s  "
            f"({placed} placed, {seconds:.3f} s, {left} GPUs stranded)"
        )


if __name__ == "__main__":
    main()

"""How fast one admission pass places gangs, against today's placement (every gang scans every node).

Cluster: 5,000 nodes × 8 GPUs in 4 zones (racks of 40 nodes). Work: 10,000 pods in gangs of 1–64 pods
(mostly small), each pod 1, 2, 4 or 8 GPUs, spread over 20 queues of one cohort (nominal: an even share
of the GPUs each, borrowing unlimited), one pool.

1. Throughput. Every gang is a candidate of one admission pass (``orchestrator.core.admission``: line
   order, fair share, quota and cohort checks, placement with the queue's best-fit plugin on the indexed
   free-GPU map) over the empty cluster. The baseline places the same gangs in arrival order the way a
   run was placed before queues: for each gang, each member scans every node (``place_all``) against a
   used-GPU map. Pods placed per second of each, and the GPUs each leaves stranded (free GPUs on partly
   used nodes: the fit). The pass is timed whole, building its free-GPU map included; best of 3.
2. Pass time at 1,000 pending gangs. From the full cluster, passes in a steady state: before each pass a
   random 3% of the admitted runs finish; the pass admits what fits out of 1,000 pending gangs (refilled
   from new arrivals after it). p50 and p99 pass time over the passes, twice: with the quotas above (a
   full cluster is a full cohort, so most waits end at the quota check) and with every queue's quota as
   large as the cluster (every wait ends at the node search). The headline takes the worse p99.

Goals (ISSUE 16): ≥ 10,000 pods/s and ≥ 5× the baseline; p99 pass < 100 ms at 1,000 pending gangs; GPUs
stranded no more than the baseline's. Same interpreter, same machine, same run.

    python bench/admission_throughput.py [--quick]     # from the repository root
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence

from orchestrator.core.admission import admission_pass
from orchestrator.core.placement import MemberRequest, NodeView, place_all
from orchestrator.core.queueing import AdmissionSnapshot, Candidate, Holder, QueueView

GPUS, POOL, QUEUES, COHORT = 8, "h100", 20, "all"
FULL = {"nodes": 5_000, "pods": 10_000, "pending": 1_000, "passes": 200}
QUICK = {"nodes": 1_000, "pods": 2_000, "pending": 200, "passes": 20}
GOAL_RATE, GOAL_RATIO, GOAL_P99_MS = 10_000, 5.0, 100.0
SEED = 1


def cluster(count: int) -> tuple[NodeView, ...]:
    return tuple(
        NodeView(f"node-{i:05d}", POOL, GPUS, zone=f"zone-{i * 4 // count}", rack=f"rack-{i // 40:03d}")
        for i in range(count)
    )


def queues(nodes: int, *, quota_binds: bool = True) -> tuple[QueueView, ...]:
    """``quota_binds``: an even share each in one cohort (a full cluster is a full cohort: waits end at the
    quota check); else each queue may use the whole cluster (waits end at the node search)."""
    capacity = nodes * GPUS
    if not quota_binds:
        return tuple(QueueView(f"q{i:02d}", nominal={POOL: capacity}) for i in range(QUEUES))
    share = capacity // QUEUES
    return tuple(
        QueueView(f"q{i:02d}", nominal={POOL: share}, borrowing_limit={POOL: None}, cohort=COHORT)
        for i in range(QUEUES)
    )


class Arrivals:
    """Gangs as candidates, in arrival order: sizes and GPUs from one seeded stream."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.made = 0

    def gang(self, now: float) -> Candidate:
        rng, index = self.rng, self.made
        self.made += 1
        size = rng.choice((1, 1, 1, 2, 2, 4, 4, 8, 8, 16, 32, 64))
        gpus = rng.choices((1, 2, 4, 8), weights=(3, 3, 3, 2))[0]
        members = tuple(MemberRequest(f"g{index}-{i}", POOL, gpus) for i in range(size))
        return Candidate(
            run_id=f"run-{index:06d}",
            queue=f"q{rng.randrange(QUEUES):02d}",
            priority=rng.choice((0, 0, 0, 1)),
            preemptible=False,
            queued_since=now + index * 1e-6,
            members=members,
        )

    def pods(self, pods: int) -> list[Candidate]:
        out: list[Candidate] = []
        while sum(len(c.members) for c in out) < pods:
            out.append(self.gang(0.0))
        return out


def stranded(nodes: Sequence[NodeView], used: dict[str, int]) -> int:
    return sum(GPUS - used.get(n.name, 0) for n in nodes if 0 < used.get(n.name, 0) < GPUS)


def baseline(nodes: Sequence[NodeView], gangs: Sequence[Candidate]) -> tuple[int, float, int]:
    """Today's placement: gang after gang, each member scanning every node."""
    used: dict[str, int] = {}
    placed = 0
    start = time.perf_counter()
    for candidate in gangs:
        placement = place_all(candidate.members, nodes, used)
        if placement.ok:
            for member in candidate.members:
                node = placement.nodes[member.key]
                used[node] = used.get(node, 0) + member.gpus
            placed += len(candidate.members)
    return placed, time.perf_counter() - start, stranded(nodes, used)


def one_pass(nodes, queue_views, gangs, holders=(), used=None, now=0.0):  # type: ignore[no-untyped-def]
    snapshot = AdmissionSnapshot(
        now=now,
        queues=queue_views,
        nodes=nodes,
        used=dict(used or {}),
        holders=tuple(holders),
        candidates=tuple(gangs),
    )
    start = time.perf_counter()
    result = admission_pass(snapshot)
    return result, time.perf_counter() - start


def admitted_holders(result, by_id, now):  # type: ignore[no-untyped-def]
    holders = []
    for admit in result.admitted:
        candidate = by_id[admit.run_id]
        on_nodes: dict[str, int] = {}
        for member in candidate.members:
            node = admit.nodes[member.key]
            on_nodes[node] = on_nodes.get(node, 0) + member.gpus
        holders.append(
            Holder(
                candidate.run_id, candidate.queue, candidate.priority, False, candidate.gpus, on_nodes, now
            )
        )
    return holders


def used_by(holders: Sequence[Holder]) -> dict[str, int]:
    used: dict[str, int] = {}
    for holder in holders:
        for node, gpus in holder.nodes.items():
            used[node] = used.get(node, 0) + gpus
    return used


def steady_passes(nodes, views, holders, by_id, arrivals, size) -> list[float]:  # type: ignore[no-untyped-def]
    """Pass times in a steady state: before each pass 3% of the admitted runs finish; the pass admits what
    fits out of ``size["pending"]`` pending gangs, refilled from ``arrivals`` after it."""
    rng = random.Random(SEED + 1)
    pending = [arrivals.gang(1.0) for _ in range(size["pending"])]
    times = []
    for index in range(size["passes"]):
        now = 2.0 + index
        holders = [h for h in holders if rng.random() >= 0.03]
        by_id.update({c.run_id: c for c in pending})
        result, seconds = one_pass(nodes, views, pending, holders, used_by(holders), now)
        times.append(seconds)
        admitted = {a.run_id for a in result.admitted}
        holders = holders + admitted_holders(result, by_id, now)
        pending = [c for c in pending if c.run_id not in admitted]
        pending += [arrivals.gang(now) for _ in range(size["pending"] - len(pending))]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 1,000 nodes, 2,000 pods")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    nodes, queue_views = cluster(size["nodes"]), queues(size["nodes"])
    arrivals = Arrivals(SEED)
    gangs = arrivals.pods(size["pods"])
    pods = sum(len(c.members) for c in gangs)
    asked = sum(sum(c.gpus.values()) for c in gangs)
    by_id = {c.run_id: c for c in gangs}
    print(
        f"admission throughput: {size['nodes']} nodes × {GPUS} GPUs, {len(gangs)} gangs, {pods} pods, "
        f"{asked} GPUs asked, {QUEUES} queues"
    )

    best = None
    for _ in range(3):
        result, seconds = one_pass(nodes, queue_views, gangs)
        if best is None or seconds < best[1]:
            best = (result, seconds)
    assert best is not None
    result, seconds = best
    holders = admitted_holders(result, by_id, 0.0)
    placed = sum(len(by_id[a.run_id].members) for a in result.admitted)
    ours_rate, ours_left = placed / seconds, stranded(nodes, used_by(holders))
    base_placed, base_seconds, base_left = baseline(nodes, gangs)
    base_rate = base_placed / base_seconds
    print(f"{'placement':34s} {'pods placed':>12s} {'seconds':>9s} {'pods/s':>10s} {'GPUs stranded':>14s}")
    for label, count, took, rate, left in (
        ("admission pass (indexed, best-fit)", placed, seconds, ours_rate, ours_left),
        ("baseline: every gang scans nodes", base_placed, base_seconds, base_rate, base_left),
    ):
        print(f"{label:34s} {count:12d} {took:9.3f} {rate:10.0f} {left:14d}")

    p99 = 0.0
    for quota_binds in (True, False):
        views = queues(size["nodes"], quota_binds=quota_binds)
        times = steady_passes(nodes, views, holders, dict(by_id), Arrivals(SEED + 2), size)
        p50 = statistics.median(times) * 1e3
        worst = statistics.quantiles(times, n=100)[98] * 1e3
        p99 = max(p99, worst)
        stop = "quota check (cohort full)" if quota_binds else "node search (quota as large as the cluster)"
        print(
            f"passes at {size['pending']} pending gangs, waits end at the {stop}: {len(times)} passes, "
            f"p50 {p50:.1f} ms, p99 {worst:.1f} ms"
        )

    ratio = ours_rate / base_rate
    rate_met = ours_rate >= GOAL_RATE and ratio >= GOAL_RATIO
    fit_met = ours_left <= base_left
    scale = "" if not args.quick else " (quick size: the goals are for the full size)"
    print(
        f"headline: {ours_rate:,.0f} pods/s = {ratio:.1f}× the baseline's {base_rate:,.0f} "
        f"(goal ≥ {GOAL_RATE:,} and ≥ {GOAL_RATIO:g}×: {'met' if rate_met else 'NOT met'}); p99 pass "
        f"{p99:.1f} ms at {size['pending']} pending gangs (goal < {GOAL_P99_MS:g} ms: "
        f"{'met' if p99 < GOAL_P99_MS else 'NOT met'}); {ours_left} GPUs stranded vs {base_left} "
        f"({'met' if fit_met else 'NOT met'}){scale}"
    )


if __name__ == "__main__":
    main()

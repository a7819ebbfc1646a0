"""Two controllers admitting at once, interleaved at every step of their admission passes (take the
lease, observe, decide, commit), with the lease lapsing at every point: no GPU is ever given twice and
no run is admitted twice. On SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections import Counter

from orchestrator.controller.admission import Admitter
from orchestrator.controller.clock import WallClock
from orchestrator.core import commands
from orchestrator.records import Phase
from orchestrator.sim.cluster import SimCluster
from orchestrator.spec import RunSpec
from orchestrator.spec.inventory import ClusterFile, InventoryPool
from orchestrator.state.store import Store
from tests.conftest import spec_data

LEASE_S = 15.0
STEPS = 4  # take the lease, observe, decide, commit
INVENTORY = ClusterFile(pools={"node": InventoryPool(nodes=2, gpus_per_node=8)})


class Wall:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def orders() -> list[tuple[str, ...]]:
    """Every interleaving of A's four steps with B's."""
    out = []
    for positions in itertools.combinations(range(2 * STEPS), STEPS):
        out.append(tuple("A" if i in positions else "B" for i in range(2 * STEPS)))
    return out


def fresh_runs(store: Store, count: int) -> list[str]:
    for run in store.list_runs(active_only=True):
        store.apply(commands.cancel(run, store.workloads(run.id)))
    spec = RunSpec.model_validate(spec_data())
    return [store.create_run(spec).id for _ in range(count)]


def test_two_controllers_interleaved_at_every_step_never_double_admit(db_url: str) -> None:
    stores = {name: Store(db_url) for name in "AB"}
    wall = Wall()
    admitters = {
        name: Admitter(
            stores[name],
            SimCluster.from_inventory(INVENTORY),
            f"ctl-{name}",
            lease_seconds=LEASE_S,
            clock=WallClock(),
            wall=wall,
        )
        for name in "AB"
    }
    store = stores["A"]
    # Every lapse point on SQLite; on PostgreSQL (slower per write) three of them, every interleaving still.
    lapses = (None, *range(2 * STEPS)) if db_url.startswith("sqlite") else (None, 2, 5)
    scenarios = 0
    for order in orders():
        for lapse_after in lapses:
            runs = fresh_runs(store, 3)  # 3 gangs of 8 GPUs, 2 nodes of 8: one must wait
            wall.now += 10 * LEASE_S  # every lease from the last scenario has lapsed
            passes = {name: admitters[name].steps() for name in "AB"}
            for index, name in enumerate(order):
                next(passes[name], None)
                if index == lapse_after:
                    wall.now += LEASE_S + 1  # the holder stalls past its lease
            for name in "AB":  # finish whatever is left of either pass
                for _ in passes[name]:
                    pass
            per_node = Counter()
            for workload in store.workloads(live_only=True):
                per_node[workload.node] += workload.gpus
            assert all(gpus <= 8 for gpus in per_node.values()), (order, lapse_after, per_node)
            admitted = [r for r in runs if store.get_run(r).phase is Phase.ADMITTED]
            assert len(admitted) <= 2, (order, lapse_after)
            for run_id in runs:
                events = [e.reason for e in store.events(run_id)]
                assert events.count("Admitted") <= 1, (order, lapse_after, run_id)
            scenarios += 1
    assert scenarios == 70 * len(lapses)
    for name in "AB":
        stores[name].close()

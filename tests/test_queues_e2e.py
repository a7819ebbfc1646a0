"""Queues end to end on the simulated pool: three queues share 32 GPUs under a stream of runs; a
high-priority run preempts a preemptible one at its checkpoint, which later resumes and succeeds with
every step once. On SQLite and PostgreSQL, on the shared virtual clock."""

from __future__ import annotations

from collections import Counter

import pytest

from orchestrator.controller import Controller
from orchestrator.controller.clock import SharedVirtualClock
from orchestrator.records import Phase
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import RunSpec
from orchestrator.spec.inventory import ClusterFile, InventoryPool
from orchestrator.spec.queues import QueueSpec, QuotaSpec
from orchestrator.state.store import Store
from tests.conftest import spec_data

GPUS_PER_NODE = 8


def queues() -> list[QueueSpec]:
    def queue(name: str, nominal: int, **more: object) -> QueueSpec:
        quota = QuotaSpec(pool="node", nominal=nominal, borrowing_limit=more.pop("borrow", None))
        return QueueSpec(name=name, cohort="lab", quotas=[quota], min_run_seconds=0, **more)

    return [
        queue("research", 16, weight=2.0, borrow=0),
        queue("product", 8, borrow=0),
        queue("batch", 8, borrow=16),
    ]


def run_spec(name: str, queue: str, *, priority: int = 0, preemptible: bool = False) -> RunSpec:
    data = spec_data()
    data["name"] = name
    data["scheduling"] = {"queue": queue, "priority": priority, "preemptible": preemptible}
    return RunSpec.model_validate(data)


def check_nothing_overcommitted(store: Store, quota: dict[str, int]) -> None:
    per_node: Counter[str] = Counter()
    per_queue: Counter[str] = Counter()
    for workload in store.workloads(live_only=True):
        per_node[workload.node] += workload.gpus
        per_queue[store.get_run(workload.run_id).queue] += workload.gpus
    assert all(gpus <= GPUS_PER_NODE for gpus in per_node.values()), per_node
    assert all(per_queue[name] <= limit for name, limit in quota.items()), per_queue
    assert sum(per_queue.values()) <= 32


def test_a_high_priority_run_preempts_a_borrower_at_its_checkpoint_and_the_victim_resumes_to_success(
    db_url: str,
) -> None:
    store = Store(db_url)
    store.apply_queues(queues())
    inventory = ClusterFile(pools={"node": InventoryPool(nodes=4, gpus_per_node=GPUS_PER_NODE)})
    cluster = SimCluster.from_inventory(inventory)
    clock = SharedVirtualClock(store)
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl", clock=clock)
    limits = {"research": 16, "product": 8, "batch": 24}

    batch = [store.create_run(run_spec(f"batch-{i}", "batch", preemptible=True)).id for i in range(3)]
    product = store.create_run(run_spec("product-0", "product")).id
    urgent: list[str] = []
    for _ in range(2000):
        controller.reconcile_once()
        check_nothing_overcommitted(store, limits)
        runs = {run.id: run for run in store.list_runs()}
        if not urgent and all(runs[r].steps_done >= 3 for r in batch):  # the cluster is full: 32 of 32
            urgent.append(store.create_run(run_spec("research-0", "research", priority=10)).id)
            urgent.append(store.create_run(run_spec("research-1", "research", priority=10)).id)
        if urgent and all(run.phase.terminal for run in runs.values()):
            break
    else:
        raise AssertionError(f"not finished: {[(r.id, r.phase, r.message) for r in store.list_runs()]}")

    everyone = [*batch, product, *urgent]
    assert {store.get_run(r).phase for r in everyone} == {Phase.SUCCEEDED}
    events = {run_id: store.events(run_id) for run_id in everyone}
    preempted = [r for r in batch if any(e.reason == "Preempted" for e in events[r])]
    assert len(preempted) == 2, "the research queue reclaimed its 16 nominal GPUs from two borrowers"
    for victim in preempted:
        reasons = [e.reason for e in events[victim]]
        asked = next(e for e in events[victim] if e.reason == "PreemptionRequested")
        stopped = next(e for e in events[victim] if e.reason == "Preempted")
        assert asked.data["by"] in urgent and stopped.data["by"] == asked.data["by"]
        assert stopped.data["step"] in {c.step for c in store.checkpoints(victim)}, "stopped at a checkpoint"
        assert reasons.count("Admitted") == 2, "admitted, preempted, admitted again"
        assert reasons.index("PreemptionRequested") < reasons.index("Preempted") < len(reasons) - 1
        steps = store.steps(victim, include_superseded=True)
        assert [s.step for s in steps] == list(range(1, 10)), "every step once: none lost, none redone"
        resumed = [e for e in events[victim] if e.reason == "Running"][-1]
        assert resumed.data["resume_step"] == stopped.data["step"]
    for run_id in urgent:
        reasons = [e.reason for e in events[run_id]]
        assert reasons.index("Waiting") < reasons.index("Preempting") < reasons.index("Admitted")
        admitted = next(e for e in events[run_id] if e.reason == "Admitted")
        assert admitted.data["waited_s"] > 0, "it waited for the checkpoint, in virtual seconds"
    never = [r for r in [*batch, product] if r not in preempted]
    assert all("Preempted" not in {e.reason for e in events[r]} for r in never)
    assert clock.now() > 0
    store.close()


def test_runs_share_one_virtual_clock_and_a_waiting_run_starts_when_the_last_step_before_it_ends(
    tmp_path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 'orch.db'}")
    cluster = SimCluster.from_inventory(ClusterFile(pools={"node": InventoryPool(nodes=1)}))
    clock = SharedVirtualClock(store)
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl", clock=clock)
    first, second = (store.create_run(run_spec(name, "default")).id for name in ("first", "second"))
    for _ in range(500):
        controller.reconcile_once()
        if all(store.get_run(r).phase.terminal for r in (first, second)):
            break
    done = {r: store.get_run(r) for r in (first, second)}
    assert {run.phase for run in done.values()} == {Phase.SUCCEEDED}
    admitted = next(e for e in store.events(second) if e.reason == "Admitted")
    # One 8-GPU node: the second run waits the whole of the first's simulated time, not a moment less.
    assert admitted.data["waited_s"] >= done[first].sim_seconds > 0
    assert done[second].admitted_at == pytest.approx(done[first].sim_ready_at)
    assert done[second].sim_ready_at == pytest.approx(done[second].admitted_at + done[second].sim_seconds)
    store.close()

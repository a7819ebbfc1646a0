"""Whole runs on the embedded simulated pool, controller in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.errors import ConflictError
from orchestrator.records import Phase, RunPatch, WorkloadStatus
from orchestrator.sim.cluster import Fault, SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import PoolSpec, load_spec
from orchestrator.state.store import Store
from tests.conftest import spec_data, write_spec


def make_controller(store: Store, cluster: SimCluster | None = None, identity: str = "ctl-a") -> Controller:
    cluster = cluster or SimCluster()
    return Controller(store, cluster, SimTrainer(cluster), identity=identity)


def drive(controller: Controller, run_id: str, *, until=None, max_passes: int = 500) -> None:
    """Reconcile pass by pass until the run finishes (or ``until`` holds)."""
    store = controller.store
    for _ in range(max_passes):
        run = store.get_run(run_id)
        if run.phase.terminal or (until is not None and until(run)):
            return
        controller.reconcile_once()
    raise AssertionError(f"run {run_id} did not get there in {max_passes} passes: {store.get_run(run_id)}")


def expected_checkpoints(every: int, stage_steps: list[int]) -> list[int]:
    ends, total = [], 0
    for steps in stage_steps:
        total += steps
        ends.append(total)
    return sorted({s for s in range(1, total + 1) if s % every == 0} | set(ends))


def test_the_quickstart_run_completes_exactly_as_its_spec_says(store: Store, quickstart: Path) -> None:
    spec = load_spec(quickstart)
    run = service.submit(store, service.validate(quickstart))
    cluster = SimCluster()
    drive(make_controller(store, cluster), run.id)

    done = store.get_run(run.id)
    assert done.phase is Phase.SUCCEEDED
    assert done.steps_done == spec.total_steps == 9
    steps = store.steps(run.id)
    assert [s.step for s in steps] == list(range(1, 10))
    limits = [stage.max_response_tokens for stage in spec.curriculum]
    turns = [stage.max_turns for stage in spec.curriculum]
    stage_of_step = [0] * 4 + [1] * 2 + [2] * 3
    assert [s.stage_index for s in steps] == stage_of_step
    assert [s.max_response_tokens for s in steps] == [limits[i] for i in stage_of_step]
    assert [s.max_turns for s in steps] == [turns[i] for i in stage_of_step]
    assert all(s.rollouts == 256 for s in steps)

    checkpoints = store.checkpoints(run.id)
    assert [c.step for c in checkpoints] == expected_checkpoints(2, [4, 2, 3]) == [2, 4, 6, 8, 9]
    assert checkpoints[-1].uri == f"file:///tmp/orch-checkpoints/quickstart/{run.id}/step-000009"

    stages = store.stages(run.id)
    assert [(s.start_after_step, s.end_step) for s in stages] == [(0, 4), (4, 6), (6, 9)]
    changes = [e for e in store.events(run.id) if e.reason == "StageChanged"]
    assert [e.data["after_step"] for e in changes] == [4, 6]

    filtered = stages[2]
    assert filtered.problems_in == 1024
    assert 0 < filtered.problems_kept < 1024
    assert len(store.dropped_problems(run.id)) == 1024 - filtered.problems_kept
    assert store.problem_count(run.id, 2) == 1024

    assert all(w.status is WorkloadStatus.DELETED for w in store.workloads(run.id))
    assert cluster.list_workloads() == []
    assert 0.0 < done.gpu_busy_fraction <= 1.0
    assert done.sim_seconds > 0


def test_stage_advance_mid_run_changes_the_token_limit_from_the_next_step(
    store: Store, quickstart: Path
) -> None:
    run = service.submit(store, service.validate(quickstart))
    controller = make_controller(store)
    drive(controller, run.id, until=lambda r: r.steps_done == 3)

    service.advance_stage(store, run.id)
    drive(controller, run.id)

    steps = store.steps(run.id)
    assert [s.max_response_tokens for s in steps[:4]] == [8192, 8192, 8192, 12288]
    assert [s.stage_index for s in steps] == [0, 0, 0, 1, 1, 2, 2, 2]
    stages = store.stages(run.id)
    assert (stages[0].end_step, stages[1].start_after_step) == (3, 3)
    assert 3 in [c.step for c in store.checkpoints(run.id)], "a stage boundary is always checkpointed"
    reasons = [e.reason for e in store.events(run.id)]
    assert "AdvanceRequested" in reasons
    requested = [
        e
        for e in store.events(run.id)
        if e.reason == "StageChanged" and e.data["reason"] == "advance requested"
    ]
    assert [e.data["after_step"] for e in requested] == [3]
    assert store.get_run(run.id).phase is Phase.SUCCEEDED


def test_an_advance_rule_ends_a_stage_early_at_a_checkpointed_boundary(store: Store, tmp_path: Path) -> None:
    data = spec_data()
    data["curriculum"][0]["steps"] = 30
    data["curriculum"][0]["advance_when"] = {"solve_rate_at_least": 0.5, "min_steps": 2}
    data["checkpoint"]["every_steps"] = 5
    run = store.create_run(load_spec(write_spec(tmp_path, data)))
    drive(make_controller(store), run.id)

    steps = store.steps(run.id)
    first_stage = [s for s in steps if s.stage_index == 0]
    met = next(s.step for s in first_stage if s.step >= 2 and s.correct / s.rollouts >= 0.5)
    assert first_stage[-1].step == met < 30, "the stage ended at the first step that met the rule"
    assert store.stages(run.id)[0].end_step == met
    assert met in [c.step for c in store.checkpoints(run.id)]
    assert [s.max_response_tokens for s in steps if s.step == met + 1] == [12288]
    assert len(steps) == met + 2 + 3
    assert store.get_run(run.id).phase is Phase.SUCCEEDED


@pytest.mark.parametrize("fault", ["node_loss", "pod_crash"])
def test_a_failed_gang_member_recreates_the_whole_gang_from_the_last_checkpoint(
    store: Store, quickstart: Path, fault: str
) -> None:
    run = service.submit(store, service.validate(quickstart))
    cluster = SimCluster(faults=[Fault(fault, at_step=4)])
    trainer = SimTrainer(cluster)
    controller = Controller(store, cluster, trainer, identity="ctl-a")
    drive(controller, run.id)

    done = store.get_run(run.id)
    assert done.phase is Phase.SUCCEEDED
    assert done.attempt == 2
    [failure] = [e for e in store.events(run.id) if e.reason == "GangFailed"]
    assert failure.data["resume_step"] == 2 and failure.data["lost_steps"] == 1
    live = store.steps(run.id)
    assert [s.step for s in live] == list(range(1, 10)), "no step counted twice"
    every = store.steps(run.id, include_superseded=True)
    assert [(s.step, s.attempt) for s in every if s.superseded] == [(3, 1)]
    assert min(s.step for s in live if s.attempt == 2) == 3, "attempt 2 resumed after the step-2 checkpoint"
    assert next(step for _, attempt, step in trainer.executed if attempt == 2) == 3
    assert Counter(cluster.created).most_common(1)[0][1] == 1, "no workload created twice"
    workloads = store.workloads(run.id)
    assert {w.attempt for w in workloads} == {1, 2}
    assert all(w.env["ORCH_RESUME_STEP"] == "2" for w in workloads if w.role == "trainer" and w.attempt == 2)
    if fault == "node_loss":
        assert {w.node for w in workloads if w.attempt == 2} == {"sim-node-r1"}, (
            "moved to the replacement node"
        )


def test_a_gang_one_gpu_short_waits_with_an_event_and_places_nothing(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    data = spec_data()
    data["pools"]["node"] = {"gpu_type": "H100-80GB", "gpus": 8}
    run = store.create_run(load_spec(write_spec(tmp_path, data)))
    cluster = SimCluster({"node": PoolSpec(gpus=7, gpus_per_node=7)}, autoprovision=False)
    controller = make_controller(store, cluster)
    for _ in range(5):
        controller.reconcile_once()

    waiting = store.get_run(run.id)
    assert waiting.phase is Phase.PENDING
    assert cluster.created == [] and store.workloads(run.id) == []
    [event] = [e for e in store.events(run.id) if e.reason == "Unschedulable"]
    assert "pool node: no ready node has 8 GPUs for one member of the gang" in event.message
    store.close()


def test_two_controllers_never_act_on_the_same_run(db_url: str, quickstart: Path) -> None:
    first_store, second_store = Store(db_url), Store(db_url)
    runs = [service.submit(first_store, service.validate(quickstart)).id for _ in range(2)]
    first_cluster, second_cluster = SimCluster(), SimCluster()
    first = make_controller(first_store, first_cluster, "ctl-a")
    second = make_controller(second_store, second_cluster, "ctl-b")
    for _ in range(200):
        if all(first_store.get_run(r).phase.terminal for r in runs):
            break
        first.reconcile_once()
        second.reconcile_once()

    assert all(first_store.get_run(r).phase is Phase.SUCCEEDED for r in runs)
    assert first_cluster.created and not second_cluster.created, (
        "the second controller found every run leased"
    )
    for run_id in runs:
        assert [s.step for s in first_store.steps(run_id)] == list(range(1, 10))
    first_store.close()
    second_store.close()


def test_racing_controllers_split_runs_but_each_run_has_one_owner(db_url: str, quickstart: Path) -> None:
    stores = [Store(db_url) for _ in range(2)]
    runs = [service.submit(stores[0], service.validate(quickstart)).id for _ in range(4)]
    clusters = [SimCluster(), SimCluster()]
    controllers = [make_controller(stores[i], clusters[i], f"ctl-{i}") for i in range(2)]
    finished = lambda: all(stores[0].get_run(r).phase.terminal for r in runs)  # noqa: E731
    threads = [
        threading.Thread(target=c.run, kwargs={"until": finished, "idle_wait_s": 0.05}) for c in controllers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    for run_id in runs:
        assert stores[0].get_run(run_id).phase is Phase.SUCCEEDED
        creators = [
            i for i, cluster in enumerate(clusters) if any(n.startswith(run_id) for n in cluster.created)
        ]
        assert len(creators) == 1, f"{run_id} was acted on by controllers {creators}"
        assert [s.step for s in stores[0].steps(run_id)] == list(range(1, 10))
    for store in stores:
        store.close()


def test_a_stale_write_is_rejected_not_silently_applied(store: Store, quickstart: Path) -> None:
    run = service.submit(store, service.validate(quickstart))
    service.cancel_run(store, run.id)
    with pytest.raises(ConflictError, match="changed by another writer"):
        store.apply(RunPatch(run_id=run.id, expected_version=run.version, run={"message": "stale"}))
    assert store.get_run(run.id).phase is Phase.CANCELLED


def test_a_submitted_run_is_stored_as_the_core_builds_it(store: Store, quickstart: Path) -> None:
    from dataclasses import replace

    from orchestrator.core.lifecycle import initial_run

    spec = service.validate(quickstart)
    run = store.create_run(spec, external_ref="orch/quickstart/uid-1")
    built = initial_run(spec, run.id, run.created_at, external_ref="orch/quickstart/uid-1")
    assert run == replace(built.run, updated_at=run.updated_at)
    assert tuple(store.stages(run.id)) == built.stages
    [event] = store.events(run.id)
    assert (event.reason, event.message) == (built.event.reason, built.event.message)
    with pytest.raises(ConflictError, match="already mirrored"):
        store.create_run(spec, external_ref="orch/quickstart/uid-1")


def test_the_idle_suspend_request_is_a_versioned_patch_written_with_the_samples(
    store: Store, quickstart: Path
) -> None:
    from orchestrator.core import commands
    from orchestrator.core.idle import IdleUpdate
    from orchestrator.records import GpuSample

    run = service.submit(store, service.validate(quickstart))
    sample = GpuSample(node="n0", index=0, uuid="GPU-n0-0", utilization_ratio=0.0, run=run.id, role="trainer")
    request = commands.request_suspend(run)
    assert request is not None
    store.record_telemetry([sample], IdleUpdate(stretches={}), {}, [request])
    requested = store.get_run(run.id)
    assert requested.suspend_requested and requested.version == run.version + 1
    assert [r.sample.node for r in store.latest_gpu_readings()] == ["n0"]

    stale = commands.request_suspend(run)  # read before the first request: rejected with its samples
    later = GpuSample(node="n1", index=0, uuid="GPU-n1-0", utilization_ratio=0.0, run=run.id, role="trainer")
    with pytest.raises(ConflictError, match="changed by another writer"):
        store.record_telemetry([later], IdleUpdate(stretches={}), {}, [stale])
    assert [r.sample.node for r in store.latest_gpu_readings()] == ["n0"]
    assert store.get_run(run.id).version == requested.version

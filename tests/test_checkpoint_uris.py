"""Checkpoints are unique per run: two runs of one spec never write (or resume from) the same URI."""

from __future__ import annotations

from pathlib import Path

from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.records import Phase
from orchestrator.sim.cluster import Fault, SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import load_spec
from orchestrator.state.store import Store
from tests.test_run_lifecycle import drive


def _run_to_completion(store: Store, spec_file: Path, cluster: SimCluster) -> str:
    run = service.submit(store, service.validate(spec_file))
    drive(Controller(store, cluster, SimTrainer(cluster), identity="ctl-a"), run.id)
    assert store.get_run(run.id).phase is Phase.SUCCEEDED
    return run.id


def test_two_runs_of_one_spec_write_their_checkpoints_under_their_own_run_ids(
    store: Store, quickstart: Path
) -> None:
    base = load_spec(quickstart).checkpoint.uri.rstrip("/")
    resumed = _run_to_completion(store, quickstart, SimCluster(faults=[Fault("pod_crash", at_step=4)]))
    other = _run_to_completion(store, quickstart, SimCluster())

    uris = {run_id: [c.uri for c in store.checkpoints(run_id)] for run_id in (resumed, other)}
    for run_id, written in uris.items():
        assert written, f"{run_id} saved no checkpoint"
        assert all(uri.startswith(f"{base}/{run_id}/step-") for uri in written), written
    assert not set(uris[resumed]) & set(uris[other])

    for run_id in (resumed, other):
        trainers = [w for w in store.workloads(run_id) if w.role == "trainer"]
        assert trainers and all(w.env["ORCH_CHECKPOINT_URI"] == f"{base}/{run_id}" for w in trainers)
    [resume_from] = {
        w.env["ORCH_RESUME_FROM"] for w in store.workloads(resumed) if w.role == "trainer" and w.attempt == 2
    }
    assert resume_from == f"{base}/{resumed}/step-000002"

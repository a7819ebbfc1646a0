"""The Ray backend against a real local Ray (one for the module: 4 logical GPUs, labelled pool ``gpu``).

A two-member gang runs real processes that print their ``CUDA_VISIBLE_DEVICES``: both are observed running
on distinct GPUs; a second create duplicates nothing; a SIGKILLed process is observed as a failure; delete
leaves no process and no placement group behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import ray

from orchestrator.backends import BACKENDS, check_backend_name
from orchestrator.backends.base import GangCreator
from orchestrator.backends.ray.cluster import NAMESPACE, RayCluster, gang_name
from orchestrator.core.members import workload_name
from orchestrator.records import Workload, WorkloadStatus
from tests.ray_rig import alive, local_ray, processes_mentioning, until

SLEEPER = "import os, time; print('gpus', os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep(60)"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with local_ray(tmp_path_factory.mktemp("logs")) as cluster:
        yield cluster


def gang(cluster: RayCluster, run: str, attempt: int = 1) -> list[Workload]:
    node = cluster.list_nodes()[0].name
    command = f'{sys.executable} -c "{SLEEPER}"'
    return [
        Workload(
            name=workload_name(run, "trainer", index, attempt),
            run_id=run,
            role="trainer",
            index=index,
            attempt=attempt,
            pool="gpu",
            node=node,
            gpus=1,
            status=WorkloadStatus.PENDING,
            env={"ORCH_COMMAND": command, "ORCH_RANK": str(index)},
        )
        for index in range(2)
    ]


def phases(cluster: RayCluster, run: str) -> dict[str, str]:
    return {w.name: w.phase for w in cluster.list_workloads(run)}


def pids(cluster: RayCluster, names: list[str]) -> dict[str, int]:
    return {
        name: ray.get(ray.get_actor(name, namespace=NAMESPACE).status.remote(), timeout=30)["pid"]
        for name in names
    }


def groups(name: str) -> list[dict[str, object]]:
    return [
        group
        for group in ray.util.placement_group_table().values()
        if group["name"] == name and group["state"] != "REMOVED"
    ]


def test_ray_is_a_backend_name() -> None:
    assert "ray" in BACKENDS and check_backend_name("ray") == "ray"


def test_nodes_come_from_the_ray_cluster(cluster: RayCluster) -> None:
    [node] = cluster.list_nodes()
    assert (node.pool, node.gpus, node.ready) == ("gpu", 4, True)


def test_a_gang_runs_finds_its_members_by_name_and_cleans_up(cluster: RayCluster) -> None:
    members = gang(cluster, "r1")
    names = [w.name for w in members]
    assert isinstance(cluster, GangCreator)
    assert cluster.create_workloads(members) == 2
    until(lambda: phases(cluster, "r1") == dict.fromkeys(names, "Running"))
    assert [g["strategy"] for g in groups(gang_name("r1", 1))] == ["STRICT_PACK"]

    # Each process saw its own GPU.
    logs = [Path(cluster.log_path(w)) for w in members]
    until(lambda: all(log.exists() and log.read_text().strip() for log in logs))
    seen = [log.read_text().split()[1] for log in logs]
    assert len(set(seen)) == 2 and all(gpu in "0123" for gpu in seen)

    # A restarted controller creates nothing twice: same names, same processes, one placement group.
    before = pids(cluster, names)
    assert cluster.create_workloads(members) == 0
    assert cluster.create_workload(members[0]) is False
    assert pids(cluster, names) == before and len(groups(gang_name("r1", 1))) == 1
    assert len([a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] in names]) == 2

    # A SIGKILLed member process is a failed member.
    os.kill(before[names[0]], signal.SIGKILL)
    until(lambda: phases(cluster, "r1")[names[0]] == "Failed")
    [failed] = [w for w in cluster.list_workloads("r1") if w.name == names[0]]
    assert "killed by signal 9" in failed.reason
    assert phases(cluster, "r1")[names[1]] == "Running"

    # Delete leaves no process, no actor and no placement group.
    assert all(cluster.delete_workload(name) for name in names)
    assert cluster.delete_workload(names[0]) is False
    until(lambda: not any(alive(pid) for pid in before.values()), 30)
    assert cluster.list_workloads("r1") == [] and groups(gang_name("r1", 1)) == []


def test_a_gang_that_does_not_fit_waits_whole(cluster: RayCluster) -> None:
    """Three 2-GPU members on a 4-GPU node: the placement group reserves nothing, no member starts."""
    members = [
        replace(w, gpus=2, name=workload_name("r2", "trainer", i, 1), index=i)
        for i, w in enumerate(gang(cluster, "r2") + gang(cluster, "r2")[:1])
    ]
    assert cluster.create_workloads(members) == 3
    time.sleep(1.0)
    assert set(phases(cluster, "r2").values()) == {"Pending"}
    for w in members:
        cluster.delete_workload(w.name)
    assert cluster.list_workloads("r2") == [] and groups(gang_name("r2", 1)) == []


def test_a_dead_actor_takes_its_process_and_is_no_longer_observed(cluster: RayCluster) -> None:
    """The controller sees a member it recorded running vanish (a gang failure); no orphan remains."""
    members = gang(cluster, "r3")
    cluster.create_workloads(members)
    names = [w.name for w in members]
    until(lambda: phases(cluster, "r3") == dict.fromkeys(names, "Running"))
    pid = pids(cluster, names)[names[0]]
    ray.kill(ray.get_actor(names[0], namespace=NAMESPACE), no_restart=True)
    until(lambda: names[0] not in phases(cluster, "r3"))
    until(lambda: not alive(pid), 30)
    for name in names:
        cluster.delete_workload(name)
    assert cluster.list_workloads("r3") == [] and groups(gang_name("r3", 1)) == []


def test_make_backend_ray_uses_the_connected_cluster(cluster: RayCluster) -> None:
    from orchestrator.backends import make_backend

    parts = make_backend("ray")
    assert parts.cluster.name == "ray" and not parts.in_process
    assert [node.pool for node in parts.cluster.list_nodes()] == ["gpu"]


def test_a_colocated_engine_shares_its_hosts_gpu(cluster: RayCluster) -> None:
    trainers = gang(cluster, "r4")[:1]
    host = trainers[0]
    engine = replace(
        host,
        name=workload_name("r4", "engine", 0, 1),
        role="engine",
        gpus=0,
        env={**host.env, "ORCH_COLOCATED_WITH": host.name},
    )
    assert cluster.create_workloads([*trainers, engine]) == 2
    names = [host.name, engine.name]
    until(lambda: phases(cluster, "r4") == dict.fromkeys(names, "Running"))
    logs = [Path(cluster.log_path(w)) for w in (host, engine)]
    until(lambda: all(log.exists() and log.read_text().strip() for log in logs))
    assert logs[0].read_text() == logs[1].read_text()  # "gpus N": the same GPU
    for name in names:
        cluster.delete_workload(name)
    assert cluster.list_workloads("r4") == [] and groups(gang_name("r4", 1)) == []


def test_a_run_on_ray_succeeds_with_its_engines_and_trainer_launched_from_the_spec(
    cluster: RayCluster, tmp_path: Path
) -> None:
    """The controller drives a tiny run on Ray: two fake engines of ``kind: command`` on their own ports
    (colocated on the trainer's two GPUs: the test's Ray node is one pool),
    the scripted trainer (``tests/scripts/scripted_trainer.py``) answering through the mailbox after
    checking both engines' /health; the run Succeeds and leaves no actor behind."""
    from orchestrator import service
    from orchestrator.backends.ray.mailbox import RayExecutor
    from orchestrator.controller import Controller
    from orchestrator.records import Phase
    from orchestrator.state.store import Store
    from tests.conftest import spec_data, write_spec

    root = Path(__file__).resolve().parents[1]
    trainer_log = tmp_path / "trainer.log"
    engine = (
        f"{sys.executable} -m orchestrator.testing.fake_engine serve {{model}} --port {{port}}"
        " --tensor-parallel-size {tp} --max-model-len {max_model_len}"
    )
    paths = {"PYTHONPATH": str(root)}
    data = spec_data()
    data["name"] = "ray-e2e"
    data["model"] = {"name": "tiny", "params_b": 0.5, "layers": 24, "kv_heads": 2, "head_dim": 64}
    data["pools"] = {"gpu": {"gpu_type": "H100-80GB", "gpus": 4, "gpus_per_node": 4}}
    data["trainer"] = {
        "pool": "gpu",
        "gpus": 2,
        "command": f"{sys.executable} {root / 'tests' / 'scripts' / 'scripted_trainer.py'}",
        "env": {**paths, "SCRIPTED_TRAINER_LOG": str(trainer_log)},
    }
    data["rollout"].update(
        pool="gpu",
        engines=2,
        gpus_per_engine=1,
        engine={"kind": "command", "command": engine, "port": 19310, "env": paths},
    )
    data["curriculum"] = [{"name": "only", "max_response_tokens": 1024, "max_turns": 2, "steps": 3}]
    data["checkpoint"] = {"every_steps": 2, "uri": f"file://{tmp_path / 'checkpoints'}"}

    ray_cluster = RayCluster(log_dir=str(tmp_path / "logs"), mailbox_root=str(tmp_path / "mailbox"))
    executor = RayExecutor(ray_cluster.list_workloads, root=tmp_path / "mailbox", wait_s=0.5)
    store = Store(f"sqlite:///{tmp_path / 'orch.db'}")
    run_id = service.submit(store, service.validate(write_spec(tmp_path, data, "ray.yaml"))).id
    try:
        controller = Controller(store, ray_cluster, executor, identity="ctl")
        stop = threading.Event()
        timer = threading.Timer(150, stop.set)
        timer.start()
        try:
            controller.run(until=lambda: store.get_run(run_id).phase.terminal, stop=stop)
        finally:
            timer.cancel()
        run = store.get_run(run_id)
        assert run.phase is Phase.SUCCEEDED, (run.phase, run.message)
        urls = "http://127.0.0.1:19310 http://127.0.0.1:19311"
        assert trainer_log.read_text().splitlines() == [f"step {n} {urls}" for n in (1, 2, 3)]
        until(lambda: ray_cluster.list_workloads(run_id) == [], 60)
    finally:
        for each in ray_cluster.list_workloads(run_id):
            ray_cluster.delete_workload(each.name)
        store.close()


def test_the_ray_quickstart_succeeds_with_orch_worker_through_orch_submit_wait(
    cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``examples/ray-quickstart.yaml`` through ``orch submit --backend ray --wait`` (in process, on the
    module's Ray): the real ``orch worker`` against two fake engines; SQL holds real figures per step, the
    engines' weights version advances every step, and nothing is left running."""
    import json

    import yaml
    from click.testing import CliRunner

    from cli import main
    from orchestrator.records import Phase
    from orchestrator.spec import load_spec_data
    from orchestrator.state.store import Store

    root = Path(__file__).resolve().parents[1]
    data = load_spec_data(root / "examples" / "ray-quickstart.yaml")  # ./ paths made absolute
    work = tmp_path / "work"
    data["checkpoint"]["uri"] = (tmp_path / "checkpoints").as_uri()
    data["trainer"]["env"] = {"ORCH_WORK_DIR": str(work)}
    spec_file = tmp_path / "ray-quickstart.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    database = f"sqlite:///{tmp_path / 'orch.db'}"
    monkeypatch.setenv("ORCH_DATABASE_URL", database)
    monkeypatch.setenv("ORCH_RAY_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("ORCH_RAY_MAILBOX_ROOT", str(tmp_path / "mailbox"))

    done = CliRunner().invoke(main, ["submit", str(spec_file), "--backend", "ray", "--wait", "-o", "json"])
    store = Store(database)
    try:
        [run] = store.list_runs()
        assert done.exit_code == 0, (done.output, run.phase, run.message)
        assert run.phase is Phase.SUCCEEDED
        steps = store.steps(run.id)
        assert [s.step for s in steps] == [1, 2, 3] and [s.stage_index for s in steps] == [0, 1, 2]
        for s in steps:  # real figures from the engines, not a simulator's
            assert s.rollouts > 0 and 0 < s.correct <= s.rollouts and s.generated_tokens > 0
            assert s.rollout_seconds > 0 and s.train_seconds > 0
            assert s.turns >= s.rollouts and s.tool_errors <= s.tool_calls
            assert s.reward_sum == s.correct and 0 < s.solve_rate <= 1
            assert s.weights_version == s.step  # generated with the weights of the step before
            assert (s.infra_masked, s.stale_dropped, s.stale_regenerated) == (0, 0, 0)
        assert sum(s.tool_calls for s in steps) > 0  # some answers ran code in the sandbox

        # The learner wrote version 1 + step each step; the next step's rollouts were generated with it.
        for step in (1, 2, 3):
            step_dir = work / f"step-{step:06d}"
            assert (step_dir / "weights" / "version").read_text().strip() == str(1 + step)
            rows = [json.loads(line) for line in (step_dir / "batch.jsonl").read_text().splitlines()]
            assert rows and all(set(row["weights_versions"]) == {step} for row in rows), rows[0]
        # Stage 3's entry filter dropped the problems solved every time (by the engines' real rewards).
        dropped = store.dropped_problems(run.id)
        assert 0 < len(dropped) < 8
        chosen = json.loads((work / "step-000003" / "report.json").read_text())["problems"]
        assert not dropped & set(chosen)

        until(lambda: cluster.list_workloads(run.id) == [], 60)
        named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert not [name for name in named if run.id in name]
        until(lambda: not processes_mentioning(str(work)), 30)
        engine_model = data["rollout"]["engine"]["model"]  # on the fake engines' command lines
        until(lambda: not processes_mentioning(engine_model), 30)
    finally:
        for each in cluster.list_workloads(run.id):
            cluster.delete_workload(each.name)
        store.close()

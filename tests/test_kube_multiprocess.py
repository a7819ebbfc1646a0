"""The quickstart through the Kubernetes backend with real processes, and the faults of the Ray issue.

The API server is the wire-level fake (``tests/kube_rig/api_server.py``); its kubelet runs each pod's
container as a local process (``tests/kube_rig/processes.py``: env, the control ConfigMap as files, a pod
IP of its own in 127.0.0.0/8, names of the engine Service resolved to those IPs). The controller is
``orch controller --backend kube`` in a process of its own, reaching the fake through a kubeconfig; the
engines are the fake engine (``kind: command``, bound to ``{host}``, each logging its answers), the
trainer is ``orch worker`` with ``examples/learner_example.py`` and the embedded tool service, taking its
work through the ConfigMap mailbox as the ``orch-trainer`` ServiceAccount.

- the run reaches Succeeded with real per-step figures in SQL;
- colocated (one pool), the engines run inside the trainer's pod, started by its launcher, and answer;
- SIGKILL an engine's process mid-step: its requests finish on the other engine, the kubelet restarts it
  in place (``restartPolicy: Always``), the gang is not torn down, no request is lost or answered twice;
- SIGKILL the trainer's process: attempt 2 resumes from the last checkpoint with its weights, no step
  is recorded twice;
- SIGKILL the controller: a new one finds the pods, creates nothing twice, and the run ends;
- ``orch cancel``: no pod and no process of the run is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.core.members import workload_name
from orchestrator.kube.rbac import CONTROLLER_ACCOUNT, TRAINER_ACCOUNT
from orchestrator.records import Phase, Run
from orchestrator.spec import load_spec_data
from orchestrator.state.store import Store
from orchestrator.worker.colocated import LAUNCHER
from tests.kube_rig.api_server import FakeKubeServer
from tests.kube_rig.processes import ProcessKubelet
from tests.process_checks import (
    batch_versions,
    engine_answers,
    processes_mentioning,
    step_report,
    until,
    wait_gone,
)

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "orch"
ORCH = (sys.executable, "-c", "from cli import main; main()")
PORT = 19510
# Colocated engines bind 0.0.0.0 (the launcher's argv is in an env value, which this kubelet does not
# rewrite to the pod's IP): ports apart from PORT's, so they never collide with another test's engines.
COLOCATED_PORT = 19530
POOLS = ("train", "gen")  # one 2-GPU node each
# ~60 tokens an answer at 20 ms a token: a turn takes about a second, a step a few.
SLOW = "--fake-seconds-per-token 0.02"
ROLLOUTS_PER_STEP = 4 * 2 * 2  # prompts_per_step × samples_per_prompt × the reference trainer's oversampling


def kube_quickstart(tmp_path: Path, engine_flags: str, colocated: bool = False) -> dict[str, Any]:
    """``examples/ray-quickstart.yaml`` for pods: the trainer and the engines in pools of their own (so each
    engine is a pod), or with ``colocated`` both in pool "train" (the engines then run inside the trainer's
    pod, started by its launcher, ``orchestrator.worker.colocated``), each engine bound to ``{host}``
    (0.0.0.0: its pod's IP) and logging its answers to ``requests/engine-<index>.jsonl`` (``$(VAR)`` is
    Kubernetes' own expansion of the container's env)."""
    data = load_spec_data(ROOT / "examples" / "ray-quickstart.yaml")
    data["name"] = "kube-quickstart"
    gpu = data["pools"].pop("gpu")
    data["pools"] = {pool: {**gpu, "gpus": 2, "gpus_per_node": 2} for pool in POOLS}
    data["trainer"]["pool"], data["rollout"]["pool"] = (POOLS[0], POOLS[0]) if colocated else POOLS
    data["checkpoint"]["uri"] = (tmp_path / "checkpoints").as_uri()
    data["trainer"]["env"] = {"ORCH_WORK_DIR": str(tmp_path / "work")}
    engine = data["rollout"]["engine"]
    engine["port"] = COLOCATED_PORT if colocated else PORT
    log = f"{tmp_path / 'requests'}/engine-$(ORCH_ENGINE_INDEX).jsonl"
    engine["command"] = f"{engine['command']} --host {{host}} --fake-request-log {log} {engine_flags}"
    return data


class Rig:
    """One run of the quickstart on the fake cluster: its spec, database, kubelet and controllers."""

    def __init__(self, tmp_path: Path, engine_flags: str = SLOW, colocated: bool = False) -> None:
        self.tmp = tmp_path
        self.requests = tmp_path / "requests"
        self.requests.mkdir()
        self.work = tmp_path / "work"
        self.data = kube_quickstart(tmp_path, engine_flags, colocated)
        spec_file = tmp_path / "kube-quickstart.yaml"
        spec_file.write_text(yaml.safe_dump(self.data))
        self.server = FakeKubeServer().start()
        bin_dir = str(Path(sys.executable).parent)  # `orch` and `python` without the pyenv shims
        base_env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("ORCH_", "KUBE", "PYTEST_"))
        }
        base_env.update(PATH=f"{bin_dir}:{os.environ.get('PATH', '')}", PYTHONPATH=str(ROOT))
        self.kubelet = ProcessKubelet(self.server, tmp_path / "pods", base_env=base_env, grace_s=5)
        for pool in POOLS:
            self.kubelet.add_node(f"{pool}-0", gpus=2, labels={"orch.dev/pool": pool})
        self.kubelet.start(interval=0.05)
        self.database = f"sqlite:///{tmp_path / 'orch.db'}"
        self.env = {
            **base_env,
            "ORCH_DATABASE_URL": self.database,
            "ORCH_BACKEND": "kube",
            "ORCH_NAMESPACE": NAMESPACE,
            "KUBECONFIG": str(self.server.write_kubeconfig(tmp_path / "kubeconfig")),
        }
        self.store = Store(self.database)
        self.run_id = self.orch("submit", str(spec_file), "-o", "json", json_out=True)["id"]
        self.controllers: list[subprocess.Popen[bytes]] = []

    def orch(self, *args: str, json_out: bool = False) -> Any:
        done = subprocess.run(
            [*ORCH, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if json_out else done.stdout

    def start_controller(self) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"controller-{len(self.controllers)}.log", "wb") as log:
            process = subprocess.Popen(
                [*ORCH, "controller", "--exit-when-idle", "--lease-seconds", "3"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.controllers.append(process)
        return process

    def run(self) -> Run:
        return self.store.get_run(self.run_id)

    def pod_name(self, role: str, index: int, attempt: int = 1) -> str:
        return workload_name(self.run_id, role, index, attempt)

    def pod(self, name: str) -> dict[str, Any]:
        pod = self.server.get_object("", "pods", NAMESPACE, name)
        assert pod is not None, f"no pod {name}"
        return pod

    def pid(self, name: str) -> int:
        return self.kubelet.pid(NAMESPACE, name)

    def answers(self) -> list[dict[str, Any]]:
        return engine_answers(self.requests, "engine")

    def report(self, step: int) -> dict[str, Any]:
        return step_report(self.work, step)

    def batch_versions(self, step: int) -> set[int]:
        return batch_versions(self.work, step)

    def wait_terminal(self, seconds: float = 150) -> Run:
        until(lambda: self.run().phase.terminal, seconds, f"the run to end ({self.tmp})")
        until(lambda: all(c.poll() is not None for c in self.controllers), 60, "the controller to exit")
        return self.run()

    def assert_nothing_left(self) -> None:
        until(lambda: not self.server.list_objects("", "pods", NAMESPACE), 30, "the run's pods to go")
        wait_gone(str(self.work))
        wait_gone(str(self.requests))
        assert self.server.list_objects("", "configmaps", NAMESPACE) == []
        assert self.server.list_objects("", "services", NAMESPACE) == []

    def pod_creates(self) -> int:
        return sum(1 for r in self.server.requests if r.verb == "create" and r.resource == "pods")

    def close(self) -> None:
        for process in self.controllers:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.kubelet.stop()
        self.server.stop()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def fast_rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, engine_flags="")
    try:
        yield rig
    finally:
        rig.close()


def test_the_quickstart_succeeds_on_kubernetes_with_real_processes(fast_rig: Rig) -> None:
    rig = fast_rig
    rig.start_controller()
    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    steps = rig.store.steps(run.id)
    assert [s.step for s in steps] == [1, 2, 3] and [s.stage_index for s in steps] == [0, 1, 2]
    for s in steps:
        assert s.rollouts > 0 and 0 < s.correct <= s.rollouts and s.generated_tokens > 0
        assert s.rollout_seconds > 0 and s.train_seconds > 0
        assert s.turns >= s.rollouts and s.tool_errors <= s.tool_calls
        assert s.reward_sum == s.correct and 0 < s.solve_rate <= 1
        assert s.weights_version == s.step  # generated with the weights of the step before
        assert (s.infra_masked, s.stale_dropped, s.stale_regenerated) == (0, 0, 0)
    assert sum(s.tool_calls for s in steps) > 0  # some answers ran code in the embedded sandbox
    # Both engines answered, each at its own pod IP on the spec's port, through the engine Service's names.
    assert {a["engine"] for a in rig.answers()} == {0, 1}
    # The trainer took its work through the API as its ServiceAccount; the controller as its own.
    users = {r.user for r in rig.server.requests if rig.run_id in r.name or r.resource == "configmaps"}
    assert TRAINER_ACCOUNT in users
    assert {r.user for r in rig.server.requests} <= {TRAINER_ACCOUNT, "orch-fake-token", CONTROLLER_ACCOUNT}
    assert rig.pod_creates() == 3
    rig.assert_nothing_left()


def test_a_colocated_quickstart_runs_its_engines_inside_the_trainer_pod(tmp_path: Path) -> None:
    rig = Rig(tmp_path, engine_flags="", colocated=True)
    try:
        rig.start_controller()
        trainer = rig.pod_name("trainer", 0)
        until(lambda: rig.server.get_object("", "pods", NAMESPACE, trainer), 60, "the trainer pod")
        assert rig.pod(trainer)["spec"]["containers"][0]["command"] == [*LAUNCHER, "--", "orch", "worker"]
        run = rig.wait_terminal()
        assert run.phase is Phase.SUCCEEDED, run.message
        steps = rig.store.steps(run.id)
        assert [s.step for s in steps] == [1, 2, 3]
        for s in steps:
            assert s.rollouts > 0 and s.correct > 0 and s.infra_masked == 0
            assert s.weights_version == s.step
        # Both engines answered, each in the trainer's pod at the port the placement gave it.
        assert {a["engine"] for a in rig.answers()} == {0, 1}
        assert rig.pod_creates() == 1, "one pod: the trainer's, hosting both engines"
        log = rig.kubelet.log_path(NAMESPACE, trainer, "trainer").read_text()
        assert "2 engine(s) serving; starting the trainer" in log
        rig.assert_nothing_left()  # no engine process outlived the trainer's pod
    finally:
        rig.close()


def test_sigkill_one_engine_mid_step_its_requests_finish_on_the_other_and_it_restarts(rig: Rig) -> None:
    rig.start_controller()
    # Mid-step 2: the engines answer with version 2, the weights step 1's learner wrote.
    until(lambda: sum(a["version"] == 2 for a in rig.answers()) >= 4, 120, "step 2 to be under way")
    engine = rig.pod_name("engine", 0)
    uid = rig.pod(engine)["metadata"]["uid"]
    killed = rig.pid(engine)
    os.kill(killed, signal.SIGKILL)
    until(
        lambda: rig.pod(engine)["status"]["containerStatuses"][0]["restartCount"] == 1,
        30,
        "the engine to be restarted",
    )
    restarted = rig.pod(engine)
    assert restarted["metadata"]["uid"] == uid, "restarted in place, not recreated"
    [status] = restarted["status"]["containerStatuses"]
    assert status["lastState"]["terminated"]["signal"] == signal.SIGKILL
    until(lambda: rig.pid(engine) != killed, 30, "the engine's new process")

    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    assert run.attempt == 1  # the gang was never torn down
    assert [s.step for s in rig.store.steps(run.id)] == [1, 2, 3]
    assert not [e for e in rig.store.events(run.id) if e.reason == "GangFailed"]
    for step in (1, 2, 3):  # no rollout lost or masked: every one was answered, by one engine or the other
        report = rig.report(step)
        assert (report["rollouts"], report["infra_failed"]) == (ROLLOUTS_PER_STEP, 0), report
    answers = rig.answers()
    twice = [key for key, n in Counter((a["seed"], a["prompt_sha"]) for a in answers).items() if n > 1]
    assert twice == []
    # The restarted engine was given the next weights and answered again in step 3.
    assert any(a["engine"] == 0 and a["version"] == 3 for a in answers)
    assert rig.batch_versions(3) == {3}
    assert rig.pod_creates() == 3
    rig.assert_nothing_left()


def test_sigkill_the_trainer_resumes_from_the_checkpoint_with_its_weights(rig: Rig) -> None:
    rig.start_controller()
    # The quickstart checkpoints after step 2; kill the trainer as soon as that step is recorded.
    until(lambda: rig.run().steps_done >= 2, 120, "step 2 to be recorded")
    assert rig.run().steps_done == 2, "step 3 was done before the trainer could be killed"
    trainer = rig.pod_name("trainer", 0)
    os.kill(rig.pid(trainer), signal.SIGKILL)

    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    assert run.attempt == 2
    steps = rig.store.steps(run.id)
    assert [s.step for s in steps] == [1, 2, 3]  # step 3 once, though two attempts worked on it
    # Attempt 2's engines were launched on the spec's model (version 1): the trainer loaded the
    # checkpoint's weights (version 3, written by step 2's learner) before it rolled out step 3.
    assert rig.batch_versions(3) == {3}
    assert (rig.work / "step-000003" / "weights" / "version").read_text().strip() == "4"
    failed = [e for e in rig.store.events(run.id) if e.reason == "GangFailed"]
    assert len(failed) == 1 and trainer in failed[0].message, failed
    assert "exit code 137" in failed[0].message
    assert failed[0].data["resume_step"] == 2
    assert rig.pod_creates() == 6  # a whole new gang, once
    rig.assert_nothing_left()


def test_sigkill_the_controller_a_new_one_finds_the_pods_and_creates_nothing_twice(rig: Rig) -> None:
    first = rig.start_controller()
    until(lambda: rig.run().steps_done >= 1, 120, "step 1 to be recorded")
    names = [rig.pod_name("trainer", 0), rig.pod_name("engine", 0), rig.pod_name("engine", 1)]
    pids = {name: rig.pid(name) for name in names}
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert {name: rig.pid(name) for name in names} == pids  # the pods outlive the controller

    rig.start_controller()
    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    assert run.attempt == 1
    assert [s.step for s in rig.store.steps(run.id)] == [1, 2, 3]
    assert [e.reason for e in rig.store.events(run.id)].count("Placed") == 1
    assert rig.pod_creates() == 3
    # Each engine's process was started once: one start line in each pod's log.
    for index in (0, 1):
        log = rig.kubelet.log_path(NAMESPACE, rig.pod_name("engine", index), "engine")
        assert log.read_text().count("serving on") == 1
    rig.assert_nothing_left()


def test_orch_cancel_mid_step_leaves_no_pod_and_no_process_behind(rig: Rig) -> None:
    rig.start_controller()
    until(lambda: rig.run().steps_done >= 1, 120, "step 1 to be recorded")
    assert processes_mentioning(str(rig.work)) and processes_mentioning(str(rig.requests))
    rig.orch("cancel", rig.run_id)
    run = rig.wait_terminal()
    assert run.phase is Phase.CANCELLED
    rig.assert_nothing_left()

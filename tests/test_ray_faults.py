"""Faults on the Ray backend, each while ``examples/ray-quickstart.yaml`` runs for real: the controller is
``orch controller --backend ray`` in a process of its own (so it can be SIGKILLed), connected to this
module's local Ray; the engines answer slowly enough to be caught mid-step and log every answer.

- SIGKILL an engine's process mid-step: its requests finish on the other engine, its actor restarts it,
  the gang is not torn down, no request is lost or answered twice;
- SIGKILL the trainer's process: attempt 2 resumes from the last checkpoint with that checkpoint's
  weights loaded into the new engines, and no step is recorded twice;
- SIGKILL the controller: a new one finds the members by name, creates nothing twice, and the run ends;
- ``orch cancel``: no process of the run is left.
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

pytest.importorskip("ray")

import ray

from orchestrator.backends.ray.cluster import RayCluster
from orchestrator.core.members import workload_name
from orchestrator.records import Phase, Run
from orchestrator.state.store import Store
from tests.process_checks import batch_versions, engine_answers, step_report
from tests.ray_rig import (
    ROOT,
    local_ray,
    member_pid,
    member_status,
    processes_mentioning,
    quickstart_spec,
    until,
    wait_gone,
)

# ~60 tokens an answer at 20 ms a token: a turn takes about a second, a step a few.
SLOW = "--fake-seconds-per-token 0.02"
ORCH = (sys.executable, "-c", "from cli import main; main()")
ROLLOUTS_PER_STEP = 4 * 2 * 2  # prompts_per_step × samples_per_prompt × the reference trainer's oversampling


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    with local_ray(tmp_path_factory.mktemp("ray-logs")) as cluster:
        yield cluster


class Rig:
    """One run of the quickstart: its spec, its database, and the controller processes."""

    def __init__(self, tmp_path: Path, engine_flags: str = SLOW) -> None:
        self.tmp = tmp_path
        self.requests = tmp_path / "requests"
        self.requests.mkdir()
        flags = f"{engine_flags} --fake-request-log {self.requests}/engine-{{port}}.jsonl"
        self.spec_file, self.data = quickstart_spec(tmp_path, engine_flags=flags)
        self.work = tmp_path / "work"
        self.database = f"sqlite:///{tmp_path / 'orch.db'}"
        self.env = {
            **os.environ,
            "ORCH_DATABASE_URL": self.database,
            "ORCH_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            "ORCH_RAY_LOG_DIR": str(tmp_path / "logs"),
            "ORCH_RAY_MAILBOX_ROOT": str(tmp_path / "mailbox"),
            "PYTHONPATH": str(ROOT),
        }
        self.store = Store(self.database)
        self.run_id = self.orch("submit", str(self.spec_file), "-o", "json", json_out=True)["id"]
        self.controllers: list[subprocess.Popen[bytes]] = []

    def orch(self, *args: str, json_out: bool = False) -> Any:
        done = subprocess.run(
            [*ORCH, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout) if json_out else done.stdout

    def start_controller(self) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"controller-{len(self.controllers)}.log", "wb") as log:
            process = subprocess.Popen(
                [*ORCH, "controller", "--backend", "ray", "--exit-when-idle", "--lease-seconds", "3"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.controllers.append(process)
        return process

    def run(self) -> Run:
        return self.store.get_run(self.run_id)

    def member(self, role: str, index: int, attempt: int = 1) -> str:
        return workload_name(self.run_id, role, index, attempt)

    def answers(self) -> list[dict[str, Any]]:
        return engine_answers(self.requests, "port")

    def report(self, step: int) -> dict[str, Any]:
        return step_report(self.work, step)

    def batch_versions(self, step: int) -> set[int]:
        return batch_versions(self.work, step)

    def wait_terminal(self, seconds: float = 240) -> Run:
        until(lambda: self.run().phase.terminal, seconds, "the run to end")
        until(lambda: all(c.poll() is not None for c in self.controllers), 60, "the controller to exit")
        return self.run()

    def assert_nothing_left(self) -> None:
        wait_gone(str(self.work))
        wait_gone(str(self.requests))
        named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        assert not [name for name in named if self.run_id in name]

    def close(self) -> None:
        for process in self.controllers:
            if process.poll() is None:
                process.kill()
                process.wait()
        if not self.run().phase.terminal:
            self.orch("cancel", self.run_id)
            self.start_controller().wait(timeout=120)
        self.store.close()


@pytest.fixture
def rig(cluster: RayCluster, tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def test_sigkill_one_engine_mid_step_its_requests_finish_on_the_other_and_it_restarts(rig: Rig) -> None:
    rig.start_controller()
    # Mid-step 2: the engines answer with version 2, the weights step 1's learner wrote.
    until(lambda: sum(a["version"] == 2 for a in rig.answers()) >= 4, 120, "step 2 to be under way")
    engine = rig.member("engine", 0)
    killed = member_pid(engine)
    os.kill(killed, signal.SIGKILL)
    until(lambda: member_status(engine)["restarts"] == 1, 60, "the engine to be restarted")
    assert member_pid(engine) != killed

    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    assert run.attempt == 1  # the gang was never torn down
    assert [s.step for s in rig.store.steps(run.id)] == [1, 2, 3]
    for step in (1, 2, 3):  # no rollout lost or masked: every one was answered, by one engine or the other
        report = rig.report(step)
        assert (report["rollouts"], report["infra_failed"]) == (ROLLOUTS_PER_STEP, 0), report
    answers = rig.answers()
    twice = [key for key, n in Counter((a["seed"], a["prompt_sha"]) for a in answers).items() if n > 1]
    assert twice == []
    # The restarted engine was given the next weights and answered again in step 3.
    port = rig.data["rollout"]["engine"]["port"]
    assert any(a["port"] == port and a["version"] == 3 for a in answers)
    assert rig.batch_versions(3) == {3}
    rig.assert_nothing_left()


def test_sigkill_the_trainer_resumes_from_the_checkpoint_with_its_weights(rig: Rig) -> None:
    rig.start_controller()
    # The quickstart checkpoints after step 2; kill the trainer as soon as that step is recorded.
    until(lambda: rig.run().steps_done >= 2, 180, "step 2 to be recorded")
    assert rig.run().steps_done == 2, "step 3 was done before the trainer could be killed"
    os.kill(member_pid(rig.member("trainer", 0)), signal.SIGKILL)

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
    assert len(failed) == 1 and rig.member("trainer", 0) in failed[0].message
    assert failed[0].data["resume_step"] == 2
    rig.assert_nothing_left()


def test_sigkill_the_controller_a_new_one_finds_the_members_and_creates_nothing_twice(rig: Rig) -> None:
    first = rig.start_controller()
    until(lambda: rig.run().steps_done >= 1, 180, "step 1 to be recorded")
    trainer = rig.member("trainer", 0)
    pids = {name: member_pid(name) for name in (trainer, rig.member("engine", 0), rig.member("engine", 1))}
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert {name: member_pid(name) for name in pids} == pids  # the workloads outlive the controller

    rig.start_controller()
    run = rig.wait_terminal()
    assert run.phase is Phase.SUCCEEDED, run.message
    assert run.attempt == 1
    assert [s.step for s in rig.store.steps(run.id)] == [1, 2, 3]
    assert [e.reason for e in rig.store.events(run.id)].count("Placed") == 1
    # Each member's process was started once: one start line per engine log, one trainer.
    logs = rig.tmp / "logs"
    starts = {path.name: path.read_text().count("serving on") for path in logs.rglob("*engine*")}
    assert list(starts.values()) == [1, 1], starts
    rig.assert_nothing_left()


def test_orch_cancel_mid_step_leaves_no_process_behind(rig: Rig) -> None:
    rig.start_controller()
    until(lambda: rig.run().steps_done >= 1, 180, "step 1 to be recorded")
    assert processes_mentioning(str(rig.work)) and processes_mentioning(str(rig.requests))
    rig.orch("cancel", rig.run_id)
    run = rig.wait_terminal()
    assert run.phase is Phase.CANCELLED
    rig.assert_nothing_left()

"""The Ray backend's trainer mailbox and member launches, without Ray: the executor against a scripted
trainer thread on a directory, and each member's argv and env from the spec."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.backends.base import ExecutionInterrupted, WorkInProgress
from orchestrator.backends.ray.launch import member_launch
from orchestrator.backends.ray.mailbox import RayExecutor, mailbox_dir
from orchestrator.core.members import workload_name
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.core.work import CheckpointPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.records import Workload, WorkloadStatus
from orchestrator.spec import RunSpec, parse_spec
from orchestrator.worker.session import TrainerSession

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
FAKE_ENGINE = (
    f"{sys.executable} -m orchestrator.testing.fake_engine serve {{model}} --port {{port}}"
    " --tensor-parallel-size {tp} --max-model-len {max_model_len}"
)


def spec(**trainer: Any) -> RunSpec:
    data = json.loads(json.dumps(QUICKSTART))
    data["rollout"]["engines"] = 2
    data["rollout"]["engine"] = {"kind": "command", "command": FAKE_ENGINE, "port": 9100, "env": {"E": "1"}}
    data["trainer"].update(trainer)
    return parse_spec(data, "run.yaml")


def workload(role: str, index: int = 0, env: dict[str, str] | None = None) -> Workload:
    return Workload(
        name=workload_name("run-1", role, index, 2),
        run_id="run-1",
        role=role,
        index=index,
        attempt=2,
        pool="node",
        node="n1",
        gpus=1,
        status=WorkloadStatus.PENDING,
        env={"ORCH_RUN_ID": "run-1", **(env or {})},
    )


def step(n: int) -> StepPlan:
    return StepPlan("run-1", n, 0, 1, 256, 4, checkpoint_after=False, checkpoint_uri="file:///tmp/c")


def outcome(n: int) -> StepOutcome:
    return StepOutcome(n, 10 * n, 1.0, 2.0, 0.0, 0, n, 3.0, 4.0)


# ---- member launches ----------------------------------------------------------------------------


def test_the_trainer_runs_its_command_with_its_mailbox_and_the_engines_urls(tmp_path: Path) -> None:
    run = spec(command="python train.py --lr 1e-6", env={"WANDB_MODE": "offline"})
    launch = member_launch(workload("trainer"), run, mailbox=tmp_path / "a2")
    assert launch.argv == ("python", "train.py", "--lr", "1e-6")
    assert launch.env["ORCH_MAILBOX_DIR"] == str(tmp_path / "a2")
    assert launch.env["ORCH_ENGINE_URLS"] == "http://127.0.0.1:9100,http://127.0.0.1:9101"
    assert launch.env["WANDB_MODE"] == "offline" and launch.env["ORCH_RUN_ID"] == "run-1"
    session = TrainerSession.from_env(launch.env)
    assert session.engine_urls == ("http://127.0.0.1:9100", "http://127.0.0.1:9101")


def test_each_engine_on_a_box_gets_its_own_port_from_the_spec_template() -> None:
    run = spec()
    first, second = (member_launch(workload("engine", i), run, stage_index=1) for i in (0, 1))
    tail = ("--tensor-parallel-size", "1", "--max-model-len", str(run.max_model_len(1)))
    assert first.argv[1:] == ("-m", "orchestrator.testing.fake_engine", "serve", "Qwen3-14B-Base",
                              "--port", "9100", *tail)  # fmt: skip
    assert second.argv[second.argv.index("--port") + 1] == "9101"
    assert first.env["E"] == "1" and "ORCH_MAILBOX_DIR" not in first.env


def test_orch_command_overrides_the_spec_and_nothing_to_run_is_one_clear_error() -> None:
    member = workload("engine", env={"ORCH_COMMAND": "sleep 60"})
    assert member_launch(member, spec()).argv == ("sleep", "60")
    assert member_launch(member, None).argv == ("sleep", "60")
    with pytest.raises(OrchError, match="no command to run"):
        member_launch(workload("engine"), None)


# ---- the executor ------------------------------------------------------------------------------


class Members:
    """What the cluster reports for run-1's attempt 1."""

    def __init__(self) -> None:
        self.phase = "Running"

    def __call__(self, run_id: str) -> list[ObservedWorkload]:
        name = workload_name(run_id, "trainer", 0, 1)
        return [ObservedWorkload(name, run_id, "n1", self.phase, "exited with code 1")]


def test_the_executor_posts_each_plan_and_returns_the_trainers_result(tmp_path: Path) -> None:
    executor = RayExecutor(Members(), root=tmp_path, wait_s=5.0)
    run = spec()
    session = TrainerSession.from_env({"ORCH_MAILBOX_DIR": str(mailbox_dir(tmp_path, "run-1", 1))})
    seen: list[str] = []

    def trainer() -> None:
        for work in session.work(poll_s=0.01, idle_timeout_s=10):
            seen.append(work.key)
            assert session.spec == run
            if work.kind == "step":
                work.complete(outcome(work.message.step))
            else:
                work.complete(1.5)

    thread = threading.Thread(target=trainer, daemon=True)
    thread.start()
    assert executor.execute_step(run, step(1)) == outcome(1)
    assert executor.save_checkpoint(run, CheckpointPlan("run-1", 1, 1, "file:///tmp/c/1")) == 1.5
    assert executor.execute_step(run, step(2)) == outcome(2)
    assert executor.execute_step(run, step(1)) == outcome(1)  # asked again: the recorded result
    executor.mailbox("run-1", 1).close()
    thread.join(10)
    assert seen == ["step-1", "checkpoint-1", "step-2"]


def test_work_not_done_yet_is_in_progress_and_a_trainer_not_running_interrupts(tmp_path: Path) -> None:
    members = Members()
    executor = RayExecutor(members, root=tmp_path, wait_s=0.05)
    with pytest.raises(WorkInProgress, match="step-1"):
        executor.execute_step(spec(), step(1))
    posted = json.loads(executor.mailbox("run-1", 1).plan() or "{}")
    assert (posted["kind"], posted["step"]) == ("step", 1)
    members.phase = "Failed"
    with pytest.raises(ExecutionInterrupted, match="trainer run-1-trainer-0-a1 is Failed exited with code 1"):
        executor.execute_step(spec(), step(1))

"""SIGKILL the controller process at random points; the run must still finish with nothing lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.records import Phase
from orchestrator.state.store import Store
from tests.conftest import ROOT, spec_data, write_spec

pytestmark = pytest.mark.slow

STAGE_STEPS = [8, 5, 7]
EVERY = 3


def start_controller(db_url: str, identity: str, faults: str = "") -> subprocess.Popen[bytes]:
    env = dict(os.environ, ORCH_DATABASE_URL=db_url, ORCH_SIM_FAULTS=faults)
    command = [
        sys.executable,
        str(ROOT / "cli.py"),
        "controller",
        "--id",
        identity,
        "--lease-seconds",
        "1",
        "--exit-when-idle",
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def long_spec(tmp_path: Path) -> Path:
    data = spec_data()
    for stage, steps in zip(data["curriculum"], STAGE_STEPS, strict=True):
        stage["steps"] = steps
    data["checkpoint"]["every_steps"] = EVERY
    return write_spec(tmp_path, data)


def wait_for(
    store: Store, run_id: str, steps: int, process: subprocess.Popen[bytes], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.get_run(run_id).steps_done >= steps or process.poll() is not None:
            return
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} did not reach step {steps} in {timeout}s")


@pytest.mark.parametrize("faults", ["", "node_loss@11"])
def test_sigkilled_controller_resumes_without_losing_or_doubling_work(
    db_url: str, tmp_path: Path, faults: str
) -> None:
    store = Store(db_url)
    from orchestrator.spec import load_spec

    run_id = store.create_run(load_spec(long_spec(tmp_path))).id
    total = sum(STAGE_STEPS)
    rng = random.Random(f"kills-{faults}")
    kill_after = sorted(rng.sample(range(1, total - 2), 4))
    for index, target in enumerate(kill_after):
        process = start_controller(db_url, f"ctl-{index}", faults)
        wait_for(store, run_id, target, process)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere inside the next pass, not just between passes
        process.send_signal(signal.SIGKILL)
        process.communicate()
    final = start_controller(db_url, "ctl-final", faults)
    _, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr.decode()

    run = store.get_run(run_id)
    assert run.phase is Phase.SUCCEEDED, run.message
    steps = store.steps(run_id)
    assert [s.step for s in steps] == list(range(1, total + 1)), "every step counted exactly once"
    checkpoints = [c.step for c in store.checkpoints(run_id)]
    ends = [8, 13, 20]
    assert checkpoints == sorted({s for s in range(1, total + 1) if s % EVERY == 0} | set(ends))

    events = store.events(run_id)
    placed = [e.data["attempt"] for e in events if e.reason == "Placed"]
    assert placed == sorted(set(placed)), "each attempt placed once: no workload created twice"
    names = [w.name for w in store.workloads(run_id)]
    assert len(names) == len(set(names))
    assert run.attempt == len(placed) > 1, "the kills really interrupted running gangs"

    checkpoint_steps = set(checkpoints) | {0}
    all_steps = store.steps(run_id, include_superseded=True)
    for attempt in range(2, run.attempt + 1):
        first = min(s.step for s in all_steps if s.attempt == attempt)
        resumed = [e for e in events if e.reason == "Running" and e.data["attempt"] == attempt]
        assert resumed, f"attempt {attempt} never ran"
        resume_step = resumed[0].data["resume_step"]
        assert resume_step in checkpoint_steps and first == resume_step + 1, (
            f"attempt {attempt} started at step {first}, not right after its checkpoint {resume_step}"
        )
    for failure in (e for e in events if e.reason == "GangFailed"):
        assert failure.data["lost_steps"] < EVERY, "work lost stays within one checkpoint interval"
    if faults:
        assert any("NodeLost" in e.message for e in events if e.reason == "GangFailed")
    store.close()

"""``orch submit --wait`` through a real ``orch`` process: it returns for a Suspended run, says which other
runs it leaves alone or waits behind, lets go of its run on Ctrl-C, and a submit that fails stores nothing."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from sqlalchemy import create_engine, text

from cli import main
from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.errors import EXIT_INTERRUPTED, EXIT_RUN_CANCELLED, EXIT_RUN_SUSPENDED
from orchestrator.records import Phase
from orchestrator.render.wait import progress_bar as _progress
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import load_spec
from orchestrator.state.store import Store
from tests.conftest import EXAMPLES, ROOT, spec_data, write_spec

QUICKSTART = EXAMPLES / "quickstart.yaml"
PROCESS_TIMEOUT_S = 300  # a hung `orch` fails the test instead of hanging it


def orch_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "KUBE"))}
    return {**env, "ORCH_DATABASE_URL": db_url, "PYTHONUNBUFFERED": "1", **extra}


def orch(db_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args],
        env=orch_env(db_url, **extra),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        cwd=ROOT,
    )


def lease_owners(db_url: str) -> dict[str, str | None]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT id, lease_owner FROM runs")).all())  # type: ignore[arg-type]
    finally:
        engine.dispose()


@dataclass
class Waiting:
    """An ``orch submit --wait`` process whose stderr goes to a file the test can read while it runs."""

    process: subprocess.Popen[str]
    stderr_file: Path

    def stderr(self) -> str:
        return self.stderr_file.read_text()

    def until(self, condition: Callable[[], bool]) -> None:
        """Poll ``condition`` until it holds; fail if the process ends first or it never holds."""
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"orch ended early ({self.process.returncode}): {self.stderr()}")
            if time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"the condition never held: {self.stderr()}")
            time.sleep(0.2)

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and everything it wrote to stderr."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=PROCESS_TIMEOUT_S)
        return self.process.returncode, self.stderr()


def start_wait(db_url: str, folder: Path, *args: str) -> Waiting:
    stderr_file = folder / "stderr.txt"
    with stderr_file.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "submit", str(QUICKSTART), "--wait", *args],
            env=orch_env(db_url),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            cwd=ROOT,
        )
    return Waiting(process, stderr_file)


# ---- point 5: a Suspended run returns from --wait ---------------------------------------------


def idle_suspending_spec(folder: Path) -> Path:
    """Trainer and engines on separate pools, so each side idles while the other works: the idle policy
    suspends the run at its first checkpoint."""
    data = spec_data()
    data["pools"] = {"train": {"gpus": 8}, "gen": {"gpus": 8}}
    data["trainer"]["pool"] = "train"
    data["rollout"]["pool"] = "gen"
    data["idle"] = {"threshold_ratio": 0.05, "after_seconds": 60, "action": "suspend"}
    return write_spec(folder, data)


def test_wait_returns_for_a_suspended_run_with_why_and_how_to_continue(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    result = orch(db_url, "submit", str(idle_suspending_spec(tmp_path)), "--wait")
    assert result.returncode == EXIT_RUN_SUSPENDED, (result.returncode, result.stdout, result.stderr)
    [run] = store.list_runs()
    assert run.phase is Phase.SUSPENDED
    assert f"{run.id}: Suspended at step {run.steps_done} of 9" in result.stderr
    assert "GPUs sat idle" in result.stderr, "says why"
    assert f"orch resume {run.id}" in result.stderr and "orch controller --exit-when-idle" in result.stderr
    assert "Traceback" not in result.stderr


def test_controller_exit_when_idle_treats_a_suspended_run_as_idle(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    run = store.create_run(load_spec(idle_suspending_spec(tmp_path)))
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl", telemetry=cluster.telemetry)
    for _ in range(300):
        if store.get_run(run.id).phase is Phase.SUSPENDED:
            break
        controller.reconcile_once()
    store.release_leases("ctl")
    assert store.get_run(run.id).phase is Phase.SUSPENDED
    result = orch(db_url, "controller", "--exit-when-idle")
    assert result.returncode == 0, result.stderr
    assert store.get_run(run.id).phase is Phase.SUSPENDED


def test_wait_returns_for_a_run_cancelled_meanwhile_with_its_own_exit_code(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    waiting = start_wait(db_url, tmp_path, "--pace", "20")
    waiting.until(lambda: any(run.phase is Phase.RUNNING for run in store.list_runs()))
    [run] = store.list_runs()
    service.cancel_run(store, run.id)
    assert waiting.process.wait(timeout=PROCESS_TIMEOUT_S) == EXIT_RUN_CANCELLED, waiting.stderr()
    assert f"{run.id}: Cancelled at step" in waiting.stderr()
    assert "submit the spec again" in waiting.stderr()


# ---- point 6: other runs are named, not silently driven ---------------------------------------


def test_wait_drives_only_its_own_run_and_names_the_others(db_url: str, store: Store) -> None:
    other = store.create_run(load_spec(QUICKSTART))
    result = orch(db_url, "submit", str(QUICKSTART), "--wait")
    assert result.returncode == 0, result.stderr
    mine = next(run for run in store.list_runs() if run.id != other.id)
    assert mine.phase is Phase.SUCCEEDED
    assert store.get_run(other.id).phase is Phase.PENDING, "someone else's run is left to its controller"
    assert store.steps(other.id) == []
    notes = [line for line in result.stderr.splitlines() if other.id in line]
    assert len(notes) == 1, result.stderr
    assert "Pending" in notes[0] and "no controller" in notes[0] and "orch controller" in notes[0]


def hold_the_pool(store: Store) -> str:
    """Another run that holds all 8 GPUs of the quickstart pool and that no controller drives any more."""
    run = store.create_run(load_spec(QUICKSTART))
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster, pace=1e-6), identity="gone")
    for _ in range(50):
        if store.get_run(run.id).phase is Phase.RUNNING:
            break
        controller.reconcile_once()
    store.release_leases("gone")
    assert sum(w.gpus for w in store.workloads(run.id, live_only=True)) == 8
    return run.id


def test_wait_behind_gpus_says_which_runs_hold_them_and_that_nobody_drives_them(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    holder = hold_the_pool(store)
    waiting = start_wait(db_url, tmp_path)
    waiting.until(lambda: "waits for GPUs" in waiting.stderr())
    code, stderr = waiting.interrupt()
    assert code == EXIT_INTERRUPTED, stderr
    [line] = [line for line in stderr.splitlines() if "waits for GPUs" in line]
    assert holder in line and "8 GPUs" in line and "no controller" in line, line
    assert store.get_run(holder).phase is Phase.RUNNING, "the holder is left alone"


# ---- point 7: Ctrl-C releases the lease and says how to continue -----------------------------


def test_ctrl_c_during_wait_releases_the_lease_and_says_how_to_continue(
    db_url: str, store: Store, tmp_path: Path
) -> None:
    waiting = start_wait(db_url, tmp_path, "--pace", "20")

    def stepping() -> bool:
        runs = store.list_runs()
        return bool(runs) and runs[0].phase is Phase.RUNNING and lease_owners(db_url)[runs[0].id] is not None

    waiting.until(stepping)
    code, stderr = waiting.interrupt()
    [run] = store.list_runs()
    assert code == EXIT_INTERRUPTED, (code, stderr)
    assert lease_owners(db_url) == {run.id: None}, "the lease is released"
    assert f"{run.id}: {run.phase.value} at step {run.steps_done} of 9" in stderr
    assert "orch controller --exit-when-idle" in stderr and f"orch cancel {run.id}" in stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr


# ---- point 9: a failing submit stores nothing -------------------------------------------------


CLEARED = ("ORCH_BACKEND", "ORCH_SIM_FAULTS", "ORCH_SIM_PACE", "KUBERNETES_SERVICE_HOST")


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--backend", "nope"], {}, "ORCH_BACKEND"),
        (["--backend", "nope", "--wait"], {}, "ORCH_BACKEND"),
        ([], {"ORCH_BACKEND": "nope"}, "ORCH_BACKEND"),
        (["--wait"], {"ORCH_SIM_FAULTS": "bogus@x"}, "ORCH_SIM_FAULTS"),
        (["--wait"], {"ORCH_SIM_PACE": "fast"}, "ORCH_SIM_PACE"),
        (["--wait", "--backend", "kube"], {"KUBECONFIG": "/nonexistent/kubeconfig"}, "KUBECONFIG"),
    ],
    ids=["backend", "backend-wait", "backend-env", "faults", "pace", "kube-no-config"],
)
def test_a_submit_that_fails_stores_nothing(
    db_url: str, args: list[str], env: dict[str, str], setting: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["--database-url", db_url, "submit", str(QUICKSTART), *args],
        env={**dict.fromkeys(CLEARED), **env},
    )
    assert result.exit_code not in (0, None), result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and setting in lines[0], result.stderr
    store = Store(db_url)
    try:
        assert not any(store.row_counts().values()), store.row_counts()
    finally:
        store.close()


# ---- point 15: the --wait progress line shows an ETA -------------------------------------------


def test_wait_progress_shows_the_time_remaining() -> None:
    out = io.StringIO()
    now = [0.0]
    with _progress(False, Console(file=out, width=120, force_terminal=False), get_time=lambda: now[0]) as bar:
        task = bar.add_task("steps", total=10)
        for second in range(1, 5):
            now[0] = float(second)
            bar.update(task, completed=second)  # one step per second: 6 left
        bar.refresh()
    assert "eta 0:00:06" in out.getvalue(), out.getvalue()

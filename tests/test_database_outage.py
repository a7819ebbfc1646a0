"""The controller outlives a database that goes away for a while and says so in one line if it stays away."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.controller import Controller, DatabaseOutage
from orchestrator.errors import DatabaseUnavailable
from orchestrator.records import Phase
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import load_spec
from orchestrator.state.store import Store
from tests.conftest import EXAMPLES, ROOT, _reset_postgres

QUICKSTART = EXAMPLES / "quickstart.yaml"
TERMINATE_OTHERS = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def controller_process(url: str, *args: str, pace: str = "0") -> subprocess.Popen[str]:
    env = dict(os.environ, ORCH_DATABASE_URL=url, ORCH_SIM_FAULTS="", ORCH_BACKEND="sim", ORCH_SIM_PACE=pace)
    command = [sys.executable, str(ROOT / "cli.py"), "controller", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def finish(process: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holding the SQLite database's write lock until the block ends (or it commits)."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield holder
    finally:
        if holder.in_transaction:
            holder.execute("COMMIT")
        holder.close()


def test_a_database_that_cannot_answer_raises_database_unavailable_without_its_password(
    tmp_path: Path,
) -> None:
    with pytest.raises(DatabaseUnavailable) as refused:
        Store("postgresql://postgres:s3cret@127.0.0.1:1/nothing")
    assert "s3cret" not in str(refused.value) and "\n" not in str(refused.value)
    assert "127.0.0.1:1" in str(refused.value)

    path = tmp_path / "orch.db"
    store = Store(f"sqlite:///{path}?timeout=0.1")
    with locked(path), pytest.raises(DatabaseUnavailable, match="database is locked"):
        store.acquire_leases("ctl", 15)
    store.close()


@pytest.mark.parametrize(
    "url", ["postgresql://postgres@127.0.0.1:1/nothing", "sqlite:////nonexistent/dir/orch.db"]
)
def test_a_database_that_stays_unreachable_ends_the_controller_in_one_line(url: str) -> None:
    stdout, stderr = finish(controller_process(url, "--db-outage-seconds", "1"), timeout=120)
    lines = [
        line for line in stderr.splitlines() if not line.startswith("orch.controller: ")
    ]  # retry warnings
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: database ") and "unreachable for 1 s; last error: " in lines[0]
    assert "Traceback" not in stderr and stdout == ""


def test_the_loop_gives_up_once_the_database_has_been_away_for_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "orch.db"
    store = Store(f"sqlite:///{path}?timeout=0.05")
    store.create_run(load_spec(QUICKSTART))
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl")
    with locked(path), pytest.raises(DatabaseUnavailable) as gave_up:
        controller.run(until=lambda: False, outage=DatabaseOutage(0.5))
    assert str(gave_up.value).startswith("database sqlite:///")
    assert "unreachable for 0.5 s; last error: database is locked" in str(gave_up.value)
    store.close()


def test_the_controller_waits_out_a_locked_sqlite_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "orch.db"
    store = Store(f"sqlite:///{path}?timeout=0.05")
    run_id = store.create_run(load_spec(QUICKSTART)).id
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl")
    caplog.set_level(logging.WARNING, "orch.controller")
    with locked(path) as holder:
        threading.Timer(1.0, holder.execute, ["COMMIT"]).start()
        controller.run(until=lambda: store.get_run(run_id).phase.terminal, outage=DatabaseOutage(120))
    assert store.get_run(run_id).phase is Phase.SUCCEEDED
    assert any("database is locked" in record.getMessage() for record in caplog.records), "it really waited"
    store.close()


def test_the_controller_survives_terminated_postgresql_backends(postgres_url: str) -> None:
    _reset_postgres(postgres_url)
    store = Store(postgres_url)
    run_id = store.create_run(load_spec(QUICKSTART)).id
    process = controller_process(postgres_url, "--exit-when-idle", "--lease-seconds", "5", pace="1000")
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    terminated = 0
    try:
        while store.get_run(run_id).phase is Phase.PENDING and process.poll() is None:
            time.sleep(0.05)
        with admin.connect() as connection:
            for _ in range(40):  # 40 rounds in about 4 s
                terminated += connection.execute(text(TERMINATE_OTHERS)).scalar() or 0
                time.sleep(0.1)
        _, stderr = finish(process)
    finally:
        admin.dispose()
        if process.poll() is None:
            process.kill()
    assert terminated > 0, "the controller's connections were really terminated"
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    run = store.get_run(run_id)
    assert run.phase is Phase.SUCCEEDED, run.message
    assert [s.step for s in store.steps(run_id)] == list(range(1, 10))
    store.close()

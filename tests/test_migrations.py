"""Alembic migrations: applied on first use and by `orch db upgrade`, and in step with the models."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from orchestrator.state.migrations_runner import current_revision, head_revision
from orchestrator.state.models import Base
from orchestrator.state.store import Store
from tests.conftest import ROOT, _reset_postgres

TABLES = {"runs", "stages", "workloads", "steps", "checkpoints", "problems", "events", "alembic_version"}


def test_first_use_creates_the_schema_at_head(db_url: str) -> None:
    engine = create_engine(db_url)
    assert current_revision(engine) is None
    store = Store(db_url)
    assert current_revision(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES
    store.close()
    engine.dispose()


def test_upgrading_twice_changes_nothing(db_url: str) -> None:
    store = Store(db_url)
    before = store.row_counts()
    assert store.upgrade() == head_revision()
    assert store.row_counts() == before
    store.close()


def test_the_migrations_match_the_models(db_url: str) -> None:
    store = Store(db_url)
    with store.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
    store.close()


def test_a_store_opened_without_migrating_leaves_the_database_empty(db_url: str) -> None:
    store = Store(db_url, migrate=False)
    assert "runs" not in inspect(store.engine).get_table_names()
    store.close()


def test_upgrading_from_the_first_revision_keeps_existing_rows(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from orchestrator.state.migrations_runner import MIGRATIONS

    engine = create_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO runs (id, name, spec, phase, stage_index, steps_done, attempt, resume_step, "
            "advance_requested, sim_seconds, gpu_busy_seconds, gpu_held_seconds, message, queue, priority, "
            "lease_expires_at, version, created_at, updated_at) "
            "VALUES ('old-1', 'old', '{}', 'Pending', 0, 0, 0, 0, false, "
            "0, 0, 0, '', 'default', 0, 0, 1, 0, 0)"
        )
    store = Store(db_url)
    assert current_revision(engine) == head_revision()
    assert store.get_run("old-1").external_ref is None
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
        command.upgrade(config, "head")
    assert store.get_run("old-1").name == "old"
    store.close()
    engine.dispose()


def test_steps_written_before_0007_read_with_zero_figures_and_no_weights_version(db_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from orchestrator.state.migrations_runner import MIGRATIONS

    engine = create_engine(db_url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO runs (id, name, spec, phase, stage_index, steps_done, attempt, "
            "advance_requested, sim_seconds, gpu_busy_seconds, gpu_held_seconds, message, queue, priority, "
            "lease_expires_at, version, created_at, updated_at) "
            "VALUES ('old-1', 'old', '{}', 'Running', 0, 1, 1, false, 0, 0, 0, '', 'default', 0, 0, 1, 0, 0)"
        )
        connection.exec_driver_sql(
            "INSERT INTO steps (run_id, step, stage_index, attempt, max_response_tokens, max_turns, "
            "rollouts, generated_tokens, rollout_seconds, train_seconds, preemptions, correct, superseded, "
            "finished_sim_seconds) VALUES ('old-1', 1, 0, 1, 600, 3, 12, 4000, 1.5, 0.5, 0, 9, false, 2.0)"
        )
    store = Store(db_url)
    [step] = store.steps("old-1")
    assert (step.rollouts, step.correct, step.turns, step.tool_calls, step.reward_sum) == (12, 9, 0, 0, 0.0)
    assert (step.infra_masked, step.stale_dropped, step.stale_regenerated, step.weights_version) == (
        0,
        0,
        0,
        None,
    )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")
    assert "turns" not in {c["name"] for c in inspect(engine).get_columns("steps")}
    store.close()
    engine.dispose()


# Each process says it is ready (imports done), then waits for the start file, so that all of them open
# the store at (nearly) the same moment.
_OPEN_STORE_ON_SIGNAL = """
import sys, time
from pathlib import Path
from orchestrator.state.store import Store
url, ready, start = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not start.exists():
    time.sleep(0.01)
Store(url).close()
"""


def _open_the_store_in_processes(url: str, directory: Path, processes: int = 20) -> list[str]:
    """Start `processes` interpreters that each open ``Store(url)`` at once; return the failures' stderr."""
    ready = [directory / f"ready-{index}" for index in range(processes)]
    start = directory / "start"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_STORE_ON_SIGNAL, url, str(ready_file), str(start)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ready_file in ready
    ]
    try:
        while not all(path.exists() for path in ready):
            assert all(child.poll() is None for child in children), "a process died before it was ready"
            time.sleep(0.05)
    finally:
        start.touch()
    failures = []
    for child in children:
        _, stderr = child.communicate(timeout=300)
        if child.returncode != 0:
            errors = [line for line in stderr.splitlines() if "Error" in line]
            failures.append(errors[-1] if errors else f"exit {child.returncode}")
    return failures


def _assert_at_head(url: str) -> None:
    engine = create_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


@pytest.mark.slow
def test_twenty_processes_migrating_a_fresh_postgresql_database_at_once_all_succeed(
    postgres_url: str, tmp_path: Path
) -> None:
    _reset_postgres(postgres_url)
    assert _open_the_store_in_processes(postgres_url, tmp_path) == []
    _assert_at_head(postgres_url)


@pytest.mark.slow
def test_twenty_processes_migrating_a_fresh_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    assert _open_the_store_in_processes(url, tmp_path) == []
    _assert_at_head(url)

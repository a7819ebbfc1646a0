"""Alembic migrations: applied on first use and by `orch db upgrade`, and in step with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from orchestrator.state.migrations_runner import current_revision, head_revision
from orchestrator.state.models import Base
from orchestrator.state.store import Store

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

"""Apply the packaged Alembic migrations to an engine, from code (``orch db upgrade`` and first use)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).parent / "migrations"
# The key of the PostgreSQL advisory lock that serializes migrations (any fixed 64-bit number; "orch").
MIGRATION_LOCK_KEY = 0x6F726368


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None, "the packaged migrations have no head revision"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(engine: Engine) -> str:
    """Upgrade when behind; a no-op (one cheap query) when the schema is already current.

    Processes that open a fresh database at once take turns: the first migrates, the others wait for its
    lock, then find the schema current and change nothing.
    """
    head = head_revision()
    if current_revision(engine) == head:
        return head
    config = _config()
    with _sqlite_file_lock(engine), engine.begin() as connection:
        _postgresql_transaction_lock(connection)
        # Read again under the lock: another process may have migrated while this one waited.
        if MigrationContext.configure(connection).get_current_revision() != head:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    return head


def _postgresql_transaction_lock(connection: Connection) -> None:
    """Hold PostgreSQL's migration lock until this transaction ends (nothing on other databases).

    Under READ COMMITTED (the default) every later statement of the transaction sees what the previous
    holder committed.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Hold an exclusive lock on a file beside a SQLite database file (nothing for in-memory SQLite).

    SQLite's own write lock gives up after the busy timeout; this one waits as long as a migration takes.
    """
    database = engine.url.database
    in_memory = not database or database == ":memory:" or engine.url.query.get("mode") == "memory"
    if engine.dialect.name != "sqlite" or in_memory:
        yield
        return
    with open(f"{database}.migrate-lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)

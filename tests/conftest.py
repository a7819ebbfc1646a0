"""Shared fixtures: every SQL test runs on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, make_url, text

from orchestrator.state.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The server (and an existing database on it to connect to); the tests never write into that database:
# each test session creates a database of its own there and drops it at the end, so two test runs on one
# machine never wreck each other.
POSTGRES_SERVER_URL = os.environ.get(
    "ORCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _session_database_name() -> str:
    return f"orch_test_{os.getpid()}_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test session's own, created on first use and dropped at the end."""
    server = make_url(POSTGRES_SERVER_URL)
    name = _session_database_name()
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {server.render_as_string(hide_password=True)} is required for the SQL tests "
            f"({error}); .ci/run starts it"
        )
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL of each kind (PostgreSQL: this session's database, emptied)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orch.db'}"
    url = request.getfixturevalue("postgres_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


@pytest.fixture
def quickstart() -> Path:
    return EXAMPLES / "quickstart.yaml"


def spec_data(name: str = "quickstart.yaml") -> dict:
    """An example spec as plain data, for a test to change one field of."""
    import yaml

    return yaml.safe_load((EXAMPLES / name).read_text())


def write_spec(directory: Path, data: dict, filename: str = "run.yaml") -> Path:
    import yaml

    path = directory / filename
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_async(test: Callable[[], Awaitable[None]]) -> None:
    """Run an async test body, then fail if it left any asyncio task behind."""

    async def checked() -> None:
        await test()
        leftover = asyncio.all_tasks() - {asyncio.current_task()}
        assert not leftover, f"leaked tasks: {leftover}"

    asyncio.run(checked())


def wait_healthy(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], url: str, seconds: float = 30
) -> None:
    """Wait until a launched fake engine answers ``/health`` with 200; fail if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, "the fake engine exited"
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the fake engine never became healthy"
        time.sleep(0.05)

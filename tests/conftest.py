"""Shared fixtures: every SQL test runs on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.state.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
POSTGRES_URL = os.environ.get("ORCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    except Exception as error:
        pytest.fail(f"PostgreSQL at {url} is required for the SQL tests ({error}); .ci/run starts it")
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orch.db'}"
    _reset_postgres(POSTGRES_URL)
    return POSTGRES_URL


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

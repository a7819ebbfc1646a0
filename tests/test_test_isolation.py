"""The SQL tests keep to a PostgreSQL database of their own: two test runs on one machine never collide."""

from __future__ import annotations

import secrets

from sqlalchemy import create_engine, inspect, make_url, text

from orchestrator.state.store import Store
from tests.conftest import POSTGRES_SERVER_URL, _reset_postgres


def test_the_session_database_is_not_the_shared_one(postgres_url: str) -> None:
    shared = make_url(POSTGRES_SERVER_URL).database
    assert make_url(postgres_url).database not in (shared, None, "", "postgres")


def test_resetting_the_test_database_leaves_the_shared_database_alone(postgres_url: str) -> None:
    sentinel = f"sentinel_{secrets.token_hex(4)}"
    shared = create_engine(POSTGRES_SERVER_URL)
    try:
        with shared.begin() as connection:
            connection.execute(text(f"CREATE TABLE {sentinel} (id integer)"))
        store = Store(postgres_url)
        store.close()
        _reset_postgres(postgres_url)  # what every PostgreSQL test does before it starts
        assert sentinel in inspect(shared).get_table_names()
    finally:
        with shared.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {sentinel}"))
        shared.dispose()

"""Opening the database: the URL (one line naming the setting when it is wrong), the driver, SQLite's
pragmas, and a lost connection turned into ``DatabaseUnavailable``."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from orchestrator.errors import DatabaseUnavailable, OrchError

__all__ = [
    "DATABASE_URL_ENV",
    "DATABASE_URL_SETTING",
    "Sessions",
    "default_database_url",
    "lost",
    "make_engine",
    "shown_url",
    "unavailable",
]

DATABASE_URL_ENV = "ORCH_DATABASE_URL"
DATABASE_URL_SETTING = "ORCH_DATABASE_URL / --database-url"
URL_FORM = "sqlite:////path/to/orch.db or postgresql://user:password@host:5432/database"
# The pip package of each DB-API module SQLAlchemy may import for a URL's dialect+driver.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "asyncpg": "asyncpg",
    "pg8000": "pg8000",
    "MySQLdb": "mysqlclient",
    "pymysql": "pymysql",
}


def default_database_url() -> str:
    """``ORCH_DATABASE_URL`` if set, else a SQLite file in the user's data directory."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    directory = Path(platformdirs.user_data_dir("orch"))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'orch.db'}"


def shown_url(url: str) -> str:
    """``url`` with its password masked, fit to print."""
    return make_url(url).render_as_string(hide_password=True)


def unavailable(url: str, error: DBAPIError) -> DatabaseUnavailable:
    where = shown_url(url)
    reason = " ".join(str(error.orig or error).split())
    return DatabaseUnavailable(where, reason)


def lost(error: DBAPIError) -> bool:
    """A lost, refused, terminated or locked connection: the database, not the request, failed."""
    return isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated


class Sessions:
    """Opens sessions like a ``sessionmaker``; a database that cannot answer raises DatabaseUnavailable."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._maker = sessionmaker(engine, expire_on_commit=False)
        self._url = url

    @contextmanager
    def __call__(self) -> Iterator[Session]:
        try:
            with self._maker() as session:
                yield session
        except DBAPIError as error:
            if lost(error):
                raise unavailable(self._url, error) from error
            raise


def make_engine(url: str) -> Engine:
    """The engine for ``url``, or one line naming the setting and what to fix."""
    try:
        return _create_engine(url)
    except NoSuchModuleError as error:
        kind = url.partition("://")[0]
        message = f"unknown database kind {kind!r}; expected {URL_FORM}"
        raise OrchError(f"{DATABASE_URL_SETTING}: {message}") from error
    except ArgumentError as error:
        shown = re.sub(r":[^:/@]*@", ":***@", url)  # a password, should the text hold one
        message = f"{shown!r} is not a database URL; expected {URL_FORM}"
        raise OrchError(f"{DATABASE_URL_SETTING}: {message}") from error
    except ImportError as error:
        module = error.name or str(error)
        raise OrchError(
            f"{DATABASE_URL_SETTING}: {url.partition('://')[0]}:// needs the driver {module!r}, which is not "
            f"installed; pip install '{DRIVER_PACKAGES.get(module, module)}', "
            "or use postgresql:// (psycopg, installed with orch) or sqlite://"
        ) from error


def _create_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        # A busy timeout given in the URL (?timeout=seconds) wins over the default.
        engine = create_engine(url, connect_args={} if "timeout" in make_url(url).query else {"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Let pysqlite leave transactions to us, so BEGIN IMMEDIATE takes the write lock up front.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # A host that never answers fails a connect after 10 s (unless the URL says otherwise), not minutes.
    timeout = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": 10}
    return create_engine(url, pool_pre_ping=True, connect_args=timeout)

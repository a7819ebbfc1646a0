"""What every ``orch`` command shares: the ``-o`` option, the context with its store, port errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from orchestrator.errors import OrchError, PortUnavailable
from orchestrator.render.output import FORMATS
from orchestrator.state.store import Store

__all__ = ["OUTPUT", "Context", "pass_context", "port_option"]

OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people, json or yaml for machines",
)


class Context:
    """What every command shares: the database URL, ``--debug``, and the store, opened on first use."""

    def __init__(self, database_url: str | None, debug: bool) -> None:
        self.database_url = database_url
        self.debug = debug
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.database_url)
        return self._store

    def close(self) -> None:
        """Dispose of the engine, so no pooled connection outlives the command."""
        if self._store is not None:
            self._store.close()
            self._store = None


pass_context = click.make_pass_decorator(Context)


@contextmanager
def port_option(option: str) -> Iterator[None]:
    """When a server cannot listen, say which option picks another port."""
    try:
        yield
    except PortUnavailable as error:
        raise OrchError(f"{error}; choose another port with {option}") from error

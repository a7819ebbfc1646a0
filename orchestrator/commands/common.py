"""What every ``orch`` command shares: the ``-o`` option, the context with its store, port errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from orchestrator.errors import OrchError, PortUnavailable
from orchestrator.httpguard import GuardConfig, guard_config, read_token
from orchestrator.render.output import FORMATS
from orchestrator.state.store import Store

__all__ = ["OUTPUT", "Context", "endpoint_options", "guard_from_options", "pass_context", "port_option"]

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


F = TypeVar("F", bound=Callable[..., Any])


def endpoint_options(env_name: str, what: str, host_option: str = "--host") -> Callable[[F], F]:
    """``--host`` (default loopback), ``--token-file`` and ``--allowed-host`` of a server command; the
    token comes from the file or ``$env_name`` and is required when ``--host`` is not loopback."""

    def decorate(command: F) -> F:
        options = [
            click.option(
                host_option,
                "host",
                default="127.0.0.1",
                show_default=True,
                help=f"address {what} listens on (beyond loopback it needs a token)",
            ),
            click.option(
                "--token-file",
                type=click.Path(dir_okay=False),
                default=None,
                help=f"file holding the bearer token callers must send (default: ${env_name})",
            ),
            click.option(
                "--allowed-host",
                "allowed_hosts",
                multiple=True,
                metavar="NAME",
                help="a Host name callers may use besides IPs and localhost (a Service DNS name); repeat",
            ),
        ]
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def guard_from_options(
    env_name: str, host: str, token_file: str | None, allowed_hosts: tuple[str, ...]
) -> GuardConfig:
    """The guard of a server command (``InsecureEndpoint``, printed as one line, when it cannot be safe)."""
    token = read_token(env_name, token_file)
    return guard_config(host, token, env_name=env_name, allowed_hosts=allowed_hosts)

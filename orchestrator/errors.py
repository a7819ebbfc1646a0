"""One exception family. ``cli.py`` maps each class to an exit code and prints one line."""

from __future__ import annotations

import os

__all__ = [
    "ConflictError",
    "IllegalTransition",
    "NotFound",
    "OrchError",
    "PlacementError",
    "PortUnavailable",
    "SpecError",
]


class OrchError(Exception):
    """Base of every error orch reports to a user."""

    exit_code = 1


class SpecError(OrchError):
    """The run spec (or another input file) is invalid."""

    exit_code = 2


class NotFound(OrchError):
    """A run or other object does not exist."""

    exit_code = 3


class IllegalTransition(OrchError):
    """The run's lifecycle does not allow the requested change."""

    exit_code = 4


class ConflictError(OrchError):
    """Another writer changed the row first (optimistic concurrency) or holds its lease."""

    exit_code = 5


class PlacementError(OrchError):
    """A request can never fit the cluster it was sent to."""

    exit_code = 6


class PortUnavailable(OrchError):
    """A server cannot listen on its address: the port is in use, or not permitted."""

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(f"cannot serve {what} on {host}:{port} ({reason.lower()})")
        self.host = host
        self.port = port

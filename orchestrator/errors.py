"""One exception family. ``cli.py`` maps each class to an exit code and prints one line."""

from __future__ import annotations

import os

__all__ = [
    "EXIT_CHECKS_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_RUN_CANCELLED",
    "EXIT_RUN_FAILED",
    "EXIT_RUN_SUSPENDED",
    "ConflictError",
    "DatabaseUnavailable",
    "IllegalTransition",
    "NotFound",
    "OrchError",
    "PortUnavailable",
    "SpecError",
    "TransientError",
]

# Exit codes of ``orch submit --wait`` when the waited run ends other than Succeeded (0), next to the error
# classes' codes below (1-6), so every code orch exits with is defined in this one file.
EXIT_RUN_FAILED = 8
EXIT_RUN_CANCELLED = 9
EXIT_RUN_SUSPENDED = 10
EXIT_CHECKS_FAILED = 11  # ``orch doctor``: at least one preflight check failed
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class OrchError(Exception):
    """Base of every error orch reports to a user."""

    exit_code = 1


class SpecError(OrchError):
    """The run spec (or another input file) is invalid: one line per problem, all of them at once."""

    exit_code = 2

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems: tuple[str, ...] = problems


class NotFound(OrchError):
    """A run or other object does not exist."""

    exit_code = 3


class IllegalTransition(OrchError):
    """The run's lifecycle does not allow the requested change."""

    exit_code = 4


class ConflictError(OrchError):
    """Another writer changed the row first (optimistic concurrency) or holds its lease."""

    exit_code = 5


class TransientError(OrchError):
    """The environment failed, not the run: retry with backoff; it never counts against a run's attempts."""

    exit_code = 7


class DatabaseUnavailable(TransientError):
    """The database cannot be reached or is locked (connection refused, lost, terminated, busy)."""

    def __init__(self, where: str, reason: str, message: str = "") -> None:
        super().__init__(message or f"database {where} unavailable: {reason}")
        self.where = where  # the URL without its password
        self.reason = reason  # the driver's error, one line


class PortUnavailable(OrchError):
    """A server cannot listen on its address: the port is in use, or not permitted."""

    def __init__(self, what: str, host: str, port: int, error: OSError) -> None:
        reason = os.strerror(error.errno) if error.errno else str(error)
        super().__init__(f"cannot serve {what} on {host}:{port} ({reason.lower()})")
        self.host = host
        self.port = port

"""One exception family. ``cli.py`` maps each class to an exit code and prints one line."""

from __future__ import annotations

__all__ = [
    "ConflictError",
    "IllegalTransition",
    "NotFound",
    "OrchError",
    "PlacementError",
    "SpecError",
]


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


class PlacementError(OrchError):
    """A request can never fit the cluster it was sent to."""

    exit_code = 6

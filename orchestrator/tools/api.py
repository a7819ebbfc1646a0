"""The contract of the tool-execution service: limits, results and the executor protocol.

Every part of ``orchestrator.tools`` (the sandbox, the asyncio service, its HTTP API, the Ray pools and
the reward checks) speaks these types, so a caller can swap an in-process pool for an HTTP client or a
Ray cluster without changing a line.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

__all__ = [
    "MAX_CODE_BYTES",
    "MAX_LIMITS",
    "SERVICE_MAX_LIMITS",
    "VERDICTS",
    "CodeExecutor",
    "ExecResult",
    "Limits",
    "Verdict",
]

# How a call ended. ok: exit status 0. error: a non-zero exit status (an exception, sys.exit(1),
# os._exit(3)). timeout: the wall-clock or CPU-time limit was hit. memory: the address-space limit was
# hit (MemoryError, or killed while allocating). output_truncated: stdout + stderr went past
# output_bytes; the run was stopped there. killed: ended by a signal nobody asked for, or its worker died.
Verdict = Literal["ok", "error", "timeout", "memory", "output_truncated", "killed"]
VERDICTS: tuple[Verdict, ...] = ("ok", "error", "timeout", "memory", "output_truncated", "killed")

MAX_CODE_BYTES = 256 * 1024  # larger snippets are refused before they reach a worker


@dataclass(frozen=True)
class Limits:
    """What one call may use; every field must be > 0 and at most ``MAX_LIMITS``' value."""

    wall_seconds: float = 10.0
    cpu_seconds: float = 5.0
    memory_bytes: int = 512 * 2**20  # address space (RLIMIT_AS)
    open_files: int = 64  # file descriptors (RLIMIT_NOFILE)
    processes: int = 8  # processes and threads the call may run at once
    output_bytes: int = 64 * 1024  # stdout + stderr kept
    disk_bytes: int = 64 * 2**20  # the call's scratch files in all (as root) and any one file (RLIMIT_FSIZE)

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"limits.{field.name}: must be a number, got {value!r}")
            if value <= 0:
                raise ValueError(f"limits.{field.name}: must be > 0, got {value!r}")
            if field.type in ("int", int) and not isinstance(value, int):
                raise ValueError(f"limits.{field.name}: must be a whole number, got {value!r}")

    def check_within(self, ceiling: Limits) -> None:
        """Raise ValueError naming the first field above ``ceiling``."""
        for field in fields(self):
            value, most = getattr(self, field.name), getattr(ceiling, field.name)
            if value > most:
                raise ValueError(f"limits.{field.name}: {value!r} is above the service's maximum {most!r}")

    def capped(self, ceiling: Limits) -> Limits:
        """These limits, each lowered to ``ceiling``'s where it is above it."""
        return Limits(**{f.name: min(getattr(self, f.name), getattr(ceiling, f.name)) for f in fields(self)})

    def merged(self, overrides: dict[str, Any] | None) -> Limits:
        """These limits with ``overrides`` (from a request) applied; unknown names raise ValueError."""
        if not overrides:
            return self
        known = {field.name for field in fields(self)}
        for name in overrides:
            if name not in known:
                raise ValueError(f"limits.{name}: unknown limit; use one of {', '.join(sorted(known))}")
        return Limits(**{**asdict(self), **overrides})


MAX_LIMITS = Limits(
    wall_seconds=120.0,
    cpu_seconds=120.0,
    memory_bytes=8 * 2**30,
    open_files=1024,
    processes=64,
    output_bytes=16 * 2**20,
    disk_bytes=2 * 2**30,
)

# What ``orch tools serve`` lets an (untrusted) caller ask for unless its operator raises it with
# ``--max-limit``: the library defaults' processes, a few times their memory and time. Every field is
# at most ``MAX_LIMITS``' (the sandbox's own ceiling).
SERVICE_MAX_LIMITS = Limits(
    wall_seconds=60.0,
    cpu_seconds=60.0,
    memory_bytes=2 * 2**30,
    open_files=256,
    processes=8,
    output_bytes=2**20,
    disk_bytes=256 * 2**20,
)


@dataclass(frozen=True)
class ExecResult:
    """One call's answer. ``exit_status`` is the process's exit code, or minus the signal that ended it,
    or None when no process ran (the worker died first)."""

    verdict: Verdict
    stdout: str
    stderr: str
    exit_status: int | None
    wall_seconds: float
    cpu_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def abandoned(cls, message: str, started: float | None = None) -> ExecResult:
        """The answer for a call whose process never ran or was lost with its worker: verdict "killed",
        ``message`` as stderr, the wall time since ``started`` (time.monotonic()), no exit status."""
        wall = time.monotonic() - started if started is not None else 0.0
        return cls("killed", "", f"{message}\n", None, wall, 0.0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        return cls(**{field.name: data[field.name] for field in fields(cls)})


class CodeExecutor(Protocol):
    """Runs Python snippets; never raises for a failing snippet (that is a verdict, not an exception)."""

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult: ...

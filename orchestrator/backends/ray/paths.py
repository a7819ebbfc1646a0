"""Where the Ray backend keeps a member's log (pure: no ``ray``, so ``orch logs`` reads it without Ray).

A member's stdout and stderr go to ``<log dir>/<run>/<member>.log``, the member named
``{run}-{role}-{index}-a{attempt}``; the log dir is ``ORCH_RAY_LOG_DIR`` (default ``<tmp>/orch-logs``).
Logs are kept when a run finishes (``RayCluster.sweep`` removes mailboxes, not logs).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LOG_DIR_ENV", "MEMBER_NAME", "MemberName", "default_log_dir", "member_log_path", "parse_member"]

LOG_DIR_ENV = "ORCH_RAY_LOG_DIR"
MEMBER_NAME = re.compile(r"^(?P<run>.+)-(?P<role>[a-z]+)-(?P<index>\d+)-a(?P<attempt>\d+)$")
LOG_SUFFIX = ".log"


@dataclass(frozen=True)
class MemberName:
    """The parts of a member's name ``{run}-{role}-{index}-a{attempt}``."""

    run_id: str
    role: str
    index: int
    attempt: int


def parse_member(name: str) -> MemberName | None:
    """The parts of ``name``, or None when it is not a member's name."""
    match = MEMBER_NAME.match(name)
    if match is None:
        return None
    return MemberName(match["run"], match["role"], int(match["index"]), int(match["attempt"]))


def default_log_dir() -> str:
    """``ORCH_RAY_LOG_DIR``, else ``<tmp>/orch-logs``."""
    return os.environ.get(LOG_DIR_ENV) or str(Path(tempfile.gettempdir()) / "orch-logs")


def member_log_path(log_dir: str | Path, run_id: str, member: str) -> Path:
    """The log file of one member of ``run_id``."""
    return Path(log_dir) / run_id / f"{member}{LOG_SUFFIX}"

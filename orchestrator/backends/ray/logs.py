"""Reading the Ray members' log files (pure: no ``ray``): which files, their last lines, following them.

The files are where ``paths.member_log_path`` puts them; ``orch logs`` reads them through
``orchestrator.service.logs``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.ray.paths import LOG_SUFFIX, parse_member

__all__ = ["LogLine", "MemberLog", "follow_lines", "member_logs", "read_lines"]


@dataclass(frozen=True)
class MemberLog:
    """One member's log file."""

    member: str
    role: str
    index: int
    attempt: int
    path: Path


@dataclass(frozen=True)
class LogLine:
    """One line of a member's log, without its newline."""

    member: str
    text: str


def member_logs(
    log_dir: str | Path,
    run_id: str,
    *,
    role: str | None = None,
    index: int | None = None,
    attempt: int | None = None,
) -> list[MemberLog]:
    """The log files of ``run_id``'s members in ``attempt`` (default: the newest attempt with a log),
    narrowed to ``role`` and ``index``, by role then index."""
    found = []
    for path in (Path(log_dir) / run_id).glob(f"*{LOG_SUFFIX}"):
        name = parse_member(path.name[: -len(LOG_SUFFIX)])
        if name is None or name.run_id != run_id:
            continue
        found.append(MemberLog(path.name[: -len(LOG_SUFFIX)], name.role, name.index, name.attempt, path))
    if attempt is None and found:
        attempt = max(log.attempt for log in found)
    chosen = [
        log
        for log in found
        if log.attempt == attempt
        and (role is None or log.role == role)
        and (index is None or log.index == index)
    ]
    return sorted(chosen, key=lambda log: (log.role, log.index))


def read_lines(logs: Sequence[MemberLog], tail: int | None = None) -> list[LogLine]:
    """Every line of each log (or its last ``tail``), one member after the other."""
    lines: list[LogLine] = []
    for log in logs:
        with open(log.path, errors="replace") as file:
            kept = deque(file, maxlen=tail) if tail is not None else list(file)
        lines.extend(LogLine(log.member, text.rstrip("\n")) for text in kept)
    return lines


def follow_lines(
    logs: Sequence[MemberLog],
    *,
    tail: int | None = None,
    stop: Callable[[], bool] = lambda: False,
    poll_s: float = 0.2,
    more_logs: Callable[[], Sequence[MemberLog]] | None = None,
) -> Iterator[LogLine]:
    """The lines ``read_lines`` gives, then each line appended later, as it is completed, until ``stop()``
    is true (checked once nothing new came; what was written before it is drained). ``more_logs``:
    asked each poll for logs that appeared since (a member created later), read from their start."""
    offsets: dict[Path, int] = {}
    members = {log.path: log.member for log in logs}
    partial: dict[Path, bytes] = {}
    for log in logs:
        data = log.path.read_bytes()
        offsets[log.path] = len(data)  # what follows is read from here: no line lost or repeated
        *whole, partial[log.path] = data.split(b"\n")
        for each in whole[max(0, len(whole) - tail) :] if tail is not None else whole:
            yield LogLine(log.member, each.decode(errors="replace"))
    stopping = False
    while True:
        for log in more_logs() if more_logs is not None else ():
            if log.path not in offsets:
                offsets[log.path], members[log.path] = 0, log.member
        fresh = False
        for path, offset in offsets.items():
            with open(path, "rb") as file:
                file.seek(offset)
                data = partial.pop(path, b"") + file.read()
                offsets[path] = file.tell()
            *whole, rest = data.split(b"\n")
            if rest:
                partial[path] = rest
            for each in whole:
                fresh = True
                yield LogLine(members[path], each.decode(errors="replace"))
        if fresh:
            continue
        if stopping:  # one last pass after stop() said so: nothing written before it is lost
            for path, rest in partial.items():
                if rest:
                    yield LogLine(members[path], rest.decode(errors="replace"))
            return
        stopping = stop()
        if not stopping:
            time.sleep(poll_s)

"""Waiting, and checks on local processes, for the tests that run real multi-process runs (Ray, kube)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["alive", "describe", "processes_mentioning", "until", "wait_gone"]


def until(condition: Callable[[], bool], seconds: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting{': ' + what if what else ''}"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except OSError:
        return False


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def describe(pids: list[int]) -> str:
    """The command lines of ``pids``, for a failure message."""
    lines = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            lines.append(f"{pid}: {b' '.join(argv).decode(errors='replace')}")
        except OSError:
            lines.append(f"{pid}: (gone)")
    return "; ".join(lines)


def wait_gone(text: str, seconds: float = 30.0) -> None:
    """Wait until no live process mentions ``text``; fail naming those that still do."""
    deadline = time.monotonic() + seconds
    while found := processes_mentioning(text):
        assert time.monotonic() < deadline, f"processes left mentioning {text}: {describe(found)}"
        time.sleep(0.1)


def engine_answers(requests: Path, key: str) -> list[dict[str, Any]]:
    """Every answer the fake engines logged in ``requests/engine-<n>.jsonl``, each with ``key``: ``n``."""
    lines = []
    for log in sorted(requests.glob("engine-*.jsonl")):
        n = int(log.stem.split("-")[1])
        lines += [{**json.loads(line), key: n} for line in log.read_text().splitlines() if line]
    return lines


def step_report(work: Path, step: int) -> dict[str, Any]:
    """The reference trainer's ``report.json`` of ``step``."""
    return dict(json.loads((work / f"step-{step:06d}" / "report.json").read_text()))


def batch_versions(work: Path, step: int) -> set[int]:
    """Every weights version the trained trajectories of ``step`` were generated with."""
    rows = (work / f"step-{step:06d}" / "batch.jsonl").read_text().splitlines()
    return {version for row in rows for version in json.loads(row)["weights_versions"]}

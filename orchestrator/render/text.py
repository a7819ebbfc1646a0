"""Short texts shared by every view: wall times, ages, who drives a run, one-line summaries.

Pure: no I/O, no clock reads; the caller passes ``now``."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from orchestrator.records import Run

__all__ = [
    "MISSING",
    "age_text",
    "controller_cell",
    "controller_line",
    "engines_line",
    "figures_line",
    "hours_by_role",
    "iso_time",
    "lease_holder",
    "local_time",
    "step_list",
]

START_HINT = "start one with `orch controller`"
MISSING = "-"


def iso_time(seconds: float) -> str:
    """Wall time (seconds since the epoch) as ISO 8601 in UTC, for JSON and YAML."""
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def local_time(seconds: float) -> str:
    """Wall time as ``2026-12-02 12:04:47`` in the local zone, for tables."""
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def age_text(seconds: float) -> str:
    """A short age: ``4s``, ``3m05s``, ``2h10m``, ``5d03h``."""
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def lease_holder(run: Run, now: float) -> str | None:
    """The controller whose lease on a non-final run is in force at ``now``, else None."""
    if run.phase.terminal or not run.lease_owner or run.lease_expires_at < now:
        return None
    return run.lease_owner


def controller_line(run: Run, now: float) -> str:
    """Who drives a run, for ``orch status``: the lease holder and when its lease lapses, or why none."""
    if run.phase.terminal:
        return f"- (the run is {run.phase.value})"
    holder = lease_holder(run, now)
    if holder is not None:
        return f"{holder} (lease renewed, expires in {age_text(run.lease_expires_at - now)})"
    if run.lease_owner:
        lapsed = age_text(now - run.lease_expires_at)
        return f"none: {run.lease_owner}'s lease lapsed {lapsed} ago; {START_HINT}"
    return f"none: no controller is driving it; {START_HINT}"


def controller_cell(run: Run, now: float) -> str:
    """Who drives a run, short, for ``orch list``: ``host-12 (9s)`` (lease time left), ``none`` or ``-``."""
    if run.phase.terminal:
        return "-"
    holder = lease_holder(run, now)
    return f"{holder} ({age_text(run.lease_expires_at - now)})" if holder else "none"


def engines_line(engines: Sequence[Mapping[str, float]], queue_peak: int) -> str:
    """The last step's engines in one line however many there are: busy share min/median/max, the least
    KV-cache headroom and the queue peak."""
    if not engines:
        return MISSING
    busy = [e["busy_ratio"] for e in engines]
    headroom = min(e["kv_free_ratio"] for e in engines)
    return (
        f"{len(engines)} engines busy min {min(busy):.0%} · median {statistics.median(busy):.0%} · "
        f"max {max(busy):.0%}; min KV headroom {headroom:.0%}; queue peak {queue_peak}"
    )


def figures_line(figures: Mapping[str, Any] | None) -> str:
    """A step's figures in one line: ``12 rollouts · solve rate 42% · reward mean 0.42 · 30 turns ·
    18 tool calls (2 failed) · 2 masked · 1 stale regenerated, 0 dropped · weights v3``."""
    if not figures:
        return MISSING
    parts = [
        f"{figures['rollouts']} rollouts",
        f"solve rate {figures['solve_rate']:.0%}",
        f"reward mean {figures['reward_mean']:.2f}",
        f"{figures['turns']} turns",
        f"{figures['tool_calls']} tool calls ({figures['tool_errors']} failed)",
        f"{figures['infra_masked']} masked",
    ]
    if figures["stale_regenerated"] or figures["stale_dropped"]:
        parts.append(f"{figures['stale_regenerated']} stale regenerated, {figures['stale_dropped']} dropped")
    if figures["weights_version"] is not None:
        parts.append(f"weights v{figures['weights_version']}")
    return " · ".join(parts)


def hours_by_role(total: float, by_role: Mapping[str, float]) -> str:
    """``0.42 (engine 0.30, trainer 0.12)``: idle GPU-hours in all and per role."""
    parts = ", ".join(f"{role} {hours:g}" for role, hours in sorted(by_role.items()))
    return f"{total:g} ({parts})" if parts else f"{total:g}"


def step_list(steps: Sequence[int], keep: int = 6) -> str:
    """Checkpoint steps, the first and last few when there are many: ``2, 4, 6 … 508, 510 (255 in all)``."""
    if not steps:
        return MISSING
    if len(steps) <= keep:
        return ", ".join(map(str, steps))
    half = keep // 2
    head, tail = ", ".join(map(str, steps[:half])), ", ".join(map(str, steps[-half:]))
    return f"{head} … {tail} ({len(steps)} in all)"

"""Queues for people and machines: ``orch queues`` as a table and as plain data, and what ``apply`` did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from rich import box
from rich.table import Table

from orchestrator.service import QueueRow

__all__ = ["applied_lines", "queue_record", "queues_table"]


def queue_record(row: QueueRow) -> dict[str, Any]:
    """One queue in one pool as plain data for ``-o json|yaml``."""
    return asdict(row)


def _borrowing(row: QueueRow) -> str:
    if row.cohort is None:
        return "-"
    return "any" if row.borrowing_limit is None else str(row.borrowing_limit)


HEADERS = ("queue", "pool", "cohort", "weight", "quota", "limit", "used", "borrowed", "pending", "admitted")


def queues_table(rows: Sequence[QueueRow]) -> Table:
    """``orch queues`` for people: a line per queue and pool, whole at 80 columns (names are never cut)."""
    cells = [
        (
            row.queue if row.applied else f"{row.queue} (not applied)",
            row.pool,
            row.cohort or "-",
            f"{row.weight:g}",
            str(row.nominal),
            _borrowing(row),
            str(row.used),
            str(row.borrowed),
            f"{row.pending_runs} ({row.pending_gpus})" if row.pending_runs else "0",
            str(row.admitted),
        )
        for row in rows
    ]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for position, header in enumerate(HEADERS):
        width = max([len(header), *(len(row[position]) for row in cells)])
        justify = "left" if position < 3 else "right"
        table.add_column(header, justify=justify, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*row)
    if not rows:
        table.add_row("(none)", *[""] * (len(HEADERS) - 1))
    if not any(row.applied for row in rows):
        table.caption = "no queue applied: runs share the implicit default queue"
    return table


def applied_lines(outcome: Mapping[str, str]) -> list[str]:
    """``queue research: created``, one line a queue, in the order applied."""
    return [f"queue {name}: {what}" for name, what in outcome.items()]

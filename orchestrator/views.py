"""Pure rendering helpers for GPU telemetry: rows, tables, the ``orch top`` view. No I/O, no clock reads."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.telemetry.sample import GpuSample

__all__ = [
    "BLOCKS",
    "gpu_records",
    "gpu_rows",
    "gpu_table",
    "sample_key",
    "sort_samples",
    "sparkline",
    "top_view",
    "utilization_bar",
]

BLOCKS = "▁▂▃▄▅▆▇█"
GIB = 1024**3
MISSING = "-"


def sample_key(sample: GpuSample) -> str:
    """The key a GPU's history is kept under: its UUID, else ``node/index``."""
    return sample.uuid or f"{sample.node}/{sample.index}"


def sort_samples(samples: Sequence[GpuSample]) -> list[GpuSample]:
    """Samples ordered by pool, node, GPU index."""
    return sorted(samples, key=lambda s: (s.pool, s.node, s.index))


def _fmt(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value / scale:.{digits}f}"


def _text(value: str) -> str:
    return value or MISSING


def gpu_rows(samples: Sequence[GpuSample]) -> list[dict[str, str]]:
    """One display row per GPU (values as strings, ``-`` where a field is unknown), by pool, node, index."""
    return [
        {
            "pool": _text(s.pool),
            "node": _text(s.node),
            "gpu": str(s.index),
            "uuid": _text(s.uuid),
            "util_pct": _fmt(s.utilization_ratio, 0, 0.01),
            "mem_used_gib": _fmt(s.memory_used_bytes, 1, GIB),
            "mem_total_gib": _fmt(s.memory_total_bytes, 1, GIB),
            "power_w": _fmt(s.power_watts),
            "temp_c": _fmt(s.temperature_celsius),
            "run": _text(s.run),
            "role": _text(s.role),
        }
        for s in sort_samples(samples)
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def gpu_records(samples: Sequence[GpuSample]) -> list[dict[str, Any]]:
    """Every field of every sample as plain data (tuples become lists), for ``-o json|yaml``."""
    return [_plain(dataclasses.asdict(s)) for s in sort_samples(samples)]


HEADERS = {
    "pool": "pool",
    "node": "node",
    "gpu": "gpu",
    "uuid": "uuid",
    "util_pct": "util %",
    "mem_used_gib": "mem used GiB",
    "mem_total_gib": "mem total GiB",
    "power_w": "power W",
    "temp_c": "temp °C",
    "run": "run",
    "role": "role",
}
NUMERIC = frozenset({"gpu", "util_pct", "mem_used_gib", "mem_total_gib", "power_w", "temp_c"})


def gpu_table(samples: Sequence[GpuSample]) -> Table:
    """The latest sample per GPU, one section per (pool, node); pool and node shown once per section."""
    table = Table(title=f"{len(samples)} GPUs")
    for column, header in HEADERS.items():
        whole = column in ("node", "uuid", "run")
        table.add_column(header, justify="right" if column in NUMERIC else "left", no_wrap=whole)
    if not samples:
        return table
    rows = gpu_rows(samples)
    for number, (_, group) in enumerate(groupby(rows, key=lambda r: (r["pool"], r["node"]))):
        if number:
            table.add_section()
        for position, row in enumerate(group):
            cells = dict(row)
            if position:
                cells["pool"] = cells["node"] = ""
            table.add_row(*cells.values())
    return table


def sparkline(values: Sequence[float | None], width: int) -> str:
    """The last ``width`` values (0–1 ratios, clamped) as block characters, right-aligned to ``width``.

    An unknown value (None or NaN) is a blank; fewer values than ``width`` are padded on the left.
    """
    if width <= 0:
        return ""
    chars = []
    for value in list(values)[-width:]:
        if value is None or math.isnan(value):
            chars.append(" ")
        else:
            level = min(max(value, 0.0), 1.0)
            chars.append(BLOCKS[round(level * (len(BLOCKS) - 1))])
    return "".join(chars).rjust(width)


def utilization_bar(ratio: float | None, width: int = 20) -> Text:
    """A horizontal bar, green below 50 %, yellow below 80 %, red above; blank when unknown."""
    if ratio is None or math.isnan(ratio):
        return Text(" " * width)
    level = min(max(ratio, 0.0), 1.0)
    filled = round(level * width)
    style = "green" if level < 0.5 else "yellow" if level < 0.8 else "red"
    return Text.assemble(("█" * filled, style), ("·" * (width - filled), "dim"))


def _average(samples: Sequence[GpuSample]) -> float | None:
    known = [s.utilization_ratio for s in samples if s.utilization_ratio is not None]
    return sum(known) / len(known) if known else None


def top_view(
    samples: Sequence[GpuSample],
    history: Mapping[str, Sequence[float | None]],
    *,
    bar_width: int = 20,
    spark_width: int = 30,
) -> RenderableType:
    """A header (GPU count, cluster-average utilization) and one line per GPU: bar, %, sparkline, memory.

    ``history`` maps ``sample_key(sample)`` to recent utilization ratios, oldest first.
    """
    average = _average(samples)
    header = Text.assemble(
        ("orch top", "bold"),
        f"  {len(samples)} GPUs  ·  cluster utilization ",
        (_fmt(average, 0, 0.01) + ("%" if average is not None else ""), "bold"),
        "  ·  q quits",
    )
    table = Table(box=None, padding=(0, 1), show_edge=False)
    for header_name, justify in (
        ("pool", "left"),
        ("node", "left"),
        ("gpu", "right"),
        ("utilization", "left"),
        ("%", "right"),
        ("history", "left"),
        ("mem GiB", "right"),
        ("W", "right"),
        ("°C", "right"),
        ("run", "left"),
        ("role", "left"),
    ):
        table.add_column(header_name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for sample, row in zip(sort_samples(samples), gpu_rows(samples), strict=True):
        table.add_row(
            row["pool"],
            row["node"],
            row["gpu"],
            utilization_bar(sample.utilization_ratio, bar_width),
            row["util_pct"],
            Text(sparkline(history.get(sample_key(sample), ()), spark_width), style="cyan"),
            f"{row['mem_used_gib']}/{row['mem_total_gib']}",
            row["power_w"],
            row["temp_c"],
            row["run"],
            row["role"],
        )
    if not samples:
        return Group(header, Text("no GPU samples yet", style="dim"))
    return Group(header, table)

"""``orch top``: one frame of per-node and per-GPU utilization, bars and sparklines, sized to the terminal.

Pure: the caller passes the views and the history; ``orchestrator.render.live`` refreshes it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import groupby
from typing import Any

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.render.gpus import (
    GIB,
    GpuView,
    age_cell,
    fmt_number,
    sample_key,
    sorted_views,
    text_or_missing,
)
from orchestrator.render.text import MISSING, age_text

__all__ = [
    "BLOCKS",
    "node_key",
    "node_utilization",
    "sparkline",
    "top_page_count",
    "top_view",
    "utilization_bar",
]

BLOCKS = "▁▂▃▄▅▆▇█"


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


def _average(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    return sum(known) / len(known) if known else None


def node_key(pool: str, node: str) -> str:
    """The key a node's mean-utilization history is kept under (beside ``sample_key`` of its GPUs)."""
    return f"node:{pool}/{node}"


def node_utilization(views: Sequence[GpuView]) -> dict[str, float | None]:
    """Mean utilization of each node's GPUs, keyed by ``node_key``."""
    return {
        node_key(*key): _average([v.sample.utilization_ratio for v in group])
        for key, group in _node_groups(views)
    }


def _node_groups(views: Sequence[GpuView]) -> list[tuple[tuple[str, str], list[GpuView]]]:
    ordered = sorted_views(views)
    return [
        (key, list(group)) for key, group in groupby(ordered, key=lambda v: (v.sample.pool, v.sample.node))
    ]


TOP_CHROME_LINES = 3  # the header line, the column headers, the paging line


def _pages(views: Sequence[GpuView], height: int | None) -> list[list[list[GpuView]]]:
    """Whole nodes per screen: each node takes its summary line and one line per GPU."""
    groups = [group for _, group in _node_groups(views)]
    if height is None:
        return [groups]
    room = max(1, height - TOP_CHROME_LINES)
    pages: list[list[list[GpuView]]] = []
    current: list[list[GpuView]] = []
    used = 0
    for group in groups:
        if current and used + 1 + len(group) > room:
            pages.append(current)
            current, used = [], 0
        current.append(group)
        used += 1 + len(group)
    return [*pages, current] if current or not pages else pages


def top_page_count(views: Sequence[GpuView], height: int | None) -> int:
    """How many screens of ``height`` lines ``top_view`` needs for these GPUs."""
    return len(_pages(views, height))


def _sum(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _top_cells(group: list[GpuView]) -> list[dict[str, Any]]:
    """The node's summary line, then one line per GPU, as plain strings (bars and sparklines come later)."""
    first = group[0].sample
    samples = [v.sample for v in group]
    runs = sorted({s.run for s in samples if s.run})
    node_age = min(v.age_s for v in group)
    summary = {
        "label": f"{first.node} ({first.pool})" if first.pool else first.node,
        "ratio": _average([s.utilization_ratio for s in samples]),
        "key": node_key(first.pool, first.node),
        "mem": _mem(
            _sum([s.memory_used_bytes for s in samples]), _sum([s.memory_total_bytes for s in samples])
        ),
        "power": fmt_number(_sum([s.power_watts for s in samples])),
        "temp": fmt_number(
            max((s.temperature_celsius for s in samples if s.temperature_celsius is not None), default=None)
        ),
        "age": age_text(node_age) + (" stale" if all(v.stale for v in group) else ""),
        "who": f"{len(group)} GPUs" + (f" {','.join(runs)}" if runs else ""),
        "style": "bold",
    }
    rows = [summary]
    for view in group:
        s = view.sample
        rows.append(
            {
                "label": f"  {s.index}",
                "ratio": s.utilization_ratio,
                "key": sample_key(s),
                "mem": _mem(s.memory_used_bytes, s.memory_total_bytes),
                "power": fmt_number(s.power_watts),
                "temp": fmt_number(s.temperature_celsius),
                "age": age_cell(view),
                "who": text_or_missing(s.role),
                "style": "dim" if view.stale else "",
            }
        )
    return rows


def _mem(used: float | None, total: float | None) -> str:
    return f"{fmt_number(used, 0, GIB)}/{fmt_number(total, 0, GIB)}"


def _pct(ratio: float | None) -> str:
    return fmt_number(ratio, 0, 0.01) + ("%" if ratio is not None and not math.isnan(ratio) else "")


TOP_FIXED = (("label", "node / gpu"), ("mem", "mem GiB"), ("power", "W"), ("temp", "°C"), ("age", "age"))
TOP_FIXED += (("who", "runs / role"),)
CELL_MAX = {"label": 18, "who": 20}  # longer node names and run lists end in "…"
UTIL_HEADER, HISTORY_HEADER = "utilization", "history"


def _clip(text: str, limit: int) -> str:
    return text if cell_len(text) <= limit else text[: limit - 1] + "…"


def _flexible_widths(free: int) -> tuple[int, int]:
    """Widths of the utilization bar and the sparkline in ``free`` columns (0: not shown; the percentage
    is always shown): the bar column first, the sparkline in what is left, each capped."""
    room = free - 2  # the gap before the utilization column
    if room < cell_len(UTIL_HEADER):
        return 0, 0
    util = min(25, max(cell_len(UTIL_HEADER), room // 3))
    history = room - util - 2
    if history < cell_len(HISTORY_HEADER):
        return min(25, room) - 5, 0
    return util - 5, min(30, history)


def top_view(
    views: Sequence[GpuView],
    history: Mapping[str, Sequence[float | None]],
    *,
    width: int = 120,
    height: int | None = None,
    page: int = 0,
    dropped: Sequence[str] = (),
) -> RenderableType:
    """A header, then per node a summary line (GPUs, mean utilization, memory, power) and one line per GPU:
    bar, %, sparkline, memory, power, temperature, sample age, role. Sized to ``width``; with ``height``, as
    many whole nodes as fit, ``page`` picks the screen and a last line says how many nodes follow.

    ``history`` maps ``sample_key`` (a GPU) and ``node_key`` (a node's mean) to recent ratios, oldest first.
    """
    average = _average([v.sample.utilization_ratio for v in views])
    nodes = len(_node_groups(views))
    stale = sum(1 for v in views if v.stale)
    header = Text.assemble(
        ("orch top", "bold"),
        f"  {len(views)} GPUs on {nodes} node{'s' if nodes != 1 else ''} · utilization ",
        (_pct(average) if average is not None else MISSING, "bold"),
        f" · {stale} stale" if stale else "",
        f" · {len(dropped)} silent node(s) hidden" if dropped else "",
        " · q quits",
    )
    if not views:
        return Group(header, Text("no GPU samples yet", style="dim"))
    pages = _pages(views, height)
    page = min(max(page, 0), len(pages) - 1)
    rows = [row for group in pages[page] for row in _top_cells(group)]
    for row in rows:
        row["pct"] = _pct(row["ratio"])
        for key, limit in CELL_MAX.items():
            row[key] = _clip(row[key], limit)
    widths = [max(cell_len(title), *(cell_len(row[key]) for row in rows)) for key, title in TOP_FIXED]
    fixed = sum(widths) + 2 * (len(widths) - 1)
    bar_width, spark_width = _flexible_widths(width - fixed)
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    table.add_column("node / gpu", no_wrap=True)
    table.add_column(UTIL_HEADER if bar_width else "util", justify="right", no_wrap=True)
    if spark_width:
        table.add_column(HISTORY_HEADER, no_wrap=True)
    for key, title in TOP_FIXED[1:]:
        table.add_column(title, justify="left" if key == "who" else "right", no_wrap=True)
    for row in rows:
        utilization = Text(f"{row['pct']:>4}")
        if bar_width:
            utilization = Text.assemble(utilization_bar(row["ratio"], bar_width), " ", utilization)
        cells: list[RenderableType] = [row["label"], utilization]
        if spark_width:
            cells.append(Text(sparkline(history.get(row["key"], ()), spark_width), style="cyan"))
        cells += [row["mem"], row["power"], row["temp"], row["age"], row["who"]]
        table.add_row(*cells, style=row["style"] or None)
    parts: list[RenderableType] = [header, table]
    if len(pages) > 1:
        after = sum(len(p) for p in pages[page + 1 :])
        more = f" · … {after} more nodes (↓/PgDn)" if after else ""
        back = " · ↑/PgUp back" if page else ""
        parts.append(Text(f"page {page + 1}/{len(pages)}{more}{back}", style="dim"))
    return Group(*parts)

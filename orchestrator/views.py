"""Pure rendering helpers: GPU telemetry rows and tables, the ``orch top`` view, times and ages, who drives
a run. No I/O, no clock reads: the caller passes ``now``."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from itertools import groupby
from typing import Any

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orchestrator.records import GpuReading, Run
from orchestrator.telemetry.sample import GpuSample

__all__ = [
    "BLOCKS",
    "DEFAULT_STALE_SECONDS",
    "DROP_AFTER_STALE_WINDOWS",
    "STALE_SECONDS_ENV",
    "GpuView",
    "age_text",
    "controller_cell",
    "controller_line",
    "engines_line",
    "gpu_records",
    "gpu_rows",
    "gpu_table",
    "gpu_views",
    "hours_by_role",
    "iso_time",
    "lease_holder",
    "local_time",
    "node_key",
    "node_utilization",
    "sample_key",
    "sort_samples",
    "sparkline",
    "step_list",
    "top_page_count",
    "top_view",
    "utilization_bar",
]

STALE_SECONDS_ENV = "ORCH_GPU_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 30.0  # a live agent or controller reports every second or two
DROP_AFTER_STALE_WINDOWS = 10  # a node silent for 10 staleness windows (300 s by default) is dropped
START_HINT = "start one with `orch controller`"

BLOCKS = "▁▂▃▄▅▆▇█"
GIB = 1024**3
MISSING = "-"


# ---- times, ages and leases ---------------------------------------------------------------------


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


# ---- GPU samples --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GpuView:
    """A GPU's newest sample as shown at ``now``: how old it is and whether it is stale."""

    sample: GpuSample
    received_at: float  # wall time the store received the sample
    age_s: float
    stale: bool


def gpu_views(
    readings: Sequence[GpuReading],
    now: float,
    stale_after_s: float = DEFAULT_STALE_SECONDS,
    nodes: Sequence[str] = (),
) -> tuple[list[GpuView], list[str]]:
    """The readings to show, and the nodes dropped for silence, by pool, node, GPU index.

    A GPU whose sample is older than ``stale_after_s`` is stale; a node none of whose GPUs reported for
    ``DROP_AFTER_STALE_WINDOWS`` × ``stale_after_s`` is dropped. ``nodes``: shell patterns to keep.
    """
    kept = [r for r in readings if not nodes or any(fnmatchcase(r.sample.node, p) for p in nodes)]
    newest: dict[str, float] = {}
    for reading in kept:
        newest[reading.sample.node] = max(newest.get(reading.sample.node, 0.0), reading.received_at)
    limit = DROP_AFTER_STALE_WINDOWS * stale_after_s
    dropped = sorted(node for node, at in newest.items() if now - at > limit)
    views = [
        GpuView(r.sample, r.received_at, max(0.0, now - r.received_at), now - r.received_at > stale_after_s)
        for r in kept
        if r.sample.node not in dropped
    ]
    return sorted(views, key=lambda v: (v.sample.pool, v.sample.node, v.sample.index)), dropped


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


def _age_cell(view: GpuView) -> str:
    return age_text(view.age_s) + (" stale" if view.stale else "")


def gpu_rows(views: Sequence[GpuView]) -> list[dict[str, str]]:
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
            "age": _age_cell(view),
        }
        for view in _sorted_views(views)
        for s in [view.sample]
    ]


def _sorted_views(views: Sequence[GpuView]) -> list[GpuView]:
    return sorted(views, key=lambda v: (v.sample.pool, v.sample.node, v.sample.index))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def gpu_records(views: Sequence[GpuView]) -> list[dict[str, Any]]:
    """Every field of every sample as plain data, for ``-o json|yaml``.

    Times are ISO 8601 wall time (UTC): ``sampled_at`` (when the source read it) and ``received_at`` (when
    the store got it); a simulated pool's virtual clock goes in ``sim_time_s`` instead of ``sampled_at``.
    ``age_s`` counts from ``received_at``; ``stale`` says it is older than the staleness window.
    """
    records = []
    for view in _sorted_views(views):
        record = _plain(dataclasses.asdict(view.sample))
        at = record.pop("at")
        virtual = record.pop("virtual_clock")
        record["sampled_at"] = iso_time(at) if at and not virtual else None
        record["sim_time_s"] = at if virtual else None
        record["received_at"] = iso_time(view.received_at)
        record["age_s"] = round(view.age_s, 1)
        record["stale"] = view.stale
        records.append(record)
    return records


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
    "age": "age",
}
NUMERIC = frozenset({"gpu", "util_pct", "mem_used_gib", "mem_total_gib", "power_w", "temp_c", "age"})


def _title(views: Sequence[GpuView], dropped: Sequence[str], stale_after_s: float) -> str:
    parts = [f"{len(views)} GPUs"]
    stale = sum(1 for v in views if v.stale)
    if stale:
        parts.append(f"{stale} stale (no sample for over {stale_after_s:g}s)")
    if dropped:
        silent = DROP_AFTER_STALE_WINDOWS * stale_after_s
        parts.append(f"{len(dropped)} node(s) not shown, silent for over {silent:g}s: {', '.join(dropped)}")
    return " · ".join(parts)


def gpu_table(
    views: Sequence[GpuView],
    dropped: Sequence[str] = (),
    stale_after_s: float = DEFAULT_STALE_SECONDS,
) -> Table:
    """The latest sample per GPU, one section per (pool, node); pool and node shown once per section."""
    table = Table(title=_title(views, dropped, stale_after_s))
    for column, header in HEADERS.items():
        whole = column in ("node", "uuid", "run")
        table.add_column(header, justify="right" if column in NUMERIC else "left", no_wrap=whole)
    if not views:
        return table
    rows = gpu_rows(views)
    for number, (_, group) in enumerate(groupby(rows, key=lambda r: (r["pool"], r["node"]))):
        if number:
            table.add_section()
        for position, row in enumerate(group):
            cells = dict(row)
            if position:
                cells["pool"] = cells["node"] = ""
            table.add_row(*cells.values(), style="dim" if row["age"].endswith("stale") else None)
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
    ordered = _sorted_views(views)
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
        "power": _fmt(_sum([s.power_watts for s in samples])),
        "temp": _fmt(
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
                "power": _fmt(s.power_watts),
                "temp": _fmt(s.temperature_celsius),
                "age": _age_cell(view),
                "who": _text(s.role),
                "style": "dim" if view.stale else "",
            }
        )
    return rows


def _mem(used: float | None, total: float | None) -> str:
    return f"{_fmt(used, 0, GIB)}/{_fmt(total, 0, GIB)}"


def _pct(ratio: float | None) -> str:
    return _fmt(ratio, 0, 0.01) + ("%" if ratio is not None and not math.isnan(ratio) else "")


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

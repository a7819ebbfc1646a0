"""``orch gpus``: the newest sample of every GPU as views (age, staleness), table rows and plain records.

Pure: no I/O, no clock reads; the caller passes ``now``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fnmatch import fnmatchcase
from itertools import groupby
from typing import Any

from rich.table import Table

from orchestrator.records import GpuReading
from orchestrator.render.text import MISSING, age_text, iso_time
from orchestrator.telemetry.sample import GpuSample

__all__ = [
    "DEFAULT_STALE_SECONDS",
    "DROP_AFTER_STALE_WINDOWS",
    "STALE_SECONDS_ENV",
    "GpuView",
    "gpu_records",
    "gpu_rows",
    "gpu_table",
    "gpu_views",
    "sample_key",
    "sort_samples",
]

STALE_SECONDS_ENV = "ORCH_GPU_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 30.0  # a live agent or controller reports every second or two
DROP_AFTER_STALE_WINDOWS = 10  # a node silent for 10 staleness windows (300 s by default) is dropped
GIB = 1024**3


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


def fmt_number(value: float | None, digits: int = 0, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value / scale:.{digits}f}"


def text_or_missing(value: str) -> str:
    return value or MISSING


def age_cell(view: GpuView) -> str:
    return age_text(view.age_s) + (" stale" if view.stale else "")


def gpu_rows(views: Sequence[GpuView]) -> list[dict[str, str]]:
    """One display row per GPU (values as strings, ``-`` where a field is unknown), by pool, node, index."""
    return [
        {
            "pool": text_or_missing(s.pool),
            "node": text_or_missing(s.node),
            "gpu": str(s.index),
            "uuid": text_or_missing(s.uuid),
            "util_pct": fmt_number(s.utilization_ratio, 0, 0.01),
            "mem_used_gib": fmt_number(s.memory_used_bytes, 1, GIB),
            "mem_total_gib": fmt_number(s.memory_total_bytes, 1, GIB),
            "power_w": fmt_number(s.power_watts),
            "temp_c": fmt_number(s.temperature_celsius),
            "run": text_or_missing(s.run),
            "role": text_or_missing(s.role),
            "age": age_cell(view),
        }
        for view in sorted_views(views)
        for s in [view.sample]
    ]


def sorted_views(views: Sequence[GpuView]) -> list[GpuView]:
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
    for view in sorted_views(views):
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

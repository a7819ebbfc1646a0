"""GPU views (``orch gpus``, ``orch top``) and the Grafana dashboard: names only from the metric contract."""

from __future__ import annotations

import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

import cli
from orchestrator.records import GpuReading
from orchestrator.render import gpus as gpu_view
from orchestrator.render import live
from orchestrator.render import text as text_view
from orchestrator.render import top as top_view
from orchestrator.telemetry import names
from orchestrator.telemetry.latest import LatestGpuReadings, LatestGpuSamples, latest_readings, latest_samples
from orchestrator.telemetry.sample import GpuSample, ProcessMemory

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "manifests" / "dashboards" / "orch-gpus.json"
BASE_COPY = ROOT / "manifests" / "base" / "grafana-dashboards.yaml"
CONFIGMAP = "orch-grafana-dashboards"
KUBECTL = shutil.which("kubectl")
GIB = 1024**3
Doc = dict[str, Any]


# ---- builders -----------------------------------------------------------------------------------


def gpu(node: str, index: int, *, pool: str = "h100", util: float | None = 0.5, **fields: Any) -> GpuSample:
    return GpuSample(
        node=node,
        index=index,
        uuid=f"GPU-{node}-{index}",
        pool=pool,
        utilization_ratio=util,
        **fields,
    )


SAMPLES = [
    gpu(
        "node-b",
        1,
        util=0.91,
        memory_used_bytes=40 * GIB,
        memory_total_bytes=80 * GIB,
        power_watts=612.4,
        temperature_celsius=71.0,
        run="math-1",
        role="trainer",
        throttle_reasons=("sw_power_cap",),
        processes=(ProcessMemory(pid=7, used_bytes=GIB),),
    ),
    gpu("node-a", 1, util=None),
    gpu("node-a", 0, util=0.25, run="math-1", role="rollout"),
    gpu("node-c", 0, pool="a100", util=0.0),
]


NOW = 1_800_000_000.0  # the wall clock the view functions are handed


def fresh(samples: list[GpuSample], age: float = 1.0) -> list[GpuReading]:
    """Samples as the store returns them, received ``age`` seconds before ``NOW``."""
    return [GpuReading(sample, NOW - age) for sample in samples]


def shown(samples: list[GpuSample], age: float = 1.0) -> list[gpu_view.GpuView]:
    return gpu_view.gpu_views(fresh(samples, age), NOW)[0]


class StubStore:
    """Stands in for the store: answers a script of sample lists, received a second before ``NOW``."""

    def __init__(self, *batches: list[GpuSample]) -> None:
        self.batches = list(batches)
        self.calls = 0

    def latest_gpu_samples(self) -> list[GpuSample]:
        return [reading.sample for reading in self.latest_gpu_readings()]

    def latest_gpu_readings(self) -> list[GpuReading]:
        batch = self.batches[min(self.calls, len(self.batches) - 1)]
        self.calls += 1
        return fresh(batch)


# ---- the provider seam --------------------------------------------------------------------------


def test_latest_samples_reads_a_store_that_has_the_method() -> None:
    store = StubStore(SAMPLES)
    assert isinstance(store, LatestGpuSamples) and isinstance(store, LatestGpuReadings)
    assert latest_samples(store) == SAMPLES
    assert latest_readings(store) == fresh(SAMPLES)


def test_latest_samples_is_empty_for_a_store_without_telemetry() -> None:
    assert latest_samples(object()) == [] and latest_readings(object()) == []


# ---- rows and tables ----------------------------------------------------------------------------


def test_gpu_rows_are_sorted_by_pool_node_index_and_show_dashes_for_unknowns() -> None:
    rows = gpu_view.gpu_rows(shown(SAMPLES, age=75))
    assert [(r["pool"], r["node"], r["gpu"]) for r in rows] == [
        ("a100", "node-c", "0"),
        ("h100", "node-a", "0"),
        ("h100", "node-a", "1"),
        ("h100", "node-b", "1"),
    ]
    full = rows[3]
    assert full == {
        "pool": "h100",
        "node": "node-b",
        "gpu": "1",
        "uuid": "GPU-node-b-1",
        "util_pct": "91",
        "mem_used_gib": "40.0",
        "mem_total_gib": "80.0",
        "power_w": "612",
        "temp_c": "71",
        "run": "math-1",
        "role": "trainer",
        "age": "1m15s stale",
    }
    unknown = rows[2]
    for column in ("util_pct", "mem_used_gib", "mem_total_gib", "power_w", "temp_c", "run", "role"):
        assert unknown[column] == "-", column
    assert rows[0]["util_pct"] == "0"  # zero is a reading, not a missing one


def render(renderable: Any, width: int = 200) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_gpu_table_groups_by_pool_and_node() -> None:
    text = render(gpu_view.gpu_table(shown(SAMPLES)))
    assert "4 GPUs" in text
    lines = [line for line in text.splitlines() if "GPU-" in line]
    assert [re.search(r"GPU-\S+", line)[0] for line in lines] == [  # type: ignore[index]
        "GPU-node-c-0",
        "GPU-node-a-0",
        "GPU-node-a-1",
        "GPU-node-b-1",
    ]
    cells = [[cell.strip() for cell in line.split("│")[1:3]] for line in lines]
    assert cells == [["a100", "node-c"], ["h100", "node-a"], ["", ""], ["h100", "node-b"]]  # once per group
    assert lines[2].count(" - ") >= 5  # the GPU that reported nothing
    assert text.count("├") == 2  # one rule between each of the three (pool, node) groups


def test_gpu_table_without_samples() -> None:
    assert "0 GPUs" in render(gpu_view.gpu_table([]))


TIMES = {"sampled_at", "sim_time_s", "received_at", "age_s", "stale"}


def test_gpu_records_hold_every_field_as_plain_data_and_times_as_iso_8601_wall_time() -> None:
    records = gpu_view.gpu_records(shown(SAMPLES))
    fields = set(GpuSample.__dataclass_fields__) - {"at", "virtual_clock"}
    assert all(set(record) == fields | TIMES for record in records)
    full = records[3]
    assert full["throttle_reasons"] == ["sw_power_cap"]
    assert full["processes"] == [{"pid": 7, "used_bytes": GIB}]
    assert full["received_at"] == "2027-01-15T07:59:59+00:00"  # NOW (08:00:00 UTC) - 1 s
    assert (full["age_s"], full["stale"]) == (1.0, False)
    assert yaml.safe_load(yaml.safe_dump(records)) == records
    assert json.loads(json.dumps(records)) == records


def test_gpu_records_name_a_simulated_clock_apart_from_wall_time() -> None:
    wall = gpu("node-a", 0, at=NOW - 2.5)
    virtual = gpu("sim-node-0", 0, at=4433.7, virtual_clock=True)
    by_node = {r["node"]: r for r in gpu_view.gpu_records(shown([wall, virtual]))}
    assert (by_node["node-a"]["sampled_at"], by_node["node-a"]["sim_time_s"]) == (
        "2027-01-15T07:59:57+00:00",
        None,
    )
    assert (by_node["sim-node-0"]["sampled_at"], by_node["sim-node-0"]["sim_time_s"]) == (None, 4433.7)
    for record in by_node.values():
        assert datetime.fromisoformat(record["received_at"]).tzinfo is not None


# ---- staleness ----------------------------------------------------------------------------------


def test_a_node_past_the_window_is_stale_and_past_ten_windows_is_dropped() -> None:
    readings = [
        GpuReading(gpu("fresh", 0), NOW - 5),
        GpuReading(gpu("quiet", 0), NOW - 31),
        GpuReading(gpu("quiet", 1), NOW - 40),
        GpuReading(gpu("gone", 0), NOW - 301),
    ]
    kept, dropped = gpu_view.gpu_views(readings, NOW, stale_after_s=30)
    assert [(v.sample.node, v.sample.index, v.age_s, v.stale) for v in kept] == [
        ("fresh", 0, 5.0, False),
        ("quiet", 0, 31.0, True),
        ("quiet", 1, 40.0, True),
    ]
    assert dropped == ["gone"]
    assert gpu_view.DEFAULT_STALE_SECONDS == 30 and gpu_view.DROP_AFTER_STALE_WINDOWS == 10
    wider, none_dropped = gpu_view.gpu_views(readings, NOW, stale_after_s=60)
    assert [v.stale for v in wider] == [False, True, False, False] and none_dropped == []  # gone, 301 s
    table = render(gpu_view.gpu_table(kept, dropped, 30), width=200)
    assert "2 stale (no sample for over 30s)" in table and "silent for over 300s: gone" in table
    assert "31s stale" in table and "5s " in table


def test_a_node_filter_keeps_matching_nodes_only() -> None:
    kept, _ = gpu_view.gpu_views(fresh(SAMPLES), NOW, nodes=["node-a", "node-c*"])
    assert sorted({v.sample.node for v in kept}) == ["node-a", "node-c"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0s"), (59.9, "59s"), (75, "1m15s"), (3 * 3600 + 600, "3h10m"), (2 * 86400 + 7200, "2d02h")],
)
def test_age_text(seconds: float, text: str) -> None:
    assert text_view.age_text(seconds) == text


# ---- sparklines and bars ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "width", "expected"),
    [
        ([], 5, "     "),
        ([0.0, 1.0], 0, ""),
        ([0.5], -3, ""),
        ([0.0, 1.0], 2, "▁█"),
        ([0.0, 1.0], 4, "  ▁█"),
        ([0.0, 0.5, 1.0, 0.25], 2, "█▃"),
        ([-1.0, 2.0], 2, "▁█"),
        ([None, float("nan"), 1.0], 3, "  █"),
        ([i / 7 for i in range(8)], 8, top_view.BLOCKS),
    ],
    ids=[
        "empty pads to width",
        "zero width",
        "negative width",
        "bottom and top",
        "short history pads on the left",
        "keeps the newest values",
        "out-of-range clamps",
        "unknowns are blanks",
        "every level",
    ],
)
def test_sparkline(values: list[float | None], width: int, expected: str) -> None:
    assert top_view.sparkline(values, width) == expected


def test_utilization_bar() -> None:
    assert top_view.utilization_bar(0.5, 10).plain == "█████·····"
    assert top_view.utilization_bar(1.7, 4).plain == "████"
    assert top_view.utilization_bar(None, 4).plain == "    "


# ---- orch top -----------------------------------------------------------------------------------


def gpu_lines(text: str, samples: list[GpuSample]) -> dict[tuple[str, int], str]:
    """The line of each GPU: GPU lines (``  3 ...``) follow their node's summary line (``node-a (pool)``)."""
    found: dict[tuple[str, int], str] = {}
    node = ""
    for line in text.splitlines():
        if match := re.match(r"^(\S+) \(", line):
            node = match[1]
        elif match := re.match(r"^  (\d+) ", line):
            found[(node, int(match[1]))] = line
    return {(s.node, s.index): found[(s.node, s.index)] for s in samples}


def test_top_view_shows_a_header_a_summary_line_per_node_and_one_line_per_gpu() -> None:
    history = {gpu_view.sample_key(s): [0.0, 1.0] for s in SAMPLES}
    text = render(top_view.top_view(shown(SAMPLES), history, width=200), width=200)
    assert "4 GPUs on 3 nodes" in text
    assert "utilization 39%" in text  # (0.91 + 0.25 + 0.0) / 3: the unknown GPU is left out
    lines = gpu_lines(text, SAMPLES)
    assert "▁█" in lines[("node-b", 1)] and "40/80" in lines[("node-b", 1)]
    assert "-/-" in lines[("node-a", 1)] and "trainer" in lines[("node-b", 1)]
    [node_a] = [line for line in text.splitlines() if line.startswith("node-a (h100)")]
    assert re.search(r"25%\s.*\s2 GPUs math-1", node_a), node_a  # mean of the known, GPUs, the run


def test_top_view_without_samples() -> None:
    text = render(top_view.top_view([], {}))
    assert "0 GPUs" in text and "utilization -" in text and "no GPU samples yet" in text


def rack(nodes: int, gpus: int = 8) -> list[GpuSample]:
    return [
        gpu(
            f"node-{n:02d}",
            i,
            util=(n + i) % 10 / 10,
            memory_used_bytes=10 * GIB,
            memory_total_bytes=80 * GIB,
            power_watts=300.0,
            temperature_celsius=50.0,
            run="a-run-with-a-long-name-123456",
            role="engine",
        )
        for n in range(nodes)
        for i in range(gpus)
    ]


HEADERS_80 = ("node / gpu", "utilization", "mem GiB", "W", "°C", "age", "runs / role")


def test_top_view_fits_80_columns_with_whole_headers_and_node_totals() -> None:
    samples = rack(2)
    text = render(top_view.top_view(shown(samples), {}, width=80), width=80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    header = lines[1]
    for title in HEADERS_80:
        assert title in header, (title, header)
    [node_row] = [line for line in lines if line.startswith("node-00 (h100)")]
    assert "80/640" in node_row and "2400" in node_row and "8 GPUs" in node_row  # memory, power, GPUs
    assert "…" in node_row  # the long run name is cut, not the table


def test_top_view_shows_whole_nodes_per_screen_and_says_how_many_follow() -> None:
    samples = rack(5)  # 5 nodes of 9 lines each
    first = render(top_view.top_view(shown(samples), {}, width=100, height=24), width=100)
    assert "node-00" in first and "node-01" in first and "node-02" not in first
    assert len(first.splitlines()) <= 24
    assert "page 1/3 · … 3 more nodes (↓/PgDn)" in first
    last = render(top_view.top_view(shown(samples), {}, width=100, height=24, page=9), width=100)
    assert "node-04" in last and "node-03" not in last and "page 3/3 · ↑/PgUp back" in last
    assert (
        top_view.top_page_count(shown(samples), 24) == 3
        and top_view.top_page_count(shown(samples), None) == 1
    )


def test_watch_top_keeps_history_and_stops_after_the_iterations() -> None:
    later = [gpu(s.node, s.index, pool=s.pool, util=1.0) for s in SAMPLES]
    store = StubStore(SAMPLES, later, later)
    out = Console(file=io.StringIO(), width=200, height=100, record=True, color_system=None)
    waits: list[float] = []

    def wait(seconds: float) -> str:
        waits.append(seconds)
        return ""

    refreshes = live.watch_top(store, out, wait, interval=0.5, iterations=2, clock=lambda: NOW)
    assert (refreshes, store.calls, waits) == (2, 2, [0.5])
    lines = gpu_lines(out.export_text(), SAMPLES)
    assert "▃█" in lines[("node-a", 0)]  # 0.25 then 1.0
    assert " █" in lines[("node-a", 1)]  # unknown then 1.0


def test_watch_top_stops_when_a_quit_key_arrives() -> None:
    store = StubStore(SAMPLES)
    out = Console(file=io.StringIO(), width=200)
    answers = iter(["", "", live.QUIT])
    assert live.watch_top(store, out, lambda _: next(answers), interval=0.0) == 3


def test_watch_top_pages_on_the_page_keys_and_fits_the_terminal() -> None:
    store = StubStore(rack(5))
    out = Console(file=io.StringIO(), width=80, height=24, record=True, force_terminal=True)
    answers = iter([live.NEXT_PAGE, live.NEXT_PAGE, live.NEXT_PAGE, live.PREVIOUS_PAGE, live.QUIT])
    frames: list[str] = []

    def wait(_: float) -> str:
        frames.append(out.export_text(styles=False))
        return next(answers)

    assert live.watch_top(store, out, wait, interval=0.0, clock=lambda: NOW) == 5
    pages = [re.search(r"page (\d)/3", frame)[1] for frame in frames]  # type: ignore[index]
    assert pages == ["1", "2", "3", "3", "2"]  # paging past the last screen stays on it
    assert all(len(line) <= 80 for frame in frames for line in frame.splitlines())


@pytest.mark.parametrize(
    ("data", "command"),
    [
        (b"q", live.QUIT),
        (b"Q", live.QUIT),
        (b"", live.QUIT),
        (b"\x1b[B", live.NEXT_PAGE),
        (b"\x1b[6~", live.NEXT_PAGE),
        (b" ", live.NEXT_PAGE),
        (b"\x1b[A", live.PREVIOUS_PAGE),
        (b"\x1b[5~", live.PREVIOUS_PAGE),
        (b"x", ""),
    ],
    ids=["q", "Q", "end of input", "down", "PgDn", "space", "up", "PgUp", "other"],
)
def test_key_command(data: bytes, command: str) -> None:
    assert live.key_command(data) == command


def test_orch_top_iterations_on_the_real_store(tmp_path: Path) -> None:
    args = [
        "--database-url",
        f"sqlite:///{tmp_path / 'orch.db'}",
        "top",
        "--iterations",
        "2",
        "--interval",
        "0.01",
    ]
    result = CliRunner().invoke(cli.main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 GPUs" in result.output


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        os.close(fd)


def test_quit_keys_reads_q_in_cbreak_mode_and_restores_the_terminal(pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    with open(slave, "rb", buffering=0, closefd=False) as stream, live.keys(stream) as wait:
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & termios.ICANON and not lflag & termios.ECHO
        assert wait(0.01) == ""  # nothing typed
        os.write(master, b"x")
        assert wait(1.0) == ""  # another key: consumed, not a quit
        os.write(master, b"\x1b[6~")
        assert wait(1.0) == live.NEXT_PAGE
        os.write(master, b"q")
        assert wait(1.0) == live.QUIT
    assert termios.tcgetattr(slave) == before


def test_quit_keys_sleeps_when_stdin_is_not_a_terminal() -> None:
    with live.keys(io.StringIO()) as wait:
        started = time.monotonic()
        assert wait(0.02) == ""
        assert time.monotonic() - started >= 0.02


def read_until(master: int, marker: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return seen


def _controlling_terminal() -> None:
    import fcntl

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_orch_top_in_a_terminal_quits_cleanly(key: bytes, tmp_path: Path, pty_pair: tuple[int, int]) -> None:
    master, slave = pty_pair
    before = termios.tcgetattr(slave)
    env = {**os.environ, "ORCH_DATABASE_URL": f"sqlite:///{tmp_path / 'orch.db'}", "COLUMNS": "160"}
    child = subprocess.Popen(
        [sys.executable, "cli.py", "top", "--interval", "0.2"],
        cwd=ROOT,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_controlling_terminal,  # so Ctrl-C on the terminal sends SIGINT, as in a shell
    )
    try:
        assert b"orch top" in read_until(master, b"orch top", 30), "no frame drawn"
        os.write(master, key)
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    rest = read_until(master, b"\x00never", 0.2)
    assert b"Traceback" not in rest
    assert termios.tcgetattr(slave) == before


# ---- orch gpus ----------------------------------------------------------------------------------


def test_orch_gpus_on_the_real_store_without_telemetry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'orch.db'}"
    result = CliRunner().invoke(
        cli.main, ["--database-url", url, "gpus", "-o", "json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []
    for output in ("yaml", "table"):
        shown = CliRunner().invoke(cli.main, ["--database-url", url, "gpus", "-o", output])
        assert shown.exit_code == 0, shown.output
    assert "0 GPUs" in shown.output


def test_orch_gpus_json_is_the_records_of_what_the_seam_returns() -> None:
    records = gpu_view.gpu_records(gpu_view.gpu_views(latest_readings(StubStore(SAMPLES)), NOW)[0])
    assert [r["uuid"] for r in records] == ["GPU-node-c-0", "GPU-node-a-0", "GPU-node-a-1", "GPU-node-b-1"]
    assert records[2]["utilization_ratio"] is None


# ---- the Grafana dashboard ----------------------------------------------------------------------


def dashboard() -> Doc:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[Doc]) -> Iterator[Doc]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def exprs(panel: Doc) -> list[str]:
    return [target["expr"] for target in panel.get("targets", [])]


KNOWN = set(names.GPU_METRICS) | set(names.SCHEDULER_METRICS)
HISTOGRAMS = {name for name, (kind, _) in names.SCHEDULER_METRICS.items() if kind == "histogram"}


def metric_names(expr: str) -> set[str]:
    found = set()
    for name in re.findall(r"\borch_[a-z_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        found.add(base if base in HISTOGRAMS else name)
    return found


def test_the_dashboard_is_a_grafana_model_with_datasource_pool_and_run_variables() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (
        variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    )
    for label in ("pool", "run"):
        assert variables[label]["datasource"]["uid"] == "${datasource}"
        assert "label_values(orch_gpu_utilization_ratio" in variables[label]["definition"]
        assert variables[label]["definition"].endswith(f", {label})")
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(
                t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]
            )


def test_the_dashboard_uses_only_metric_names_from_the_contract() -> None:
    used: set[str] = set()
    for panel in all_panels(dashboard()["panels"]):
        for expr in exprs(panel):
            unknown = metric_names(expr) - KNOWN
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not in orchestrator/telemetry/names.py"
            used |= metric_names(expr)
    for variable in dashboard()["templating"]["list"]:
        assert metric_names(variable.get("definition", "")) <= KNOWN
    assert "orch_gpu_utilization_ratio" in used and len(used) >= 15


TOPICS: dict[str, str] = {
    "cluster utilization": r"\bavg\((sum|max)?\s*\(?orch_gpu_utilization_ratio",
    "per-pool utilization": r"by \(pool\) \(orch_gpu_utilization_ratio",
    "per-run utilization": r"by \(run\) \(orch_gpu_utilization_ratio",
    "run GPU busy ratio": r"orch_run_gpu_busy_ratio",
    "idle GPU-hours": r"increase\(orch_run_idle_gpu_seconds_total\{[^}]*\}\[\$__range\]\)\) / 3600",
    "memory used": r"orch_gpu_memory_used_bytes",
    "memory total": r"orch_gpu_memory_total_bytes",
    "power": r"orch_gpu_power_watts",
    "temperature": r"orch_gpu_temperature_celsius",
    "rollouts in flight": r"orch_rollouts_in_flight",
    "tool calls in flight": r"orch_tool_calls_in_flight",
    "dispatch latency": r"histogram_quantile\(\S+, sum by \(le\) \(rate\(orch_dispatch_decision_\w+_bucket",
    "dispatch throughput": r"rate\(orch_dispatch_decision_seconds_count",
    "KV-cache headroom": r"orch_engine_kv_cache_free_ratio",
    "runs by phase": r"by \(phase\) \(orch_runs\)",
    "queue length": r"orch_queue_length",
    "queue GPUs used against quota": r"orch_queue_used_gpus",
    "queue quota": r"orch_queue_nominal_gpus",
    "borrowed GPUs": r"orch_queue_borrowed_gpus",
    "pending runs": r"orch_queue_pending_runs",
    "admitted runs": r"orch_queue_admitted_runs",
    "preemptions in flight": r"orch_queue_preemptions_in_flight",
    "run step": r"orch_run_step",
    "run stage": r"orch_run_stage",
    "checkpoint age": r"orch_run_checkpoint_age_seconds",
}


@pytest.mark.parametrize(("topic", "pattern"), TOPICS.items(), ids=TOPICS.keys())
def test_the_dashboard_has_a_panel_for(topic: str, pattern: str) -> None:
    panels = [p for p in all_panels(dashboard()["panels"]) if any(re.search(pattern, e) for e in exprs(p))]
    assert panels, f"no panel for {topic}"


def test_the_memory_panel_shows_used_against_total() -> None:
    wanted = {"orch_gpu_memory_used_bytes", "orch_gpu_memory_total_bytes"}
    used = [set().union(*map(metric_names, exprs(p))) for p in all_panels(dashboard()["panels"]) if exprs(p)]
    assert any(wanted <= names_used for names_used in used)


# ---- the dashboards ConfigMap -------------------------------------------------------------------


def configmaps(text: str) -> list[Doc]:
    return [
        doc
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == CONFIGMAP
    ]


def check_configmap(doc: Doc) -> None:
    assert doc["metadata"]["namespace"] == "orch"
    assert doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert doc["data"] == {"orch-gpus.json": DASHBOARD.read_text()}


def test_the_base_carries_an_up_to_date_copy_of_the_dashboards() -> None:
    [doc] = configmaps(BASE_COPY.read_text())
    check_configmap(doc)


def kustomize(folder: Path) -> str:
    if KUBECTL is None:
        pytest.skip("kubectl is not on PATH (.ci/run installs it)")
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kustomize_base_includes_the_dashboards_configmap() -> None:
    [doc] = configmaps(kustomize(ROOT / "manifests" / "base"))
    check_configmap(doc)


def test_the_base_copy_is_what_the_dashboards_kustomization_generates() -> None:
    generated = kustomize(ROOT / "manifests" / "dashboards")
    assert yaml.safe_load(generated) == yaml.safe_load(BASE_COPY.read_text()), (
        "stale: run `kubectl kustomize manifests/dashboards > manifests/base/grafana-dashboards.yaml`"
    )

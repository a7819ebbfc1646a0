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
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

import cli
from orchestrator import views
from orchestrator.telemetry import names
from orchestrator.telemetry.latest import LatestGpuSamples, latest_samples
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


class StubStore:
    """Stands in for the store once it has ``latest_gpu_samples``: answers a script of sample lists."""

    def __init__(self, *batches: list[GpuSample]) -> None:
        self.batches = list(batches)
        self.calls = 0

    def latest_gpu_samples(self) -> list[GpuSample]:
        batch = self.batches[min(self.calls, len(self.batches) - 1)]
        self.calls += 1
        return batch


# ---- the provider seam --------------------------------------------------------------------------


def test_latest_samples_reads_a_store_that_has_the_method() -> None:
    store = StubStore(SAMPLES)
    assert isinstance(store, LatestGpuSamples)
    assert latest_samples(store) == SAMPLES


def test_latest_samples_is_empty_for_a_store_without_telemetry() -> None:
    assert latest_samples(object()) == []


# ---- rows and tables ----------------------------------------------------------------------------


def test_gpu_rows_are_sorted_by_pool_node_index_and_show_dashes_for_unknowns() -> None:
    rows = views.gpu_rows(SAMPLES)
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
    text = render(views.gpu_table(SAMPLES))
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
    assert "0 GPUs" in render(views.gpu_table([]))


def test_gpu_records_hold_every_field_as_plain_data() -> None:
    records = views.gpu_records(SAMPLES)
    fields = set(GpuSample.__dataclass_fields__)
    assert all(set(record) == fields for record in records)
    full = records[3]
    assert full["throttle_reasons"] == ["sw_power_cap"]
    assert full["processes"] == [{"pid": 7, "used_bytes": GIB}]
    assert yaml.safe_load(yaml.safe_dump(records)) == records
    assert json.loads(json.dumps(records)) == records


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
        ([i / 7 for i in range(8)], 8, views.BLOCKS),
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
    assert views.sparkline(values, width) == expected


def test_utilization_bar() -> None:
    assert views.utilization_bar(0.5, 10).plain == "█████·····"
    assert views.utilization_bar(1.7, 4).plain == "████"
    assert views.utilization_bar(None, 4).plain == "    "


# ---- orch top -----------------------------------------------------------------------------------


def gpu_lines(text: str, samples: list[GpuSample]) -> dict[tuple[str, int], str]:
    found = {}
    for sample in samples:
        [line] = [ln for ln in text.splitlines() if re.search(rf"{sample.node}\s+{sample.index}\s", ln)]
        found[(sample.node, sample.index)] = line
    return found


def test_top_view_shows_a_header_and_one_line_per_gpu() -> None:
    history = {views.sample_key(s): [0.0, 1.0] for s in SAMPLES}
    text = render(views.top_view(SAMPLES, history))
    assert "4 GPUs" in text
    assert "cluster utilization 39%" in text  # (0.91 + 0.25 + 0.0) / 3: the unknown GPU is left out
    lines = gpu_lines(text, SAMPLES)
    assert "▁█" in lines[("node-b", 1)] and "40.0/80.0" in lines[("node-b", 1)]
    assert "-/-" in lines[("node-a", 1)]


def test_top_view_without_samples() -> None:
    text = render(views.top_view([], {}))
    assert "0 GPUs" in text and "cluster utilization -" in text and "no GPU samples yet" in text


def test_watch_top_keeps_history_and_stops_after_the_iterations() -> None:
    later = [gpu(s.node, s.index, pool=s.pool, util=1.0) for s in SAMPLES]
    store = StubStore(SAMPLES, later, later)
    out = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    waits: list[float] = []
    refreshes = cli.watch_top(store, out, lambda s: bool(waits.append(s)), interval=0.5, iterations=2)
    assert (refreshes, store.calls, waits) == (2, 2, [0.5])
    lines = gpu_lines(out.export_text(), SAMPLES)
    assert "▃█" in lines[("node-a", 0)]  # 0.25 then 1.0
    assert " █" in lines[("node-a", 1)]  # unknown then 1.0


def test_watch_top_stops_when_a_quit_key_arrives() -> None:
    store = StubStore(SAMPLES)
    out = Console(file=io.StringIO(), width=200)
    answers = iter([False, False, True])
    assert cli.watch_top(store, out, lambda _: next(answers), interval=0.0) == 3


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
    with open(slave, "rb", buffering=0, closefd=False) as stream, cli._quit_keys(stream) as wait:
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & termios.ICANON and not lflag & termios.ECHO
        assert wait(0.01) is False  # nothing typed
        os.write(master, b"x")
        assert wait(1.0) is False  # another key: consumed, not a quit
        os.write(master, b"q")
        assert wait(1.0) is True
        os.write(master, b"Q")
        assert wait(1.0) is True
    assert termios.tcgetattr(slave) == before


def test_quit_keys_sleeps_when_stdin_is_not_a_terminal() -> None:
    with cli._quit_keys(io.StringIO()) as wait:
        started = time.monotonic()
        assert wait(0.02) is False
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
    records = views.gpu_records(latest_samples(StubStore(SAMPLES)))
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

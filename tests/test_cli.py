"""``orch`` end to end through click, on SQLite and PostgreSQL.

Every rejected command exits with its error class's code, prints exactly one ``error: `` line
on stderr and leaves the database exactly as it found it.
"""

from __future__ import annotations

import copy
import importlib.metadata
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml
from click.testing import CliRunner, Result
from rich.console import Console

import orchestrator
from cli import main, package_version
from orchestrator.errors import EXIT_CHECKS_FAILED, IllegalTransition, NotFound, OrchError, SpecError
from orchestrator.records import RunPatch
from orchestrator.render.runs import summary_table as cli_summary_table
from orchestrator.state.migrations_runner import head_revision
from orchestrator.state.store import Store

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUICKSTART = EXAMPLES / "quickstart.yaml"
RSTAR2 = EXAMPLES / "rstar2-math.yaml"


def row_counts(url: str) -> dict[str, int]:
    store = Store(url)
    try:
        return store.row_counts()
    finally:
        store.close()


@dataclass
class Orch:
    """Runs ``orch`` against one database and writes spec files into a scratch directory."""

    url: str
    folder: Path

    def __call__(self, *args: str) -> Result:
        runner = CliRunner()
        env = {"ORCH_DATABASE_URL": self.url, "ORCH_BACKEND": "sim", "ORCH_SIM_FAULTS": None}
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    def spec_file(self, data: Any, name: str = "run.yaml") -> Path:
        path = self.folder / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    def submit(self, path: Path = QUICKSTART) -> str:
        result = self("submit", str(path), "-o", "json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["id"]

    def finished_run(self) -> str:
        result = self("submit", str(QUICKSTART), "--wait", "-o", "json")
        assert result.exit_code == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["phase"] == "Succeeded"
        return summary["id"]


@pytest.fixture
def orch(db_url: str, tmp_path: Path) -> Iterator[Orch]:
    yield Orch(db_url, tmp_path)


def assert_rejected(orch: Orch, args: list[str], error: type[OrchError], *fragments: str) -> str:
    """Run a command that must fail; check its exit code, its one stderr line and the untouched database."""
    before = row_counts(orch.url)
    result = orch(*args)
    after = row_counts(orch.url)
    assert result.exit_code == error.exit_code, (result.exit_code, result.stdout, result.stderr)
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    line = lines[0]
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert before == after
    return line


# ---- spec builders ----------------------------------------------------------------------------------


def quickstart_with(mutate: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(QUICKSTART.read_text()))
    mutate(data)
    return data


def single_stage(data: dict[str, Any]) -> None:
    data["curriculum"] = [{"name": "only", "max_response_tokens": 4096, "max_turns": 4, "steps": 2}]


BAD_SPECS: dict[str, tuple[Any, list[str]]] = {
    "broken YAML": ("name: quickstart\ntrainer:\n  gpus: [8\n", ["broken YAML at line", "column"]),
    "a list instead of a mapping": ("- name: quickstart\n", ["expected a mapping"]),
    "an unknown field": (
        quickstart_with(lambda d: d["trainer"].update(gpu=8)),
        ["trainer.gpu:", "unknown field"],
    ),
    "zero GPUs": (
        quickstart_with(lambda d: d["trainer"].update(gpus=0)),
        ["trainer.gpus:", "greater than 0"],
    ),
    "negative GPUs": (
        quickstart_with(lambda d: d["pools"]["node"].update(gpus=-8)),
        ["pools.node.gpus:", "got -8", "greater than 0"],
    ),
    "stages out of order": (
        quickstart_with(lambda d: d["curriculum"][1].update(max_response_tokens=1024)),
        ["curriculum[1].max_response_tokens:", "growing response length"],
    ),
    "a request larger than its pool": (
        quickstart_with(lambda d: d["trainer"].update(gpus=16)),
        ["trainer.gpus:", "16 GPUs", "'node' has 8"],
    ),
    "a missing field": (quickstart_with(lambda d: d.pop("checkpoint")), ["checkpoint:", "required field"]),
}


# ---- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["submit", "validate"])
@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_a_bad_spec_is_one_error_line_and_writes_nothing(orch: Orch, command: str, case: str) -> None:
    orch.submit()  # something already in the database, to prove it stays as it was
    data, fragments = BAD_SPECS[case]
    path = orch.spec_file(data)
    line = assert_rejected(orch, [command, str(path)], SpecError, *fragments)
    assert line.startswith(f"error: {path}: ")


@pytest.mark.parametrize("command", ["submit", "validate"])
def test_every_spec_problem_is_its_own_error_line_and_writes_nothing(orch: Orch, command: str) -> None:
    def three_problems(data: dict[str, Any]) -> None:
        data["rollout"]["sample_per_prompt"] = data["rollout"].pop("samples_per_prompt")
        data["trainer"]["gpus"] = 0
        data["pools"]["node"]["gpu_type"] = "H200"

    path = orch.spec_file(quickstart_with(three_problems))
    before = row_counts(orch.url)
    result = orch(command, str(path))
    assert result.exit_code == SpecError.exit_code == 2
    assert sorted(result.stderr.splitlines()) == [
        f"error: {path}: pools.node.gpu_type: unknown GPU type 'H200'; did you mean H200-141GB? "
        "the catalogue has A100-40GB, A100-80GB, H100-80GB, H200-141GB, B200, L40S, MI300X",
        f"error: {path}: rollout.sample_per_prompt: unknown field; did you mean samples_per_prompt?",
        f"error: {path}: trainer.gpus: got 0; it should be greater than 0",
    ]
    assert row_counts(orch.url) == before


def test_a_spec_file_that_is_not_utf8_is_one_error_line(orch: Orch) -> None:
    path = orch.folder / "run.yaml"
    path.write_bytes("name: café\n".encode("latin-1"))
    assert_rejected(orch, ["validate", str(path)], SpecError, "not UTF-8 text", "save the file as UTF-8")


def test_a_spec_file_that_does_not_exist_is_one_error_line(orch: Orch) -> None:
    assert_rejected(
        orch, ["submit", str(orch.folder / "absent.yaml")], SpecError, "absent.yaml", "cannot read"
    )


@pytest.mark.parametrize(
    "args",
    [["status"], ["events"], ["cancel"], ["resume"], ["stage", "--advance"], ["stage"], ["logs"]],
    ids=lambda args: " ".join(args),
)
def test_an_unknown_run_id_is_one_error_line_naming_it(orch: Orch, args: list[str]) -> None:
    orch.submit()
    assert_rejected(orch, [*args, "nope-000000"], NotFound, "'nope-000000' not found", "orch list")


def test_resume_of_a_succeeded_run_is_an_illegal_transition(orch: Orch) -> None:
    run = orch.finished_run()
    assert_rejected(orch, ["resume", run], IllegalTransition, "Succeeded → Resuming", "final")


def test_cancel_twice_is_an_illegal_transition_the_second_time(orch: Orch) -> None:
    run = orch.submit()
    first = orch("cancel", run)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == f"{run}: Cancelled\n"
    assert_rejected(orch, ["cancel", run], IllegalTransition, "Cancelled → Cancelled")


def test_advancing_the_last_stage_names_the_stage(orch: Orch) -> None:
    run = orch.submit(orch.spec_file(quickstart_with(single_stage)))
    assert_rejected(orch, ["stage", run, "--advance"], IllegalTransition, run, "last stage (only)")


def test_advancing_twice_before_the_controller_acts_is_refused(orch: Orch) -> None:
    run = orch.submit()
    first = orch("stage", run, "--advance")
    assert first.exit_code == 0, first.stderr
    assert "stage-1 → stage-2" in first.stdout
    assert_rejected(orch, ["stage", run, "--advance"], IllegalTransition, "already pending")


def test_advancing_a_finished_run_names_its_phase(orch: Orch) -> None:
    run = orch.finished_run()
    assert_rejected(orch, ["stage", "--advance", run], IllegalTransition, "Succeeded")


# ---- happy paths --------------------------------------------------------------------------------------


def test_validate_accepts_the_rstar2_example(orch: Orch) -> None:
    result = orch("validate", str(RSTAR2))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        f"{RSTAR2}: valid: run rstar2-math, 3 stages, 510 steps, 64 trainer GPUs, 64 engines\n"
    )
    assert result.stderr == ""


def test_submit_without_wait_stores_a_pending_run(orch: Orch) -> None:
    before = row_counts(orch.url)
    result = orch("submit", str(QUICKSTART), "-o", "json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["phase"] == "Pending"
    assert row["id"].startswith("quickstart-")
    after = row_counts(orch.url)
    assert after["runs"] == before["runs"] + 1
    assert after["stages"] == before["stages"] + 3


def test_submit_wait_runs_the_quickstart_to_the_end_and_prints_a_summary(orch: Orch) -> None:
    result = orch("submit", str(QUICKSTART), "--wait")
    assert result.exit_code == 0, result.stderr
    assert "Succeeded" in result.stdout
    assert "9 of 9" in result.stdout
    assert "GPU busy fraction" in result.stdout
    assert "finished all 3 stages after 9 steps" in result.stdout


def test_machine_readable_output_parses_and_has_the_expected_fields(orch: Orch) -> None:
    run = orch.finished_run()

    listed = orch("list", "-o", "json")
    assert listed.exit_code == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["id"] for r in rows] == [run]
    assert rows[0]["phase"] == "Succeeded"
    assert rows[0]["step"] == 9
    assert {"stage", "attempt", "queue", "priority", "gpu_busy_fraction", "message"} <= set(rows[0])

    status = orch("status", run, "-o", "yaml")
    assert status.exit_code == 0, status.stderr
    summary = yaml.safe_load(status.stdout)
    assert summary["id"] == run
    assert summary["phase"] == "Succeeded"
    assert (summary["steps_done"], summary["steps_planned"]) == (9, 9)
    assert summary["stage"] == 3
    assert summary["stage_changes"] == 2
    assert summary["checkpoints"] == [2, 4, 6, 8, 9]
    assert summary["last_checkpoint"].endswith(f"/{run}/step-000009")
    assert 0 < summary["gpu_busy_fraction"] <= 1
    assert summary["workloads"] == []

    events = orch("events", run, "-o", "json")
    assert events.exit_code == 0, events.stderr
    reasons = [e["reason"] for e in json.loads(events.stdout)]
    assert reasons[0] == "Submitted"
    assert reasons[-1] == "Succeeded"
    assert reasons.count("StageChanged") == 2
    assert "ProblemsFiltered" in reasons
    assert all({"id", "time", "reason", "message"} == set(e) for e in json.loads(events.stdout))

    stages = orch("stage", run, "-o", "json")
    assert stages.exit_code == 0, stages.stderr
    table = json.loads(stages.stdout)
    assert [s["name"] for s in table] == ["stage-1", "stage-2", "stage-3"]
    assert [s["max_response_tokens"] for s in table] == [8192, 12288, 12288]
    assert [(s["start_after_step"], s["end_step"]) for s in table] == [(0, 4), (4, 6), (6, 9)]
    assert table[2]["problems_kept"] is not None
    assert table[2]["problems_kept"] <= table[2]["problems_in"] == 1024


def test_table_output_is_for_people(orch: Orch) -> None:
    run = orch.submit()
    listed = orch("list")
    assert listed.exit_code == 0, listed.stderr
    assert run in listed.stdout  # whole, even at 80 columns
    assert "Pending" in listed.stdout
    status = orch("status", run)
    assert status.exit_code == 0, status.stderr
    assert f"run {run}" in status.stdout
    assert "0 of 9" in status.stdout


def test_doctor_without_a_cluster_fails_its_api_check_and_still_pings_the_database(
    orch: Orch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(orch.folder / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = orch("doctor")
    lines = result.stdout.splitlines()
    assert result.exit_code == EXIT_CHECKS_FAILED, result.stdout
    assert [line.split(":")[0] for line in lines] == [
        "FAIL api",
        "skip crd",
        "skip nodes",
        "skip rbac",
        "skip pull-secret",
        "ok   database",
    ]
    assert lines[0].endswith("; fix: set KUBECONFIG to a kubeconfig for the cluster, or run inside it")


def test_db_upgrade_prints_the_head_revision(orch: Orch) -> None:
    result = orch("db", "upgrade")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"database at revision {head_revision()}\n"
    again = orch("db", "upgrade")
    assert again.stdout == result.stdout


def test_controller_once_on_the_simulated_pool_says_it_cannot_progress_and_changes_nothing(
    orch: Orch,
) -> None:
    run = orch.submit()
    line = assert_rejected(
        orch, ["controller", "--once"], OrchError, "cannot make progress", "--exit-when-idle", "--wait"
    )
    assert "reconciled" not in line
    [listed] = json.loads(orch("list", "-o", "json").stdout)
    assert (listed["id"], listed["phase"]) == (run, "Pending")


# ---- who drives a run (issue 11, point 7) ----------------------------------------------------------


def test_list_and_status_show_whether_a_controller_drives_each_unfinished_run(orch: Orch) -> None:
    done = orch.finished_run()  # first: `submit --wait` drives every pending run in the database
    run = orch.submit()

    def listed() -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in json.loads(orch("list", "-o", "json").stdout)}

    def status() -> str:
        return wide(orch, "status", run)

    assert (listed()[run]["controller"], listed()[run]["lease_expires_at"]) == (None, None)
    assert "none: no controller is driving it; start one with `orch controller`" in status()

    store = Store(orch.url)
    try:
        store.acquire_leases("host-1234", 60)
        row = listed()[run]
        assert row["controller"] == "host-1234" and row["lease_expires_at"].endswith("+00:00")
        assert listed()[done]["controller"] is None
        assert "host-1234 (" in wide(orch, "list")
        assert "host-1234 (lease renewed, expires in" in status()
        assert yaml.safe_load(orch("status", run, "-o", "yaml").stdout)["controller"] == "host-1234"

        store.release_leases("host-1234")
        store.acquire_leases("host-1234", -90)  # a controller that stopped renewing 90 s ago
        assert listed()[run]["controller"] is None
        lapsed = status()
        assert "none: host-1234's lease lapsed" in lapsed and "orch controller" in lapsed
    finally:
        store.close()


# ---- readable at 80 columns (issue 11, point 15) ---------------------------------------------------


def wide(orch: Orch, *args: str) -> str:
    """A command's table output on a wide terminal, so no phrase wraps."""
    result = CliRunner().invoke(main, list(args), env={"ORCH_DATABASE_URL": orch.url, "COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


def narrow(orch: Orch, *args: str) -> list[str]:
    result = CliRunner().invoke(
        main, list(args), env={"ORCH_DATABASE_URL": orch.url, "COLUMNS": "80"}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 80, result.output
    return lines


def test_list_fits_80_columns_with_whole_headers_and_ids(orch: Orch) -> None:
    queues = str(EXAMPLES.parent / "policies" / "queues")
    assert orch("queues", "apply", queues).exit_code == 0  # rstar2-math names queue research
    runs = [orch.submit(), orch.submit(RSTAR2)]
    lines = narrow(orch, "list")
    [header] = [line for line in lines if " phase " in line]
    assert header.split() == ["id", "phase", "stage", "step", "busy", "controller", "message"]
    assert "…" not in "\n".join(lines)
    for run in runs:
        assert any(run in line for line in lines)


def test_list_keeps_one_line_a_run_when_a_message_is_long(orch: Orch) -> None:
    run = orch.submit()
    store = Store(orch.url)
    try:
        current = store.get_run(run)
        store.apply(RunPatch(run, current.version, run={"message": "the spec can never run: " + "x " * 300}))
    finally:
        store.close()
    lines = narrow(orch, "list")
    [row] = [line for line in lines if run in line]
    assert lines.index(row) == len(lines) - 2, "the message wraps onto no further line"
    assert row.split()[1:7] == ["Pending", "1", "0", "0%", "none", "the"], row


def summary_with(engines: int) -> dict[str, Any]:
    return {
        "id": "rstar2-math-0a1b2c",
        "phase": "Running",
        "steps_done": 12,
        "steps_planned": 510,
        "stage": 1,
        "stage_name": "stage-1",
        "stage_changes": 0,
        "checkpoints": list(range(2, 202, 2)),
        "attempt": 1,
        "superseded_steps": 0,
        "gpu_busy_fraction": 0.8123,
        "idle_gpu_hours": 1.25,
        "idle_gpu_hours_by_role": {"engine": 0.5, "trainer": 0.75},
        "simulated_seconds": 3600.0,
        "message": "training step 12",
        "last_step_engines": [
            {"engine": i, "busy_ratio": 0.5 + i / (2 * engines), "kv_free_ratio": 0.2 + i / 1000}
            for i in range(engines)
        ],
        "last_step_queue_peak": 7,
    }


def test_status_at_80_columns_summarises_instead_of_printing_dicts_or_64_percentages() -> None:
    table = cli_summary_table(summary_with(64), "host-1 (lease renewed, expires in 9s)")
    out = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    out.print(table)
    assert max(map(len, out.export_text().splitlines())) <= 80, out.export_text()
    out = Console(file=io.StringIO(), width=250, record=True, color_system=None)
    out.print(table)
    text = out.export_text()
    assert not re.search(r"[{}\[\]]", text), "no Python dicts or lists"
    assert "1.25 (engine 0.5, trainer 0.75)" in text
    assert "64 engines busy min 50% · median 75% · max 99%" in text and "min KV headroom 20%" in text
    assert text.count("%") < 10
    assert "2, 4, 6 … 196, 198, 200 (100 in all)" in text
    assert "host-1 (lease renewed" in text


def test_events_show_date_and_time_for_people_and_iso_8601_for_machines(orch: Orch) -> None:
    run = orch.submit()
    lines = narrow(orch, "events", run)
    assert any(re.search(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b", line) for line in lines), lines
    [event] = json.loads(orch("events", run, "-o", "json").stdout)
    when = datetime.fromisoformat(event["time"])
    assert when.tzinfo is not None and abs(when.timestamp() - time.time()) < 3600


def test_version_is_the_installed_package_version_or_the_source_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"orch, version {importlib.metadata.version('orch')}\n"
    assert package_version("no-such-distribution-orch") == orchestrator.__version__
    pyproject = tomllib.loads((EXAMPLES.parent / "pyproject.toml").read_text())
    assert orchestrator.__version__ == pyproject["project"]["version"], "keep the source version in step"

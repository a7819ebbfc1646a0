"""What users see of queues: ``orch queues`` (apply, list, delete), ``orch list --queue``, what
``orch status`` says of a waiting or preempted run, and the ``orch_queue_*`` metrics. The CLI on SQLite;
the report and the metrics on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cli import main
from orchestrator import service
from orchestrator.core.queue_report import QueueRow
from orchestrator.errors import ConflictError, SpecError
from orchestrator.records import Phase, PreemptionRecord, RunPatch, WaitRecord
from orchestrator.spec import RunSpec, load_queue_files
from orchestrator.state.admission import AdmissionWrite
from orchestrator.state.store import Store
from orchestrator.telemetry.scheduler_metrics import SchedulerCollector
from tests.conftest import ROOT, spec_data

QUEUES = ROOT / "policies" / "queues"
QUICKSTART_GPUS = 8  # examples/quickstart.yaml: an 8-GPU trainer, its engines colocated


@dataclass
class Orch:
    """``orch`` against one SQLite database, files in a scratch folder."""

    url: str
    folder: Path

    def __call__(self, *args: str) -> Result:
        env = {"ORCH_DATABASE_URL": self.url, "ORCH_BACKEND": "sim", "ORCH_SIM_FAULTS": None}
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json").stdout)

    def submit(self, queue: str, priority: int = 0) -> str:
        data = spec_data()
        data["scheduling"] = {"queue": queue, "priority": priority, "preemptible": True}
        path = self.folder / f"run-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(self.json("submit", str(path))["id"])

    def store(self) -> Store:
        return Store(self.url)


@pytest.fixture
def orch(tmp_path: Path) -> Iterator[Orch]:
    yield Orch(f"sqlite:///{tmp_path / 'orch.db'}", tmp_path)


def admit(store: Store, run_id: str, at: float = 1_000.0) -> None:
    run = store.get_run(run_id)
    store.apply(RunPatch(run_id, run.version, run={"admitted_at": at}))


def status_text(orch: Orch, run_id: str) -> str:
    """``orch status`` as one line of words, the table's rules and wrapping gone."""
    return " ".join(orch.ok("status", run_id).stdout.replace("│", " ").split())


def rows_by_queue(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["queue"]: row for row in rows if row["pool"] == "node"}


# ---- queue files -----------------------------------------------------------------------------------


def test_the_example_queues_share_32_gpus_of_the_quickstart_pool_in_one_cohort() -> None:
    queues = load_queue_files([QUEUES])
    assert {q.name for q in queues} == {"research", "product", "batch", "default"}
    assert sum(q.nominal("node") for q in queues) == 32
    assert {q.cohort for q in queues} == {"shared"}
    assert "node" in RunSpec.model_validate(spec_data()).pools


def test_a_file_may_hold_a_list_of_queues(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("- name: a\n  quotas: [{pool: node, nominal: 4}]\n- name: b\n")
    assert [q.name for q in load_queue_files([path])] == ["a", "b"]


def test_a_queue_defined_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    shutil.copy(QUEUES / "batch.yaml", tmp_path / "again.yaml")
    with pytest.raises(SpecError) as raised:
        load_queue_files([QUEUES / "batch.yaml", tmp_path / "again.yaml"])
    [line] = raised.value.problems
    assert line.startswith(f"{tmp_path / 'again.yaml'}: name:") and "batch.yaml" in line


# ---- orch queues apply / list / delete ------------------------------------------------------------


def test_applying_the_examples_creates_them_and_applying_again_changes_nothing(orch: Orch) -> None:
    first = orch.ok("queues", "apply", *map(str, sorted(QUEUES.glob("*.yaml"))))
    assert first.stdout.splitlines() == [
        "queue batch: created",
        "queue default: created",
        "queue product: created",
        "queue research: created",
    ]
    again = orch.ok("queues", "apply", str(QUEUES))  # a folder stands for its YAML files
    names = ("batch", "default", "product", "research")
    assert again.stdout.splitlines() == [f"queue {q}: unchanged" for q in names]
    rows = rows_by_queue(orch.json("queues"))
    nominal = {name: row["nominal"] for name, row in rows.items()}
    assert nominal == {"batch": 8, "default": 0, "product": 8, "research": 16}
    assert rows["research"]["borrowing_limit"] == 8 and rows["batch"]["borrowing_limit"] is None


def test_a_bad_file_is_one_line_naming_file_and_field_and_nothing_is_written(orch: Orch) -> None:
    bad = orch.folder / "bad.yaml"
    bad.write_text("name: broken\nquotas:\n  - pool: node\n    nominal: -1\n")
    result = orch("queues", "apply", str(QUEUES / "research.yaml"), str(bad))
    assert result.exit_code == SpecError.exit_code != 0
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {bad}: quotas[0].nominal:") and "-1" in line, line
    assert orch.json("queues") == []  # no queue, and no run in the implicit default queue
    store = orch.store()
    try:
        assert store.queues() == []
    finally:
        store.close()


def test_a_run_naming_an_unknown_queue_is_refused_at_submit_in_one_line(orch: Orch) -> None:
    orch.ok("queues", "apply", str(QUEUES))
    data = spec_data()
    data["scheduling"] = {"queue": "nightly"}
    path = orch.folder / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    result = orch("submit", str(path))
    assert result.exit_code != 0
    [line] = result.stderr.splitlines()
    assert "unknown queue 'nightly'" in line and "research" in line, line
    assert orch.json("list") == []


def test_orch_queues_shows_used_borrowed_pending_and_admitted(orch: Orch) -> None:
    orch.ok("queues", "apply", str(QUEUES))
    batch = [orch.submit("batch") for _ in range(3)]
    waiting = orch.submit("research")
    store = orch.store()
    try:
        for run_id in batch:
            admit(store, run_id)
    finally:
        store.close()
    rows = rows_by_queue(orch.json("queues"))
    assert rows["batch"] | {"used": 24, "borrowed": 16, "admitted": 3, "pending_runs": 0} == rows["batch"]
    research = rows["research"]
    assert (research["used"], research["pending_runs"], research["pending_gpus"]) == (0, 1, QUICKSTART_GPUS)
    table = orch.ok("queues").stdout
    [line] = [line for line in table.splitlines() if line.split()[:1] == ["batch"]]
    assert line.split()[-4:] == ["24", "16", "0", "3"], line  # used, borrowed, pending, admitted
    assert "1 (8)" in next(line for line in table.splitlines() if line.startswith(" research")), table
    assert waiting in {run["id"] for run in orch.json("list", "--queue", "research")}


def test_orch_list_queue_lists_only_that_queues_runs(orch: Orch) -> None:
    orch.ok("queues", "apply", str(QUEUES))
    research = {orch.submit("research"), orch.submit("research")}
    product = orch.submit("product")
    assert {run["id"] for run in orch.json("list", "--queue", "research")} == research
    assert [run["id"] for run in orch.json("list", "--queue", "product")] == [product]
    assert orch.json("list", "--queue", "batch") == []
    assert len(orch.json("list")) == 3


def test_deleting_a_queue_with_unfinished_runs_says_which_and_an_unused_one_goes(orch: Orch) -> None:
    orch.ok("queues", "apply", str(QUEUES))
    run_id = orch.submit("batch")
    refused = orch("queues", "delete", "batch")
    assert refused.exit_code == ConflictError.exit_code != 0
    assert run_id in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert orch.ok("queues", "delete", "product").stdout.strip() == "queue product: deleted"
    assert sorted({row["queue"] for row in orch.json("queues")}) == ["batch", "default", "research"]


# ---- orch status ------------------------------------------------------------------------------------


def test_orch_status_says_where_a_waiting_run_stands_and_why_and_who_preempted_a_run(orch: Orch) -> None:
    orch.ok("queues", "apply", str(QUEUES))
    holder, victim, waiting = orch.submit("batch"), orch.submit("batch"), orch.submit("research", 5)
    reason = f"research needs 8 GPUs of pool node; they are held by {holder} and {victim} (batch borrows 8)"
    store = orch.store()
    try:
        admit(store, holder)
        admit(store, victim)
        epoch = store.acquire_admission("ctl", 30)
        assert epoch is not None
        store.commit_admission(
            "ctl",
            epoch,
            AdmissionWrite(
                waits=[WaitRecord(waiting, "research", 2, reason, time.time())],
                preemptions=[PreemptionRecord(victim, waiting, "research reclaims its quota", time.time())],
            ),
        )
    finally:
        store.close()
    shown = orch.json("status", waiting)
    assert shown["queue"] == "research" and shown["priority"] == 5
    assert shown["waiting"] | {"position": 2, "reason": reason} == shown["waiting"]
    text = status_text(orch, waiting)
    assert "#2 in line in queue research" in text and f"held by {holder} and {victim}" in text
    assert orch.json("status", victim)["preempted"] == {
        "by": waiting,
        "reason": "research reclaims its quota",
    }
    assert f"preempted by {waiting}: research reclaims its quota" in status_text(orch, victim)
    assert orch.json("status", holder)["waiting"] is None


def test_orch_status_gives_a_suspended_runs_reason(orch: Orch) -> None:
    run_id = orch.submit("default")
    store = orch.store()
    try:
        run = store.get_run(run_id)
        store.apply(
            RunPatch(run_id, run.version, run={"phase": Phase.SUSPENDED, "suspend_reason": "preempted"})
        )
    finally:
        store.close()
    assert orch.json("status", run_id)["suspend_reason"] == "preempted"
    assert "suspended because preempted" in status_text(orch, run_id)


# ---- the report on both databases, and the metrics ----------------------------------------------------


def a_run(store: Store, queue: str) -> str:
    data = spec_data()
    data["scheduling"] = {"queue": queue, "preemptible": True}
    return store.create_run(RunSpec.model_validate(data)).id


def set_phase(store: Store, run_id: str, **fields: Any) -> None:
    run = store.get_run(run_id)
    store.apply(RunPatch(run_id, run.version, run=fields))


def test_the_report_counts_holders_and_the_pending_by_the_definitions(store: Store) -> None:
    assert service.queue_report(store) == []  # no queue, no run: nothing to show
    held, _pending, preempted, idle, done = (a_run(store, "default") for _ in range(5))
    admit(store, held)
    set_phase(store, preempted, phase=Phase.SUSPENDED, suspend_reason="preempted")
    set_phase(
        store, idle, phase=Phase.SUSPENDED, suspend_reason="idle"
    )  # suspended by its owner: not waiting
    admit(store, done)
    set_phase(store, done, phase=Phase.CANCELLED)  # terminal: holds nothing
    [row] = service.queue_report(store)
    assert row == QueueRow(
        queue="default",
        pool="node",
        nominal=QUICKSTART_GPUS,  # the implicit default queue owns the pool the runs declare
        borrowing_limit=None,
        used=QUICKSTART_GPUS,
        borrowed=0,
        pending_runs=2,
        pending_gpus=2 * QUICKSTART_GPUS,
        admitted=1,
        cohort=None,
        weight=1.0,
        applied=False,
    )


def test_the_metrics_scrape_reports_each_queues_gpus_and_preemptions(store: Store) -> None:
    service.apply_queues(store, [QUEUES])
    holders = [a_run(store, "research") for _ in range(3)]
    for run_id in holders:
        admit(store, run_id)
    waiting = a_run(store, "product")
    epoch = store.acquire_admission("ctl", 30)
    assert epoch is not None
    record = PreemptionRecord(holders[0], waiting, "product reclaims its quota", time.time())
    store.commit_admission("ctl", epoch, AdmissionWrite(preemptions=[record]))
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(store, lambda: service.queue_report(store)))
    samples = {
        (family.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("orch_queue_used_gpus", queue="research", pool="node") == 24
    assert value("orch_queue_borrowed_gpus", queue="research", pool="node") == 8
    assert value("orch_queue_nominal_gpus", queue="research", pool="node") == 16
    assert value("orch_queue_admitted_runs", queue="research", pool="node") == 3
    assert value("orch_queue_pending_runs", queue="product", pool="node") == 1
    assert value("orch_queue_pending_gpus", queue="product", pool="node") == QUICKSTART_GPUS
    assert value("orch_queue_used_gpus", queue="batch", pool="node") == 0
    assert value("orch_queue_borrowing_limit_gpus", queue="research", pool="node") == 8
    assert ("orch_queue_borrowing_limit_gpus", (("pool", "node"), ("queue", "batch"))) not in samples
    assert value("orch_queue_preemptions_in_flight", queue="research") == 1
    assert value("orch_queue_preemptions_in_flight", queue="product") == 0
    assert value("orch_queue_length", queue="product") == 1  # kept as it was

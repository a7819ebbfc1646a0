"""GPU telemetry of the simulated pool: ingestion into SQL, `orch gpus`, idle detection, scheduler metrics."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text as sql

from cli import main
from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.core.idle import IdleStretch, account_idle
from orchestrator.records import GpuSample, Phase
from orchestrator.render.runs import report_record
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import IdlePolicySpec, load_spec
from orchestrator.state.store import Store
from orchestrator.telemetry.names import SCHEDULER_METRICS
from orchestrator.telemetry.scheduler_metrics import SchedulerCollector
from tests.conftest import spec_data, write_spec


def split_pools(tmp_path: Path, **idle: Any) -> Path:
    """Trainer and engines on separate 8-GPU pools: each side idles while the other works."""
    data = spec_data()
    data["pools"] = {"train": {"gpus": 8}, "gen": {"gpus": 8}}
    data["trainer"]["pool"] = "train"
    data["rollout"]["pool"] = "gen"
    data["idle"] = {"threshold_ratio": 0.05, "after_seconds": 60, **idle}
    return write_spec(tmp_path, data)


# Paced tests read the newest sample after each pass, so a phase must outlast a pass: at 2,000 virtual s per
# wall second a rollout phase of the example run lasts ~0.1-0.2 s of wall time, a pass on a loaded 2-core
# machine well under that (at 20,000 a slow pass saw only the training phase that followed).
def paced_controller(store: Store, pace: float = 2000) -> Controller:
    cluster = SimCluster()
    return Controller(
        store, cluster, SimTrainer(cluster, pace=pace), identity="ctl", telemetry=cluster.telemetry
    )


def gpus_json(db_url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["gpus", "-o", "json"], env={"ORCH_DATABASE_URL": db_url})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_orch_gpus_shows_engines_busy_in_rollouts_and_the_trainer_busy_in_training(
    store: Store, tmp_path: Path
) -> None:
    db_url = store.url
    run = store.create_run(load_spec(split_pools(tmp_path)))
    controller = paced_controller(store)
    seen_rollout = seen_train = False
    for _ in range(3000):
        if store.get_run(run.id).phase.terminal or (seen_rollout and seen_train):
            break
        controller.reconcile_once()
        gpus = gpus_json(db_url)
        engines = [g for g in gpus if g["role"] == "engine"]
        trainers = [g for g in gpus if g["role"] == "trainer"]
        if len(engines) == len(trainers) == 8:
            if (
                min(g["utilization_ratio"] for g in engines) > 0.3
                and max(g["utilization_ratio"] for g in trainers) == 0
            ):
                seen_rollout = True
            if (
                min(g["utilization_ratio"] for g in trainers) > 0.9
                and max(g["utilization_ratio"] for g in engines) == 0
            ):
                seen_train = True
    assert seen_rollout, "never saw engine GPUs busy while the trainer's were idle"
    assert seen_train, "never saw trainer GPUs busy while the engines' were idle"
    sample = gpus_json(db_url)[0]
    assert sample["memory_total_bytes"] == 81559 * 2**20 and sample["run"] == run.id
    assert {g["pool"] for g in gpus_json(db_url)} == {"train", "gen"}


def test_idle_gpus_of_a_split_run_raise_events_and_count_idle_gpu_hours(store: Store, tmp_path: Path) -> None:
    db_url = store.url
    run = store.create_run(load_spec(split_pools(tmp_path)))
    controller = paced_controller(store, pace=0)
    while not store.get_run(run.id).phase.terminal:
        controller.reconcile_once()

    idle = store.run_idle_seconds(run.id)
    assert idle.get("trainer", 0) > 9 * 60, "the trainer idles through every rollout phase"
    events = [e for e in store.events(run.id) if e.reason == "GpuIdle"]
    assert events and all("below 5% utilization" in e.message for e in events)
    report = report_record(service.report(store, run.id), time.time())
    assert report["idle_gpu_hours"] == pytest.approx(sum(idle.values()) / 3600, abs=1e-3)
    history = store.run_utilization(run.id)
    assert history and all(held > 0 and 0 <= busy <= held for _, held, busy in history)
    starts = [start for start, _, _ in history]
    assert starts == sorted(starts) and all(start % 60 == 0 for start in starts), "60-second buckets"
    status = CliRunner().invoke(main, ["status", run.id], env={"ORCH_DATABASE_URL": db_url})
    assert "idle GPU-hours" in status.output and "GPU busy fraction" in status.output


def test_a_colocated_run_keeps_its_gpus_busy_and_raises_no_idle_event(store: Store, quickstart: Path) -> None:
    run = service.submit(store, service.validate(quickstart))
    controller = paced_controller(store, pace=0)
    while not store.get_run(run.id).phase.terminal:
        controller.reconcile_once()
    assert [e for e in store.events(run.id) if e.reason == "GpuIdle"] == []
    assert store.run_idle_seconds(run.id) == {}
    assert len(store.latest_gpu_samples()) == 8


def test_the_suspend_policy_suspends_at_the_next_checkpoint_and_resume_finishes(
    store: Store, tmp_path: Path
) -> None:
    run = store.create_run(load_spec(split_pools(tmp_path, action="suspend")))
    controller = paced_controller(store, pace=0)
    for _ in range(200):
        if store.get_run(run.id).phase in (Phase.SUSPENDED, Phase.SUCCEEDED):
            break
        controller.reconcile_once()
    suspended = store.get_run(run.id)
    assert suspended.phase is Phase.SUSPENDED
    assert suspended.steps_done in [c.step for c in store.checkpoints(run.id)], "suspended at a checkpoint"
    assert all(not w.status.live for w in store.workloads(run.id)), "a suspended run holds no GPUs"
    service.resume_run(store, run.id)
    for _ in range(500):
        if store.get_run(run.id).phase in (Phase.SUSPENDED, Phase.SUCCEEDED):
            break
        controller.reconcile_once()
    again = store.get_run(run.id)
    assert again.attempt == suspended.attempt + 1 and again.steps_done > suspended.steps_done
    assert again.phase is Phase.SUSPENDED, "the policy still holds: idle again, suspended again"
    steps = [s.step for s in store.steps(run.id)]
    assert steps == list(range(1, again.steps_done + 1)), "resumed from the checkpoint, no step twice"


def sample(
    at: float, utilization: float | None, run: str = "r", role: str = "trainer", period: float = 30
) -> GpuSample:
    return GpuSample(
        node="n", index=0, uuid="u", utilization_ratio=utilization, run=run, role=role, at=at, period_s=period
    )


POLICY = IdlePolicySpec(threshold_ratio=0.1, after_seconds=60)


def test_a_short_idle_stretch_counts_nothing_and_a_long_one_counts_whole() -> None:
    short = account_idle({}, [sample(0, 0.0), sample(30, 0.5)], lambda run: POLICY)
    assert short.idle_seconds == {} and short.became_idle == []
    long = account_idle({}, [sample(0, 0.0), sample(30, 0.0), sample(60, 0.0)], lambda run: POLICY)
    assert long.idle_seconds == {("r", "trainer"): 90.0}
    assert len(long.became_idle) == 1, "reported once per stretch"


def test_idle_stretches_carry_over_between_batches_and_reset_on_a_new_role_or_unknown_reading() -> None:
    first = account_idle({}, [sample(0, 0.0)], lambda run: POLICY)
    assert first.stretches[("n", 0)] == IdleStretch("r", "trainer", 0.0)
    second = account_idle(first.stretches, [sample(30, 0.0)], lambda run: POLICY)
    assert second.idle_seconds == {("r", "trainer"): 60.0}
    switched = account_idle(second.stretches, [sample(60, 0.0, role="engine")], lambda run: POLICY)
    assert switched.idle_seconds == {} and switched.stretches[("n", 0)].role == "engine"
    unknown = account_idle(second.stretches, [sample(60, None)], lambda run: POLICY)
    assert unknown.stretches[("n", 0)] is None
    unheld = account_idle({}, [sample(0, 0.0, run="", period=600)], lambda run: POLICY)
    assert unheld.idle_seconds == {}, "GPUs no run holds are not a run's idle time"


def test_scheduler_metrics_come_from_sql_and_parse(store: Store, quickstart: Path) -> None:
    service.submit(store, service.validate(quickstart))
    running = service.submit(store, service.validate(quickstart))
    controller = paced_controller(store, pace=0)
    for _ in range(6):
        controller.reconcile_once()
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(store))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert {"orch_runs", "orch_queue_length", "orch_run_stage", "orch_run_step"} <= set(families)
    assert set(families) <= {name.removesuffix("_total") for name in SCHEDULER_METRICS}
    phases = {s.labels["phase"]: s.value for s in families["orch_runs"].samples}
    assert phases["Running"] + phases["Pending"] + phases["Admitted"] == 2
    steps = {s.labels["run"]: s.value for s in families["orch_run_step"].samples}
    assert steps[running.id] == store.get_run(running.id).steps_done


def test_the_controller_endpoint_serves_scheduler_and_gpu_series_that_promtool_accepts(
    store: Store, quickstart: Path
) -> None:
    import shutil
    import subprocess
    import urllib.request

    from orchestrator.health import HealthServer, LoopHeartbeat
    from orchestrator.telemetry.exporter import GpuCollector
    from orchestrator.telemetry.names import GPU_METRICS

    run = service.submit(store, service.validate(quickstart))
    controller = paced_controller(store, pace=0)
    for _ in range(12):
        controller.reconcile_once()
    registry = CollectorRegistry()
    registry.register(SchedulerCollector(store))
    registry.register(GpuCollector(store.latest_gpu_samples))
    server = HealthServer(0, LoopHeartbeat(), store.ping, host="127.0.0.1", registry=registry).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "orch_run_step" in families and "orch_gpu_utilization_ratio" in families
    assert families <= {n.removesuffix("_total") for n in (*GPU_METRICS, *SCHEDULER_METRICS)}
    utilization = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "orch_gpu_utilization_ratio"
        for s in f.samples
    ]
    assert len(utilization) == 8 and {s.labels["run"] for s in utilization} == {run.id}
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus)")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_metric_the_dashboard_queries_is_really_exported(store: Store, tmp_path: Path) -> None:
    """Scrape the controller's registry (scheduler, rollout and SQL-backed GPU series) after a simulated
    run and the agent's exposition, then check every name in every PromQL expression against them."""
    from orchestrator.backends import make_backend
    from orchestrator.service.control import scheduler_collector
    from orchestrator.telemetry.exporter import GpuCollector
    from orchestrator.telemetry.rollout_metrics import RolloutMetrics
    from tests.test_views import DASHBOARD, all_panels, exprs

    registry = CollectorRegistry()
    metrics = RolloutMetrics(registry)
    parts = make_backend("sim", sim_pace=0, rollout_metrics=metrics)
    controller = Controller(store, parts.cluster, parts.executor, identity="ctl", telemetry=parts.telemetry)
    spec = split_pools(tmp_path)
    run = service.submit(store, service.validate(spec))
    while not store.get_run(run.id).phase.terminal:
        controller.reconcile_once()
    live = service.submit(store, service.validate(spec))  # a live run, so per-run series exist at scrape time
    while store.get_run(live.id).steps_done < 3:
        controller.reconcile_once()
    registry.register(scheduler_collector(store))  # as the controller registers it
    registry.register(GpuCollector(store.latest_gpu_samples))
    controller_text = generate_latest(registry).decode()
    agent = CliRunner().invoke(main, ["agent", "--simulate", "--once"])
    assert agent.exit_code == 0, agent.output
    exported = set()
    for text in (controller_text, agent.output):
        for family in text_string_to_metric_families(text):
            exported |= {sample.name for sample in family.samples}
    assert metrics.dispatch_seconds.collect()[0].samples, "dispatch decisions were timed"
    dashboard = json.loads(DASHBOARD.read_text())
    referenced = {
        name
        for panel in all_panels(dashboard["panels"])
        for expr in exprs(panel)
        for name in __import__("re").findall(r"\borch_[a-z_]+", expr)
    }
    assert referenced, "the dashboard queries something"
    assert referenced <= exported, f"queried but never exported: {sorted(referenced - exported)}"


def test_the_controller_scrapes_agents_and_attributes_their_gpus_to_the_run_on_the_node(store: Store) -> None:
    from orchestrator.core.attribution import attribute_samples
    from orchestrator.records import Workload, WorkloadStatus
    from orchestrator.sim.gpu_source import SimulatedGpuSource
    from orchestrator.telemetry.exporter import Agent
    from orchestrator.telemetry.scrape import AgentScrapeFeed

    source = SimulatedGpuSource("gpu-node-7", gpus=8, seed=3)
    source.set_load(2, 0.9, 40 * 2**30)
    agent = Agent(source, interval=0.05)
    agent.sample_once()
    server = agent.serve(0, "127.0.0.1")
    try:
        feed = AgentScrapeFeed([server.url, "http://127.0.0.1:9/metrics"], timeout_s=0.5)
        samples = feed.drain()
    finally:
        server.close()
        agent.stop()
    assert feed.failures == 1, "an unreachable agent is skipped, not fatal"
    assert [s.index for s in samples] == list(range(8)) and {s.node for s in samples} == {"gpu-node-7"}
    assert samples[2].utilization_ratio == pytest.approx(0.9, abs=0.05)
    assert samples[2].memory_used_bytes == pytest.approx(40 * 2**30, rel=0.05)

    holder = Workload("r-trainer-0-a1", "r", "trainer", 0, 1, "h100", "gpu-node-7", 8, WorkloadStatus.RUNNING)
    labelled = attribute_samples(samples, [holder])
    assert {(s.run, s.role, s.pool) for s in labelled} == {("r", "trainer", "h100")}
    shared = attribute_samples(samples, [holder, replace(holder, name="q", run_id="q")])
    assert {s.run for s in shared} == {""}, "a node shared by two runs is not guessed"


def test_orch_top_shows_every_gpu_of_the_example_run_and_roles_alternate_on_shared_gpus(
    store: Store, quickstart: Path
) -> None:
    db_url = store.url
    run = service.submit(store, service.validate(quickstart))
    controller = paced_controller(store)
    roles_busy: set[str] = set()
    while not store.get_run(run.id).phase.terminal:
        controller.reconcile_once()
        roles_busy |= {g.role for g in store.latest_gpu_samples() if (g.utilization_ratio or 0) > 0.5}
    assert roles_busy == {"engine", "trainer"}, (
        "the same 8 GPUs serve engines in rollouts, the trainer in training"
    )
    result = CliRunner().invoke(
        main,
        ["top", "--iterations", "1", "--interval", "0.01"],
        env={"ORCH_DATABASE_URL": db_url, "COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    [node] = [n for n, line in enumerate(lines) if line.startswith("sim-node-0 ")]  # the node's summary line
    assert "8 GPUs" in lines[node]
    assert [line.split()[0] for line in lines[node + 1 : node + 9]] == [str(i) for i in range(8)], (
        result.output
    )
    released = store.latest_gpu_samples()
    assert all(g.run == "" and g.memory_used_bytes == 0 for g in released), (
        "a finished run gives its GPUs back"
    )


def test_the_latest_telemetry_names_the_run_holding_each_gpu(store: Store, quickstart: Path) -> None:
    run = service.submit(store, service.validate(quickstart))
    controller = paced_controller(store, pace=0)
    while store.get_run(run.id).steps_done < 2:
        controller.reconcile_once()
    controller.reconcile_once()
    held = [g for g in store.latest_gpu_samples() if g.run == run.id]
    assert len(held) == 8


@pytest.mark.parametrize("policy", ["round_robin", "kv_aware"])
def test_status_shows_each_engines_busy_share_and_kv_headroom_of_the_last_step(
    store: Store, tmp_path: Path, policy: str
) -> None:
    data = spec_data()
    data["rollout"]["dispatch"] = policy
    run = store.create_run(load_spec(write_spec(tmp_path, data)))
    controller = paced_controller(store, pace=0)
    while not store.get_run(run.id).phase.terminal:
        controller.reconcile_once()
    report = report_record(service.report(store, run.id), time.time())
    engines = report["last_step_engines"]
    assert [e["engine"] for e in engines] == list(range(8))
    assert all(0 < e["busy_ratio"] <= 1 and 0 <= e["kv_free_ratio"] <= 1 for e in engines)
    if policy == "kv_aware":
        assert all(step.preemptions == 0 for step in store.steps(run.id)), "reservations prevent preemption"
    status = CliRunner().invoke(
        main, ["status", run.id], env={"ORCH_DATABASE_URL": store.url, "COLUMNS": "200"}
    )
    assert "min KV headroom" in status.output


# ---- stale samples are never shown as live (issue 11, point 14) -----------------------------------


def ingest(store: Store, samples: list[GpuSample]) -> None:
    """Store samples as the controller does: idle stretches advanced over them, then one transaction."""
    update = account_idle(store.idle_stretches(), samples, lambda run: None)
    store.record_telemetry(samples, update, {})


def node_samples(node: str, run: str = "", role: str = "", gpus: int = 2) -> list[GpuSample]:
    return [
        GpuSample(node=node, index=i, uuid=f"GPU-{node}-{i}", utilization_ratio=0.9, run=run, role=role)
        for i in range(gpus)
    ]


def age_node(store: Store, node: str, seconds: float) -> None:
    """Pretend the node's samples arrived ``seconds`` earlier (the wall time the store received them)."""
    with store.engine.begin() as connection:
        connection.execute(
            sql("UPDATE gpu_latest SET updated_at = updated_at - :s WHERE node = :n"),
            {"s": seconds, "n": node},
        )


def test_the_gpus_of_a_cancelled_run_are_unassigned_at_once(store: Store, quickstart: Path) -> None:
    run = service.submit(store, service.validate(quickstart))
    ingest(store, node_samples("node-a", run.id, "trainer"))
    assert {(r.sample.run, r.sample.role) for r in store.latest_gpu_readings()} == {(run.id, "trainer")}
    service.cancel_run(store, run.id)  # no new sample arrives after the cancel
    assert {(r.sample.run, r.sample.role) for r in store.latest_gpu_readings()} == {("", "")}
    assert {(s.run, s.role) for s in store.latest_gpu_samples()} == {("", "")}
    assert {g["run"] for g in gpus_json(store.url)} == {""}


def test_a_samples_age_counts_from_when_the_store_received_it(store: Store) -> None:
    ingest(store, node_samples("node-a") + node_samples("node-b"))
    age_node(store, "node-a", 100)
    before = {r.sample.node: r.received_at for r in store.latest_gpu_readings()}
    ingest(store, node_samples("node-b"))  # node-a is silent; its idle state is still written
    after = {r.sample.node: r.received_at for r in store.latest_gpu_readings()}
    assert after["node-a"] == before["node-a"], "a silent node's samples do not get younger"
    assert after["node-b"] > before["node-b"]


def test_orch_gpus_shows_every_sample_age_marks_stale_nodes_and_drops_silent_ones(store: Store) -> None:
    ingest(store, node_samples("fresh") + node_samples("quiet") + node_samples("gone"))
    age_node(store, "quiet", 100)
    age_node(store, "gone", 1000)

    def gpus(*args: str, **env: str) -> list[dict[str, Any]]:
        result = CliRunner().invoke(
            main, ["gpus", "-o", "json", *args], env={"ORCH_DATABASE_URL": store.url, **env}
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    default = {(g["node"], g["stale"]) for g in gpus()}  # 30 s window, dropped after 300 s
    assert default == {("fresh", False), ("quiet", True)}
    by_env = {(g["node"], g["stale"]) for g in gpus(ORCH_GPU_STALE_SECONDS="200")}
    assert by_env == {("fresh", False), ("quiet", False), ("gone", True)}
    by_option = {(g["node"], g["stale"]) for g in gpus("--stale-seconds", "50", ORCH_GPU_STALE_SECONDS="1")}
    assert by_option == {("fresh", False), ("quiet", True)}
    for record in gpus():
        assert record["age_s"] >= (100 if record["node"] == "quiet" else 0)
        received = datetime.fromisoformat(record["received_at"])
        assert received.tzinfo is not None and abs(received.timestamp() - time.time()) < 3600
    table = CliRunner().invoke(main, ["gpus"], env={"ORCH_DATABASE_URL": store.url, "COLUMNS": "200"})
    assert "1m4" in table.output and "stale" in table.output and "silent for over 300s: gone" in table.output
    bad = CliRunner().invoke(
        main, ["gpus"], env={"ORCH_DATABASE_URL": store.url, "ORCH_GPU_STALE_SECONDS": "x"}
    )
    assert bad.exit_code == 2 and "--stale-seconds" in bad.output and "Traceback" not in bad.output


def test_the_agents_gauges_scrape_back_into_the_samples_they_came_from() -> None:
    from orchestrator.telemetry.exporter import GpuCollector
    from orchestrator.telemetry.scrape import parse_agent_metrics

    sample = GpuSample(
        node="n1", index=3, uuid="GPU-3", utilization_ratio=0.5, memory_utilization_ratio=0.25,
        memory_used_bytes=2**30, memory_total_bytes=2**36, power_watts=300.0, power_limit_watts=700.0,
        temperature_celsius=61.0, sm_clock_hertz=1.98e9, mig_enabled=True, pool="p", run="r", role="trainer",
    )  # fmt: skip
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: [sample]))
    (scraped,) = parse_agent_metrics(generate_latest(registry).decode(), at=5.0, period_s=1.0)
    assert scraped == replace(sample, at=5.0, period_s=1.0)

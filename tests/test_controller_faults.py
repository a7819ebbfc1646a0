"""One bad run never stops the controller: its errors are its events, and past its attempts it is Failed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.core.failures import count_failure, work_failed
from orchestrator.core.reconcile import decide
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import TransientError
from orchestrator.records import Phase, RunPatch
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import RunSpec, parse_spec
from orchestrator.state.store import Store
from tests.conftest import ROOT, spec_data, write_spec
from tests.test_reconcile import make_run, make_snapshot, placed, running, seen

KV_ERROR = "model leaves no room for KV cache on H100-80GB"


class FailingFor:
    """The simulated executor, except that one run's work raises ``error`` (``times`` times, or always)."""

    def __init__(self, inner: SimTrainer, run_id: str, error: Exception, times: int | None = None) -> None:
        self.inner, self.run_id, self.error, self.times = inner, run_id, error, times
        self.raised = 0

    def _check(self, run_id: str) -> None:
        if run_id == self.run_id and (self.times is None or self.raised < self.times):
            self.raised += 1
            raise self.error

    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        self._check(plan.run_id)
        return self.inner.execute_step(spec, plan)

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        self._check(plan.run_id)
        return self.inner.save_checkpoint(spec, plan)

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        self._check(plan.run_id)
        return self.inner.evaluate_problems(spec, plan)


def submit(store: Store, tmp_path: Path, name: str, **scheduling: object) -> str:
    data = spec_data()
    data["name"] = name
    data.setdefault("scheduling", {}).update(scheduling)
    return service.submit(store, service.validate(write_spec(tmp_path, data, f"{name}.yaml"))).id


@contextmanager
def guard(seconds: float = 180) -> Iterator[threading.Event]:
    """A stop event set after ``seconds``: a regression ends the loop instead of hanging the test run."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        yield stop
    finally:
        timer.cancel()


def all_final(store: Store) -> bool:
    return all(run.phase.terminal for run in store.list_runs())


def test_a_run_whose_work_raises_is_failed_after_max_attempts_and_the_other_run_succeeds(
    store: Store, tmp_path: Path
) -> None:
    bad = submit(store, tmp_path, "bad")
    good = submit(store, tmp_path, "good")
    cluster = SimCluster()
    executor = FailingFor(SimTrainer(cluster), bad, ValueError(KV_ERROR))
    controller = Controller(store, cluster, executor, identity="ctl")
    with guard() as stop:
        controller.run(until=lambda: all_final(store), stop=stop)

    failed = store.get_run(bad)
    assert failed.phase is Phase.FAILED
    assert f"ValueError: {KV_ERROR}" in failed.message and "max_attempts is 3" in failed.message
    assert failed.failures == executor.raised == 3 and failed.last_error == f"ValueError: {KV_ERROR}"
    events = store.events(bad)
    errors = [e for e in events if e.reason == "ReconcileError"]
    assert [e.data["failures"] for e in errors] == [1, 2, 3]
    assert all("\n" not in e.message and KV_ERROR in e.message for e in errors)
    assert events[-1].reason == "Failed"
    assert not [w for w in store.workloads(bad) if w.status.live], "a Failed run holds no GPU"
    assert store.get_run(good).phase is Phase.SUCCEEDED
    assert not [e for e in store.events(good) if e.reason == "ReconcileError"]


def test_max_attempts_is_the_runs_own_and_resume_clears_the_count(store: Store, tmp_path: Path) -> None:
    bad = submit(store, tmp_path, "bad", max_attempts=1)
    cluster = SimCluster()
    executor = FailingFor(SimTrainer(cluster), bad, RuntimeError("boom"), times=1)
    controller = Controller(store, cluster, executor, identity="ctl")
    with guard() as stop:
        controller.run(until=lambda: all_final(store), stop=stop)
    assert store.get_run(bad).phase is Phase.FAILED and executor.raised == 1

    resumed = service.resume_run(store, bad)
    assert resumed.phase is Phase.RESUMING and resumed.failures == 0
    with guard() as stop:
        controller.run(until=lambda: all_final(store), stop=stop)
    assert store.get_run(bad).phase is Phase.SUCCEEDED


def test_errors_of_the_environment_are_retried_and_never_count(store: Store, tmp_path: Path) -> None:
    class ApiServerDown(Exception):
        pass

    run_id = submit(store, tmp_path, "flaky")
    cluster = SimCluster()
    executor = FailingFor(SimTrainer(cluster), run_id, ApiServerDown("503 Service Unavailable"), times=5)
    controller = Controller(
        store, cluster, executor, identity="ctl", transient=lambda e: isinstance(e, ApiServerDown)
    )
    reports = [controller.reconcile_once() for _ in range(12)]
    assert executor.raised == 5, "the controller kept asking"
    assert sum(1 for r in reports if r.transient) == 5
    assert "503 Service Unavailable" in next(r.transient for r in reports if r.transient)
    run = store.get_run(run_id)
    assert run.failures == 0 and run.phase is not Phase.FAILED
    assert not [e for e in store.events(run_id) if e.reason == "ReconcileError"]

    executor.error, executor.times = TransientError("a TransientError is never the run's"), 10
    controller.reconcile_once()
    assert store.get_run(run_id).failures == 0


def test_a_run_whose_spec_no_longer_parses_fails_and_other_runs_go_on(store: Store, tmp_path: Path) -> None:
    broken = submit(store, tmp_path, "broken")
    good = submit(store, tmp_path, "good")
    with store._transaction() as session:  # a row written by an older orch, or by hand
        from orchestrator.state.models import RunRow

        row = session.get(RunRow, broken)
        row.spec = {**row.spec, "trainer": {"pool": "nowhere", "gpus": 8}}
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl")
    with guard() as stop:
        controller.run(until=lambda: all_final(store), stop=stop)
    assert store.get_run(broken).phase is Phase.FAILED
    assert "ValidationError" in store.get_run(broken).message
    assert store.get_run(good).phase is Phase.SUCCEEDED


# ---- the pure rule ------------------------------------------------------------------------------------


def test_failures_count_in_a_row_at_the_same_step_and_restart_further_on() -> None:
    run = make_run(phase=Phase.RUNNING, steps_done=4)
    assert count_failure(run).failures == 1 and count_failure(run).step == 5
    again = replace(run, failures=1, failed_step=5)
    assert count_failure(again).failures == 2
    redoing = replace(again, steps_done=3)  # a gang resumed from the checkpoint at step 3 fails again
    assert count_failure(redoing).failures == 2 and count_failure(redoing).step == 5
    further = replace(again, steps_done=5)
    assert count_failure(further).failures == 1 and count_failure(further).step == 6


def test_a_suspended_run_records_a_new_error_once_and_is_never_failed() -> None:
    run = make_run(phase=Phase.SUSPENDED)
    patch = work_failed(run, (), "OSError: disk full", 1)
    assert patch is not None and patch.run == {"last_error": "OSError: disk full"}
    assert work_failed(replace(run, last_error="OSError: disk full"), (), "OSError: disk full", 1) is None


def test_gang_failures_at_the_same_step_fail_the_run_after_max_attempts() -> None:
    spec = parse_spec({**spec_data(), "scheduling": {"max_attempts": 2}})
    first = make_run(phase=Phase.RUNNING, attempt=1, steps_done=3, spec=spec.model_dump(mode="json"))
    gang = running(placed(first))
    lost = replace(
        make_snapshot(first, workloads=gang, observed=seen(gang[1:]), last_checkpoint=2), spec=spec
    )
    patch = decide(lost).patch
    assert patch is not None and patch.run["phase"] == Phase.RESUMING.value
    assert patch.run["failures"] == 1 and patch.run["failed_step"] == 4

    # Attempt 2 resumed from step 2, redid step 3 and lost its gang at step 4 again.
    second = replace(first, attempt=2, failures=1, failed_step=4)
    gang = running(placed(second))
    lost = replace(
        make_snapshot(second, workloads=gang, observed=seen(gang[1:]), last_checkpoint=2), spec=spec
    )
    patch = decide(lost).patch
    assert patch is not None and patch.run["phase"] == Phase.FAILED.value
    assert "gang failed at attempt 2" in patch.run["message"] and "Lost" in patch.run["message"]
    assert [e.reason for e in patch.events] == ["GangFailed", "Failed"]
    assert len(patch.workloads) == len(gang) and not [w for w in patch.workloads if w.status.live]


def test_a_step_beyond_the_failing_one_clears_the_count() -> None:
    from orchestrator.core.results import record_step

    gang = running(placed(make_run()))
    run = make_run(phase=Phase.RUNNING, attempt=1, steps_done=3, failures=2, failed_step=4)
    snapshot = make_snapshot(run, workloads=gang, observed=seen(gang))
    plan = decide(snapshot).work
    assert isinstance(plan, StepPlan) and plan.step == 4
    outcome = StepOutcome(10, 100, 1.0, 1.0, 0.0, 0, 5, 1.0, 2.0)
    patch = record_step(snapshot, plan, outcome)
    assert patch is not None and "failures" not in patch.run, "step 4 is the failing step, not beyond it"
    beyond = replace(snapshot, run=replace(run, failed_step=3))
    patch = record_step(beyond, plan, outcome)
    assert patch is not None and patch.run["failures"] == 0


@pytest.mark.parametrize("value", [0, -1])
def test_max_attempts_below_one_is_refused(value: int) -> None:
    from orchestrator.errors import SpecError

    with pytest.raises(SpecError, match="max_attempts"):
        parse_spec({**spec_data(), "scheduling": {"max_attempts": value}})


def test_controller_exit_when_idle_counts_suspended_runs_as_idle(db_url: str, tmp_path: Path) -> None:
    store = Store(db_url)
    parked = submit(store, tmp_path, "parked")
    run = store.get_run(parked)
    store.apply(RunPatch(parked, run.version, run={"phase": Phase.SUSPENDED.value}))
    other = submit(store, tmp_path, "other")
    env = dict(os.environ, ORCH_DATABASE_URL=db_url, ORCH_BACKEND="sim", ORCH_SIM_FAULTS="")
    command = [sys.executable, str(ROOT / "cli.py"), "controller", "--exit-when-idle"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert store.get_run(other).phase is Phase.SUCCEEDED
    assert store.get_run(parked).phase is Phase.SUSPENDED, "left for `orch resume`"
    store.close()


def test_the_kube_backend_tells_api_server_and_network_errors_from_the_runs_own() -> None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError, ProtocolError

    from orchestrator.kube.cluster import transient_kube_error

    for status in (500, 502, 503, 504, 429):
        assert transient_kube_error(ApiException(status=status)), status
    for status in (400, 403, 404, 409, 422):
        assert not transient_kube_error(ApiException(status=status)), status
    assert transient_kube_error(ProtocolError("Connection aborted."))
    assert transient_kube_error(MaxRetryError(None, "/api/v1/pods", "refused"))
    assert transient_kube_error(ConnectionRefusedError(111, "Connection refused"))
    assert not transient_kube_error(ValueError("no room for KV cache"))

"""The trainer's side of the Kubernetes mailbox: a ``TrainerSession`` over ``ConfigMapTransport`` against
the controller's ``KubeExecutor``, both on the unmodified `kubernetes` client and the fake API server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.backends.base import WorkInProgress
from orchestrator.core.work import CheckpointPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.kube.cluster import KubeCluster
from orchestrator.kube.mailbox import KubeExecutor
from orchestrator.kube.objects import RUN_LABEL, control_name, owner_reference, pod_manifest, results_name
from orchestrator.kube.trainer_transport import ConfigMapTransport
from orchestrator.records import Workload, WorkloadStatus
from orchestrator.spec import RunSpec
from orchestrator.spec.files import load_spec
from orchestrator.worker.protocol import StepResultMessage
from orchestrator.worker.session import TrainerSession
from tests.kube_rig.api_server import ApiRequest, FakeKubeServer

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "orch"
RUN = "run-1"


def step(n: int, attempt: int = 1) -> StepPlan:
    return StepPlan(RUN, n, 0, attempt, 256, 4, checkpoint_after=False, checkpoint_uri="file:///tmp/c")


def outcome(n: int) -> StepOutcome:
    return StepOutcome(n, 10 * n, 1.0, 2.0, 0.0, 0, n, 3.0, 4.0)


@dataclass
class Rig:
    server: FakeKubeServer
    cluster: KubeCluster
    executor: KubeExecutor
    spec: RunSpec
    kubeconfig: Path

    def env(self, attempt: int = 1) -> dict[str, str]:
        """A trainer pod's environment as orch sets it, with the kubeconfig in place of in-cluster access."""
        pod = pod_manifest(trainer(attempt), NAMESPACE, "orch.dev/pool", {"uid": "u"})
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        return {**env, "KUBECONFIG": str(self.kubeconfig)}

    def session(self, attempt: int = 1) -> TrainerSession:
        session = TrainerSession.from_env(self.env(attempt))
        assert isinstance(session.transport, ConfigMapTransport)
        session.transport.refresh_s = 0.0
        return session

    def exchange(self, plan: StepPlan) -> StepOutcome:
        """The controller's side: ask until the result arrives (its informer lags a write a little)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.executor.execute_step(self.spec, plan)
            except WorkInProgress:
                assert time.monotonic() < deadline, f"no result for step {plan.step}"
                time.sleep(0.02)

    def post(self, plan: StepPlan) -> None:
        with pytest.raises(WorkInProgress):
            self.executor.execute_step(self.spec, plan)

    def results(self, attempt: int = 1) -> dict[str, str]:
        configmap = self.server.get_object("", "configmaps", NAMESPACE, results_name(RUN, attempt))
        return (configmap or {}).get("data") or {}


def trainer(attempt: int) -> Workload:
    return Workload(
        name=f"{RUN}-trainer-0-a{attempt}",
        run_id=RUN,
        role="trainer",
        attempt=attempt,
        index=0,
        pool="train",
        node="gpu-0",
        gpus=8,
        status=WorkloadStatus.PENDING,
        image="trainer:1",
        env={"ORCH_RUN_ID": RUN, "ORCH_ATTEMPT": str(attempt), "ORCH_ROLE": "trainer"},
    )


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    server = FakeKubeServer().start()
    cluster = KubeCluster(server.api_client(), NAMESPACE, watch_timeout_s=1)
    spec = load_spec(ROOT / "examples" / "quickstart.yaml")
    yield Rig(server, cluster, KubeExecutor(cluster), spec, server.write_kubeconfig(tmp_path / "kubeconfig"))
    cluster.close()
    server.stop()


def one_work(session: TrainerSession, plan: StepPlan) -> None:
    item = next(session.work(poll_s=0.02, idle_timeout_s=5))
    assert item.plan == plan
    item.complete(outcome(plan.step))


def test_the_trainer_takes_the_plan_the_controller_posted_and_the_controller_reads_its_result(
    rig: Rig,
) -> None:
    session = rig.session()
    for n in (1, 2):
        rig.post(step(n))
        one_work(session, step(n))
        assert rig.exchange(step(n)) == outcome(n)
    assert session.spec == rig.spec
    control = rig.server.get_object("", "configmaps", NAMESPACE, control_name(RUN))
    results = rig.server.get_object("", "configmaps", NAMESPACE, results_name(RUN, 1))
    assert results is not None and control is not None
    assert results["metadata"]["labels"] == {RUN_LABEL: RUN}
    assert results["metadata"]["ownerReferences"] == [owner_reference(control)]
    assert sorted(results["data"]) == ["step-1", "step-2"]


def test_completing_work_twice_returns_the_recorded_result_and_writes_nothing(rig: Rig) -> None:
    session = rig.session()
    rig.post(step(1))
    item = next(session.work(poll_s=0.02, idle_timeout_s=5))
    first = item.complete(outcome(1))
    rig.server.clear_requests()
    again = item.complete(outcome(7))
    assert again == first == StepResultMessage.from_outcome(outcome(1))
    assert not [r for r in rig.server.requests if r.verb in ("create", "update", "patch")]
    session.transport.put_result(1, "step-1", rig.results()["step-1"])  # the same text: a no-op
    assert not [r for r in rig.server.requests if r.verb in ("create", "update", "patch")]
    assert rig.exchange(step(1)) == outcome(1)


def interfere_once(
    server: FakeKubeServer, verb: str, name: str, change: Callable[[], None]
) -> list[ApiRequest]:
    """Before the first ``verb`` on configmap ``name`` is served, run ``change`` (another writer's write).
    A create names no object in its URL: ``name`` is then ``""``."""
    hit: list[ApiRequest] = []

    def hook(request: ApiRequest) -> None:
        if not hit and (request.verb, request.resource, request.name) == (verb, "configmaps", name):
            hit.append(request)
            change()

    server.before_serve.append(hook)
    return hit


def test_a_resource_version_conflict_on_the_results_is_survived_by_reading_again(rig: Rig) -> None:
    session = rig.session()
    rig.post(step(1))
    one_work(session, step(1))
    name = results_name(RUN, 1)
    # Between the trainer's read and its patch, someone else records a checkpoint's result.
    hit = interfere_once(
        rig.server,
        "patch",
        name,
        lambda: rig.server.update_object(
            "", "configmaps", NAMESPACE, name, lambda cm: cm["data"].update({"checkpoint-1": "{}"})
        ),
    )
    rig.post(step(2))
    rig.server.clear_requests()
    one_work(session, step(2))
    assert hit, "the conflict was never forced"
    patches = [r for r in rig.server.requests if r.verb == "patch" and r.name == name]
    assert len(patches) == 2  # the first got 409 Conflict, the second, after reading again, went through
    assert sorted(rig.results()) == ["checkpoint-1", "step-1", "step-2"]
    assert rig.exchange(step(2)) == outcome(2)


def test_a_results_configmap_created_meanwhile_is_patched_not_lost(rig: Rig) -> None:
    session = rig.session()
    rig.post(step(1))
    other = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": results_name(RUN, 1), "namespace": NAMESPACE, "labels": {RUN_LABEL: RUN}},
        "data": {"checkpoint-0": "{}"},
    }
    hit = interfere_once(rig.server, "create", "", lambda: rig.server.put_object(other))
    one_work(session, step(1))
    assert hit, "the race was never forced"
    assert sorted(rig.results()) == ["checkpoint-0", "step-1"]  # 409 AlreadyExists, read again, patched
    assert rig.exchange(step(1)) == outcome(1)


def wait_for_pod(cluster: KubeCluster, name: str) -> None:
    deadline = time.monotonic() + 10
    while not any(pod["metadata"]["name"] == name for pod in cluster.pods.items()):
        assert time.monotonic() < deadline, f"{name} never reached the informer"
        time.sleep(0.02)


def test_deleting_the_trainer_closes_its_attempt_and_ends_work_but_not_the_next_attempts(rig: Rig) -> None:
    rig.post(step(1))
    control = rig.cluster.ensure_control(RUN)
    pod = pod_manifest(trainer(1), NAMESPACE, "orch.dev/pool", owner_reference(control))
    rig.server.put_object(pod)
    wait_for_pod(rig.cluster, pod["metadata"]["name"])
    first, second = rig.session(1), rig.session(2)
    one_work(first, step(1))
    assert not first.transport.closed()

    assert rig.cluster.delete_workload(pod["metadata"]["name"])
    started = time.monotonic()
    assert list(first.work(poll_s=0.02, idle_timeout_s=10)) == []
    assert time.monotonic() - started < 5  # ended by ``closed``, not by the idle timeout
    assert not second.transport.closed()  # a new attempt of the run still takes work

    rig.server.delete_object("", "configmaps", NAMESPACE, control_name(RUN))
    assert second.transport.closed()  # the run's mailbox is gone: the run is over
    with pytest.raises(OrchError, match="control ConfigMap is gone"):
        second.transport.put_result(2, "checkpoint-3", "{}")


def test_a_trainer_pod_is_told_to_use_the_configmap_mailbox_and_a_bad_env_is_one_clear_line(
    rig: Rig,
) -> None:
    env = rig.env()
    assert (env["ORCH_MAILBOX"], env["ORCH_NAMESPACE"]) == ("configmap", NAMESPACE)
    with pytest.raises(OrchError, match="ORCH_ATTEMPT must be the attempt number"):
        TrainerSession.from_env({**env, "ORCH_ATTEMPT": "x"})
    with pytest.raises(OrchError, match="ORCH_MAILBOX='carrier-pigeon' names no transport"):
        TrainerSession.from_env({**env, "ORCH_MAILBOX": "carrier-pigeon"})
    with pytest.raises(ValueError, match="not a work key"):
        rig.session().transport.put_result(1, "../step-1", "{}")


def test_a_checkpoint_plan_round_trips_too(rig: Rig) -> None:
    session = rig.session()
    plan = CheckpointPlan(RUN, 4, 1, "file:///tmp/c/4")
    with pytest.raises(WorkInProgress):
        rig.executor.save_checkpoint(rig.spec, plan)
    item = next(session.work(poll_s=0.02, idle_timeout_s=5))
    assert item.plan == plan
    item.complete(12.5)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert rig.executor.save_checkpoint(rig.spec, plan) == 12.5
            break
        except WorkInProgress:
            assert time.monotonic() < deadline
            time.sleep(0.02)

"""The Kubernetes backend end to end: the unmodified `kubernetes` client against the fake API server."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from orchestrator import service
from orchestrator.backends.base import BackendParts
from orchestrator.controller import Controller
from orchestrator.errors import SpecError
from orchestrator.kube.backend import make_kube_backend
from orchestrator.kube.cluster import RACK_LABEL, ZONE_LABEL
from orchestrator.kube.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from orchestrator.kube.rbac import CONTROLLER_ACCOUNT, TRAINER_ACCOUNT, load_rbac_rules, rbac_allows
from orchestrator.records import Phase, Run
from orchestrator.spec import parse_spec
from orchestrator.spec.launch import engine_launch
from orchestrator.state.store import Store
from tests.conftest import spec_data, write_spec
from tests.kube_rig.api_server import FakeKubeServer
from tests.kube_rig.kubelet import FakeKubelet
from tests.kube_rig.trainer import ScriptedTrainer

NAMESPACE = "orch"
POOL = "orch.dev/pool"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass
class FakeCluster:
    server: FakeKubeServer
    kubelet: FakeKubelet
    trainer: ScriptedTrainer
    pods_seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    services_seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    configmaps_seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    configmaps_seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    backends: list[BackendParts] = field(default_factory=list)

    def node(self, name: str, pool: str = "node", gpus: int = 8) -> None:
        self.kubelet.add_node(name, gpus=gpus, labels={POOL: pool}, taints=[GPU_TAINT])

    def split_pool_nodes(self) -> None:
        """Two 8-GPU nodes in pool "train", one in pool "gen" (for ``split_pools_data``)."""
        for name in ("train-0", "train-1"):
            self.node(name, pool="train")
        self.node("gen-0", pool="gen")

    def backend(self, trainer_service_account: str = TRAINER_ACCOUNT) -> BackendParts:
        backend = make_kube_backend(
            self.server.api_client(user=CONTROLLER_ACCOUNT),
            namespace=NAMESPACE,
            pool_label=POOL,
            trainer_service_account=trainer_service_account,
            watch_timeout_s=1,
        )
        self.backends.append(backend)
        return backend

    def controller(
        self, store: Store, identity: str = "ctl-a", trainer_service_account: str = TRAINER_ACCOUNT
    ) -> tuple[Controller, BackendParts]:
        backend = self.backend(trainer_service_account)
        controller = Controller(
            store,
            backend.cluster,
            backend.executor,
            sources=backend.sources,
            identity=identity,
            lease_seconds=0.5,
        )
        return controller, backend

    def pod_creates(self) -> int:
        """POSTs of pods; the collection URL carries no name, so compare with the distinct pods seen."""
        return sum(1 for r in self.server.requests if r.verb == "create" and r.resource == "pods")


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    server = FakeKubeServer().start()
    trainer = ScriptedTrainer(NAMESPACE)
    kubelet = FakeKubelet(server, behaviors=[trainer])
    fake = FakeCluster(server, kubelet, trainer)

    def remember(server: FakeKubeServer) -> None:
        for plural, seen in (
            ("pods", fake.pods_seen),
            ("services", fake.services_seen),
            ("configmaps", fake.configmaps_seen),
        ):
            seen.update({obj["metadata"]["name"]: obj for obj in server.list_objects("", plural, NAMESPACE)})

    kubelet.behaviors.append(remember)
    kubelet.start()
    yield fake
    for backend in fake.backends:
        backend.close()
    kubelet.stop()
    trainer.close()
    server.stop()


def drive(
    controller: Controller,
    store: Store,
    run_id: str,
    until: Callable[[Run], bool] | None = None,
    timeout_s: float = 60,
) -> Run:
    """Run the controller until the run finishes (or ``until`` holds)."""
    deadline = time.monotonic() + timeout_s

    def done() -> bool:
        run = store.get_run(run_id)
        return run.phase.terminal or (until is not None and until(run)) or time.monotonic() > deadline

    controller.run(until=done, idle_wait_s=0.1)
    run = store.get_run(run_id)
    assert run.phase.terminal or (until is not None and until(run)), f"stuck: {run.phase} {run.message}"
    return run


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def split_pools_data() -> dict[str, Any]:
    """Trainer on two 8-GPU nodes of one pool, eight 1-GPU engines in another."""
    data = spec_data()
    data["pools"] = {"train": {"gpus": 16}, "gen": {"gpus": 8}}
    data["trainer"] = {"pool": "train", "gpus": 16}
    data["rollout"]["pool"] = "gen"
    return data


def split_pools_spec(tmp_path: Path) -> Path:
    return write_spec(tmp_path, split_pools_data())


def test_the_quickstart_completes_on_kubernetes(store: Store, cluster: FakeCluster, quickstart: Path) -> None:
    cluster.node("gpu-0")
    controller, _ = cluster.controller(store)
    run = service.submit(store, service.validate(quickstart))
    done = drive(controller, store, run.id)

    assert done.phase is Phase.SUCCEEDED
    assert [s.step for s in store.steps(run.id)] == list(range(1, 10))
    assert [c.step for c in store.checkpoints(run.id)] == [2, 4, 6, 8, 9]
    [trainer] = [p for name, p in cluster.pods_seen.items() if run.id in name]
    assert trainer["metadata"]["name"] == f"{run.id}-trainer-0-a1"
    container = trainer["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert container["image"] == "ghcr.io/orch-dev/trainer:0.1"
    assert trainer["spec"]["nodeSelector"] == {POOL: "node", "kubernetes.io/hostname": "gpu-0"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in trainer["spec"][
        "tolerations"
    ]
    env = env_of(trainer)
    assert (env["ORCH_RANK"], env["ORCH_WORLD_SIZE"], env["ORCH_RESUME_STEP"]) == ("0", "1", "0")
    assert env["ORCH_CHECKPOINT_URI"] == f"file:///tmp/orch-checkpoints/quickstart/{run.id}"
    labels = trainer["metadata"]["labels"]
    assert labels == {
        "orch.dev/run": run.id,
        "orch.dev/role": "trainer",
        "orch.dev/attempt": "1",
        "orch.dev/index": "0",
    }
    hosted = trainer["metadata"]["annotations"]["orch.dev/colocated-engines"].split(",")
    assert len(hosted) == 8, "colocated engines run inside the trainer pod, not as pods of their own"
    [owner] = trainer["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("ConfigMap", f"{run.id}-control")
    assert trainer["spec"]["serviceAccountName"] == "orch-trainer"
    assert trainer["spec"]["automountServiceAccountToken"] is True
    # The trainer took its work through the API as that account, and its results are owned by the run.
    assert {r.user for r in cluster.server.requests if r.name.startswith(run.id)} == {
        CONTROLLER_ACCOUNT,
        "orch-trainer",
    }
    results = cluster.configmaps_seen[f"{run.id}-a1-results"]
    assert [o["name"] for o in results["metadata"]["ownerReferences"]] == [f"{run.id}-control"]
    assert cluster.server.list_objects("", "pods", NAMESPACE) == [], "finished runs leave no pods"


def test_a_gang_across_nodes_and_separate_engines_get_the_right_pods(
    store: Store, cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.split_pool_nodes()
    controller, _ = cluster.controller(store)
    run = service.submit(store, service.validate(split_pools_spec(tmp_path)))
    assert drive(controller, store, run.id).phase is Phase.SUCCEEDED

    pods = {name: pod for name, pod in cluster.pods_seen.items() if name.startswith(run.id)}
    trainers = sorted(n for n in pods if "-trainer-" in n)
    engines = sorted(n for n in pods if "-engine-" in n)
    assert len(trainers) == 2 and len(engines) == 8
    assert {pods[n]["spec"]["nodeSelector"]["kubernetes.io/hostname"] for n in trainers} == {
        "train-0",
        "train-1",
    }
    assert [env_of(pods[n])["ORCH_RANK"] for n in trainers] == ["0", "1"]
    assert {env_of(pods[n])["ORCH_WORLD_SIZE"] for n in trainers} == {"2"}
    assert len({env_of(pods[n])["ORCH_MASTER_ADDR"] for n in trainers}) == 1
    assert {pods[n]["spec"]["serviceAccountName"] for n in trainers} == {"orch-trainer"}
    for name in engines:
        assert pods[name]["spec"]["automountServiceAccountToken"] is False, "engines never call the API"
        assert "serviceAccountName" not in pods[name]["spec"]
        assert pods[name]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        assert pods[name]["spec"]["nodeSelector"] == {POOL: "gen", "kubernetes.io/hostname": "gen-0"}
    service_name = f"{run.id}-a1"
    assert all(pods[n]["spec"]["subdomain"] == service_name for n in trainers)
    assert cluster.services_seen[service_name]["spec"]["clusterIP"] == "None"
    # Engines run the spec's engine launch, named through the run's engine Service in the trainers' env.
    spec = parse_spec(split_pools_data())
    launch = engine_launch(spec, 0, host="0.0.0.0", port=spec.rollout.engine.port)
    assert {tuple(pods[n]["spec"]["containers"][0]["command"]) for n in engines} == {launch.argv}
    engine_service = cluster.services_seen[f"{run.id}-engines"]
    assert all(pods[n]["spec"]["subdomain"] == f"{run.id}-engines" for n in engines)
    assert engine_service["spec"]["selector"].items() <= pods[engines[0]]["metadata"]["labels"].items()
    assert {env_of(pods[n])["ORCH_ENGINE_URLS"] for n in trainers} == {
        ",".join(f"http://{run.id}-engine-{i}-a1.{run.id}-engines.{NAMESPACE}.svc:8000" for i in range(8))
    }
    assert {tuple(pods[n]["spec"]["containers"][0]["command"]) for n in trainers} == {("orch", "worker")}
    assert cluster.server.list_objects("", "services", NAMESPACE) == [], "a finished run's objects are swept"
    assert cluster.server.list_objects("", "configmaps", NAMESPACE) == []


@pytest.mark.parametrize("shortage", ["a 7-GPU node", "a foreign pod holding one GPU"])
def test_a_pool_one_gpu_short_keeps_the_run_waiting_and_creates_no_pod(
    store: Store, cluster: FakeCluster, quickstart: Path, shortage: str
) -> None:
    if shortage == "a 7-GPU node":
        cluster.node("gpu-0", gpus=7)
    else:
        cluster.node("gpu-0")
        cluster.server.put_object(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "someone-else", "namespace": "default"},
                "spec": {
                    "nodeName": "gpu-0",
                    "containers": [
                        {"name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
                    ],
                },
                "status": {"phase": "Running"},
            }
        )
    controller, _ = cluster.controller(store)
    run = service.submit(store, service.validate(quickstart))
    for _ in range(5):
        controller.reconcile_once()
        time.sleep(0.05)

    waiting = store.get_run(run.id)
    assert waiting.phase is Phase.PENDING
    [event] = [e for e in store.events(run.id) if e.reason == "Unschedulable"]
    assert "no ready node has 8 GPUs for one member" in event.message or "7 GPUs free" in event.message
    assert cluster.pod_creates() == 0


def test_a_failed_member_tears_down_the_gang_and_recreates_it_from_the_last_checkpoint(
    store: Store, cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.split_pool_nodes()
    controller, _ = cluster.controller(store)
    run = service.submit(store, service.validate(split_pools_spec(tmp_path)))
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 3)
    cluster.kubelet.fail_pod(NAMESPACE, f"{run.id}-trainer-1-a1", reason="OOMKilled", exit_code=137)
    done = drive(controller, store, run.id)

    assert done.phase is Phase.SUCCEEDED and done.attempt == 2
    [failure] = [e for e in store.events(run.id) if e.reason == "GangFailed"]
    assert "OOMKilled" in failure.message
    resume = failure.data["resume_step"]
    assert resume == 2
    assert [s.step for s in store.steps(run.id)] == list(range(1, 10))
    assert min(s.step for s in store.steps(run.id) if s.attempt == 2) == resume + 1
    second = {n: p for n, p in cluster.pods_seen.items() if n.startswith(run.id) and n.endswith("-a2")}
    assert len(second) == 10
    assert {env_of(p)["ORCH_RESUME_STEP"] for n, p in second.items() if "-trainer-" in n} == {"2"}
    deleted = {r.name for r in cluster.server.requests if r.verb == "delete" and r.resource == "pods"}
    first = {n for n in cluster.pods_seen if n.startswith(run.id) and n.endswith("-a1")}
    assert first - {f"{run.id}-trainer-1-a1"} <= deleted, "no member of the failed gang is left running"
    assert cluster.pod_creates() == len([n for n in cluster.pods_seen if n.startswith(run.id)]) == 20


def test_a_restarted_controller_relists_and_creates_nothing_twice(
    store: Store, cluster: FakeCluster, quickstart: Path
) -> None:
    cluster.node("gpu-0")
    first, first_backend = cluster.controller(store, identity="ctl-1")
    run = service.submit(store, service.validate(quickstart))
    drive(first, store, run.id, until=lambda r: r.steps_done >= 4)
    first_backend.close()  # the controller process is gone; its pods keep running in the cluster
    time.sleep(0.6)  # its run leases expire

    second, _ = cluster.controller(store, identity="ctl-2")
    done = drive(second, store, run.id)
    assert done.phase is Phase.SUCCEEDED
    assert done.attempt == 1, "the gang survived the controller restart"
    assert cluster.pod_creates() == 1 and list(cluster.pods_seen) == [f"{run.id}-trainer-0-a1"]
    creates = Counter(
        (r.resource, r.name)
        for r in cluster.server.requests
        if r.verb == "create" and r.user == CONTROLLER_ACCOUNT
    )
    assert creates == Counter({("pods", ""): 1, ("services", ""): 1, ("configmaps", ""): 1})
    assert [s.step for s in store.steps(run.id)] == list(range(1, 10))


def test_a_stale_watch_gets_410_and_recovers_by_listing_again(
    store: Store, cluster: FakeCluster, quickstart: Path
) -> None:
    cluster.node("gpu-0")
    controller, backend = cluster.controller(store)
    run = service.submit(store, service.validate(quickstart))
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 2)
    cluster.server.compact()
    informer = backend.cluster.pods
    deadline = time.monotonic() + 10
    while informer.relists == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert informer.relists >= 1
    assert drive(controller, store, run.id).phase is Phase.SUCCEEDED


def training_run(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


def test_a_training_run_applied_through_the_api_becomes_a_sql_run_with_status_written_back(
    store: Store, cluster: FakeCluster
) -> None:
    cluster.node("gpu-0")
    api = client.CustomObjectsApi(cluster.server.api_client())
    created = api.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, training_run("math", spec_data())
    )
    controller, _ = cluster.controller(store)
    controller.reconcile_once()
    [run] = store.list_runs()
    assert run.external_ref == f"{NAMESPACE}/math/{created['metadata']['uid']}"
    done = drive(controller, store, run.id)
    controller.reconcile_once()  # publish the final state

    status = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "math")["status"]
    assert (status["runId"], status["phase"], status["step"], status["stage"]) == (done.id, "Succeeded", 9, 3)
    control = cluster.configmaps_seen[f"{run.id}-control"]
    assert control["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    controller.reconcile_once()
    assert len(store.list_runs()) == 1, "a restart or a later pass never mirrors the same object twice"


def test_an_invalid_training_run_is_marked_and_not_run(store: Store, cluster: FakeCluster) -> None:
    api = client.CustomObjectsApi(cluster.server.api_client())
    bad = spec_data()
    bad["trainer"]["gpus"] = 0
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, training_run("bad", bad))
    controller, _ = cluster.controller(store)
    controller.reconcile_once()
    time.sleep(0.2)
    status = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "bad")["status"]
    assert status["phase"] == "Invalid" and "trainer.gpus" in status["message"]
    assert store.list_runs() == []


def test_a_training_run_naming_a_queue_nobody_applied_is_marked_and_not_run(
    store: Store, cluster: FakeCluster
) -> None:
    api = client.CustomObjectsApi(cluster.server.api_client())
    data = spec_data()
    data["scheduling"] = {"queue": "team-x"}
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, training_run("queued", data))
    controller, _ = cluster.controller(store)
    controller.reconcile_once()
    time.sleep(0.2)
    status = api.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "queued")["status"]
    assert status["phase"] == "Invalid" and "scheduling.queue: unknown queue 'team-x'" in status["message"]
    assert store.list_runs() == []


def test_nodes_carry_their_zone_and_rack_labels_to_placement(store: Store, cluster: FakeCluster) -> None:
    cluster.kubelet.add_node(
        "gpu-0",
        gpus=8,
        labels={POOL: "node", ZONE_LABEL: "eu-1a", RACK_LABEL: "r7"},
        taints=[GPU_TAINT],
    )
    cluster.node("gpu-1")
    backend = cluster.backend()
    deadline = time.monotonic() + 5
    while len(backend.cluster.list_nodes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    views = {view.name: (view.zone, view.rack) for view in backend.cluster.list_nodes()}
    assert views == {"gpu-0": ("eu-1a", "r7"), "gpu-1": ("", "")}


def test_deleting_a_training_run_cancels_its_run_and_its_pods_go(store: Store, cluster: FakeCluster) -> None:
    cluster.node("gpu-0")
    api = client.CustomObjectsApi(cluster.server.api_client())
    api.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, training_run("m", spec_data()))
    controller, _ = cluster.controller(store)
    controller.reconcile_once()
    [run] = store.list_runs()
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 1)
    api.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "m")
    drive(controller, store, run.id)

    assert store.get_run(run.id).phase is Phase.CANCELLED
    deadline = time.monotonic() + 5
    while cluster.server.list_objects("", "pods", NAMESPACE) and time.monotonic() < deadline:
        controller.reconcile_once()
        time.sleep(0.05)
    assert cluster.server.list_objects("", "pods", NAMESPACE) == []
    assert cluster.server.get_object("", "configmaps", NAMESPACE, f"{run.id}-control") is None, "owner GC"


def test_rbac_covers_every_call_the_backend_and_the_trainers_make_and_grants_nothing_unused(
    store: Store, cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.split_pool_nodes()
    data = split_pools_data()
    # Test-side objects go in without HTTP, so every logged request is the controller's or a trainer's,
    # each calling as its ServiceAccount (the fake records the bearer token as the caller).
    cluster.server.put_object(training_run("math", data))
    cluster.server.put_object(training_run("bad", {**data, "image": ""}))
    controller, _ = cluster.controller(store, identity="ctl-1")
    controller.reconcile_once()
    run = next(r for r in store.list_runs() if r.external_ref and "/math/" in r.external_ref)
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 3)
    cluster.kubelet.fail_pod(NAMESPACE, f"{run.id}-trainer-0-a1", reason="OOMKilled", exit_code=137)
    drive(controller, store, run.id, until=lambda r: r.attempt == 2 and r.steps_done >= 5)
    cluster.server.compact()
    drive(controller, store, run.id)
    controller.reconcile_once()
    assert store.get_run(run.id).phase is Phase.SUCCEEDED

    requests = cluster.server.requests
    assert {r.user for r in requests} == {CONTROLLER_ACCOUNT, TRAINER_ACCOUNT}
    manifests = Path(__file__).resolve().parents[1] / "manifests" / "base"
    for account in (CONTROLLER_ACCOUNT, TRAINER_ACCOUNT):
        rules = load_rbac_rules(manifests, account=account)
        mine = [r for r in requests if r.user == account]
        for r in mine:
            allowed = rbac_allows(
                rules["cluster"], r.verb, r.group, r.resource, r.subresource, name=r.name
            ) or (
                r.namespace != ""
                and rbac_allows(rules["namespace"], r.verb, r.group, r.resource, r.subresource, name=r.name)
            )
            assert allowed, f"RBAC forbids {account}: {r.verb} {r.group or 'core'}/{r.resource} {r.name}"
        calls = {(r.verb, r.group, r.resource, r.subresource, r.namespace != "") for r in mine}
        for scope, scoped_rules in rules.items():
            for rule in scoped_rules:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        name, _, sub = resource.partition("/")
                        for verb in rule["verbs"]:
                            used = any(
                                (v, g, r, s) == (verb, group, name, sub)
                                and (namespaced or scope == "cluster")
                                for v, g, r, s, namespaced in calls
                            )
                            assert used, f"{account}: {scope} rule grants {verb} {group or 'core'}/{resource}"
    trainer_calls = {(r.verb, r.name.removeprefix(run.id)) for r in requests if r.user == TRAINER_ACCOUNT}
    # Both attempts' trainers read the control ConfigMap and created, read and patched their results.
    assert trainer_calls == {
        ("get", "-control"),
        ("create", ""),
        *{(verb, f"-a{attempt}-results") for verb in ("get", "patch") for attempt in (1, 2)},
    }


def test_trainer_pods_run_as_the_account_the_controller_is_given(
    store: Store, cluster: FakeCluster, quickstart: Path
) -> None:
    cluster.node("gpu-0")
    controller, _ = cluster.controller(store, trainer_service_account="team-a-trainer")
    run = service.submit(store, service.validate(quickstart))
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 1)
    assert cluster.pods_seen[f"{run.id}-trainer-0-a1"]["spec"]["serviceAccountName"] == "team-a-trainer"
    assert "team-a-trainer" in {r.user for r in cluster.server.requests}


@pytest.mark.parametrize("name", ["", "Orch_Trainer", "a" * 254])
def test_a_bad_trainer_service_account_is_refused_naming_the_setting(cluster: FakeCluster, name: str) -> None:
    with pytest.raises(SpecError, match="ORCH_TRAINER_SERVICE_ACCOUNT"):
        cluster.backend(trainer_service_account=name)


FAILURES: dict[str, Callable[[FakeKubelet, str], None]] = {
    "OOMKilled": lambda kubelet, pod: kubelet.fail_pod(NAMESPACE, pod, reason="OOMKilled", exit_code=137),
    "Evicted": lambda kubelet, pod: kubelet.evict_pod(NAMESPACE, pod),
    "NodeLost": lambda kubelet, pod: kubelet.lose_node("gpu-0"),
    "ImagePullBackOff": lambda kubelet, pod: kubelet.image_pull_backoff(NAMESPACE, pod),
}


@pytest.mark.parametrize("reason", list(FAILURES))
def test_pod_failures_become_run_events_with_their_reason(
    store: Store, cluster: FakeCluster, quickstart: Path, reason: str
) -> None:
    cluster.node("gpu-0")
    cluster.node("gpu-1")
    controller, _ = cluster.controller(store)
    run = service.submit(store, service.validate(quickstart))
    drive(controller, store, run.id, until=lambda r: r.steps_done >= 1)
    FAILURES[reason](cluster.kubelet, f"{run.id}-trainer-0-a1")
    done = drive(controller, store, run.id)

    [failure] = [e for e in store.events(run.id) if e.reason == "GangFailed"]
    assert reason in failure.message
    assert done.phase is Phase.SUCCEEDED and done.attempt == 2


def test_orch_controller_runs_the_kube_backend_from_a_kubeconfig(
    db_url: str, cluster: FakeCluster, quickstart: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from cli import main

    cluster.node("gpu-0")
    kubeconfig = cluster.server.write_kubeconfig(tmp_path / "kubeconfig")
    env = {"ORCH_DATABASE_URL": db_url, "KUBECONFIG": str(kubeconfig), "ORCH_BACKEND": "kube"}
    runner = CliRunner()
    assert runner.invoke(main, ["submit", str(quickstart)], env=env).exit_code == 0
    result = runner.invoke(main, ["controller", "--once"], env=env)
    assert result.exit_code == 0, result.output
    store = Store(db_url)
    [run] = store.list_runs()
    assert store.get_run(run.id).phase is Phase.ADMITTED
    assert cluster.pod_creates() == 1
    store.close()


def test_a_missing_kubeconfig_is_one_clear_line(db_url: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    env = {"ORCH_DATABASE_URL": db_url, "KUBECONFIG": str(tmp_path / "missing"), "ORCH_BACKEND": "kube"}
    result = CliRunner().invoke(main, ["controller", "--once"], env=env)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: kubernetes: cannot load")


def test_orch_list_and_the_trainingrun_status_show_one_projection_of_a_run() -> None:
    from dataclasses import replace

    from orchestrator.core.lifecycle import initial_run
    from orchestrator.kube.training_runs import run_status
    from orchestrator.render.runs import run_row
    from orchestrator.spec import parse_spec

    run = replace(
        initial_run(parse_spec(spec_data()), "qs-1", 0.0).run,
        phase=Phase.RUNNING, stage_index=1, steps_done=7, attempt=2, message="training",
    )  # fmt: skip
    shown = {"phase": "Running", "stage": 2, "step": 7, "attempt": 2, "message": "training"}
    assert run_status(run, 3) == {"runId": "qs-1", **shown, "observedGeneration": 3}
    row = run_row(run, time.time())
    assert row["id"] == "qs-1" and {key: row[key] for key in shown} == shown

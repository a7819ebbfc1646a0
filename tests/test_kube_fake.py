"""FakeKubeServer and FakeKubelet, exercised through the unmodified `kubernetes` client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from orchestrator.kube.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tests.kube_rig.api_server import ApiRequest, FakeKubeServer
from tests.kube_rig.kubelet import FakeKubelet, Taint

NS = "orch"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 1.0
    while (leaked := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leaked, f"leaked threads: {leaked}"


@pytest.fixture
def server() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as fake:
        yield fake


@pytest.fixture
def api(server: FakeKubeServer) -> Iterator[client.ApiClient]:
    api_client = server.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def kubelet(server: FakeKubeServer) -> Iterator[FakeKubelet]:
    fake = FakeKubelet(server)
    yield fake
    fake.stop()


# ---------------------------------------------------------------------------------------------- builders


def pod(
    name: str,
    *,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict] | None = None,
    owner: dict | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "trainer:1"}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    spec: dict[str, Any] = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def run(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec or {"gpus": 8},
    }


def owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def config_map(name: str, owner: dict | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"metadata": meta, "data": {"k": "v"}}


def status_of(error: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    body = json.loads(error.value.body)
    return error.value.status, body["reason"]


# ---------------------------------------------------------------------------------------------- CRUD


def test_create_get_and_list_with_label_and_field_selectors(
    core: client.CoreV1Api, server: FakeKubeServer
) -> None:
    for name, labels in [
        ("a", {"role": "trainer", "run": "r1"}),
        ("b", {"role": "rollout", "run": "r1"}),
        ("c", {"role": "rollout"}),
    ]:
        created = core.create_namespaced_pod(NS, pod(name, labels=labels))
        assert created.metadata.uid and created.metadata.namespace == NS
    core.create_namespaced_pod("other", pod("a", labels={"role": "trainer"}))
    got = core.read_namespaced_pod("a", NS)
    assert got.kind == "Pod" and got.api_version == "v1" and got.status.phase == "Pending"
    assert got.metadata.creation_timestamp is not None and got.metadata.generation == 1

    def names(**kwargs: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod(NS, **kwargs).items]

    assert names() == ["a", "b", "c"]
    assert names(label_selector="role=trainer") == ["a"]
    assert names(label_selector="role==rollout,run") == ["b"]
    assert names(label_selector="role!=trainer") == ["b", "c"]
    assert names(label_selector="!run") == ["c"]
    assert names(label_selector="role in (trainer, rollout),run notin (r2)") == ["a", "b", "c"]  # c: no run
    assert names(label_selector="run in (r1),role notin (trainer)") == ["b"]
    assert names(field_selector="metadata.name!=b") == ["a", "c"]
    pods = core.list_pod_for_all_namespaces(label_selector="role=trainer")
    assert [(p.metadata.namespace, p.metadata.name) for p in pods.items] == [("orch", "a"), ("other", "a")]
    assert pods.metadata.resource_version == server.resource_version
    server.update_object("", "pods", NS, "a", lambda p: p["status"].update(phase="Running"))
    server.update_object("", "pods", NS, "a", lambda p: p["spec"].update(nodeName="gpu-1"))
    assert names(field_selector="status.phase=Running,spec.nodeName=gpu-1") == ["a"]
    assert names(field_selector="metadata.namespace=orch,status.phase==Pending") == ["b", "c"]


def test_bad_selectors_are_400(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as error:
        core.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert status_of(error) == (400, "BadRequest")
    with pytest.raises(ApiException) as error:
        core.list_namespaced_pod(NS, label_selector="a in b")
    assert error.value.status == 400


def test_duplicate_create_is_409_already_exists(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespaced_pod(NS, pod("dup"))
    with pytest.raises(ApiException) as error:
        core.create_namespaced_pod(NS, pod("dup"))
    assert status_of(error) == (409, "AlreadyExists")
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r1"))
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r1"))
    assert status_of(error) == (409, "AlreadyExists")
    assert json.loads(error.value.body)["message"] == 'trainingruns.orch.dev "r1" already exists'


def test_generate_name_and_invalid_names(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "run-"}})
    assert made.metadata.name.startswith("run-") and len(made.metadata.name) == len("run-") + 5
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(NS, {"metadata": {}})
    assert status_of(error) == (422, "Invalid")
    with pytest.raises(ApiException) as error:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Run_1"}})
    assert status_of(error) == (422, "Invalid")


def test_stale_put_is_409_conflict(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map(NS, config_map("cm"))
    first.data = {"k": "v2"}
    second = core.replace_namespaced_config_map("cm", NS, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"k": "stale"}
    with pytest.raises(ApiException) as error:
        core.replace_namespaced_config_map("cm", NS, first)
    assert status_of(error) == (409, "Conflict")
    assert "the object has been modified" in error.value.body
    second.metadata.resource_version = None
    assert core.replace_namespaced_config_map("cm", NS, second).data == {"k": "v2"}


def test_missing_objects_are_404(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    for call in (
        lambda: core.read_namespaced_pod("nope", NS),
        lambda: core.delete_namespaced_pod("nope", NS),
        lambda: core.patch_namespaced_pod("nope", NS, {"metadata": {"labels": {"a": "b"}}}),
        lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nope"),
        lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "nope"),
    ):
        with pytest.raises(ApiException) as error:
            call()
        assert status_of(error) == (404, "NotFound")


def test_delete_returns_the_object_or_a_status(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespaced_pod(NS, pod("p"))
    core.create_namespaced_config_map(NS, config_map("cm"))
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r"))
    assert core.delete_namespaced_pod("p", NS).metadata.name == "p"
    assert core.delete_namespaced_config_map("cm", NS)["status"] == "Success"
    assert custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r")["metadata"]["name"] == "r"
    assert core.list_namespaced_pod(NS).items == []


def test_merge_patch_and_json_patch(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    core.create_namespaced_pod(NS, pod("p", labels={"a": "1", "b": "2"}))
    merged = core.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"a": None, "c": "3"}}})
    assert merged.metadata.labels == {"b": "2", "c": "3"}
    patched = core.patch_namespaced_pod(
        "p",
        NS,
        [
            {"op": "add", "path": "/metadata/labels/d", "value": "4"},
            {"op": "replace", "path": "/metadata/labels/b", "value": "two"},
            {"op": "remove", "path": "/metadata/labels/c"},
        ],
    )
    assert patched.metadata.labels == {"b": "two", "d": "4"}
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r", gpus=8, stage="warmup"))
    out = custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r", {"spec": {"stage": None}})
    assert out["spec"] == {"gpus": 8}
    out = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "r",
        [{"op": "replace", "path": "/spec/gpus", "value": 16}],
        _content_type="application/json-patch+json",
    )
    assert out["spec"] == {"gpus": 16} and out["metadata"]["generation"] == 3
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            "r",
            [{"op": "replace", "path": "/spec/missing", "value": 1}],
            _content_type="application/json-patch+json",
        )
    assert error.value.status == 422


def test_trainingrun_status_subresource_is_isolated(custom: client.CustomObjectsApi) -> None:
    body = run("r", gpus=8)
    body["status"] = {"phase": "Bogus"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)
    assert "status" not in created and created["metadata"]["generation"] == 1
    args = (GROUP, VERSION, NS, PLURAL, "r")
    both = {"status": {"phase": "Running"}, "spec": {"gpus": 1}}
    out = custom.patch_namespaced_custom_object_status(*args, both)
    assert out["status"] == {"phase": "Running"} and out["spec"] == {"gpus": 8}
    assert out["metadata"]["generation"] == 1
    out = custom.patch_namespaced_custom_object(*args, {"spec": {"gpus": 16}, "status": {"phase": "Hacked"}})
    assert out["status"] == {"phase": "Running"} and out["spec"] == {"gpus": 16}
    assert out["metadata"]["generation"] == 2
    out["status"] = {"phase": "Succeeded"}
    replaced = custom.replace_namespaced_custom_object_status(*args, out)
    assert replaced["status"] == {"phase": "Succeeded"} and replaced["metadata"]["generation"] == 2
    replaced["status"] = {"phase": "Ignored"}
    replaced["spec"]["gpus"] = 4
    again = custom.replace_namespaced_custom_object(*args, replaced)
    assert again["status"] == {"phase": "Succeeded"} and again["metadata"]["generation"] == 3
    with pytest.raises(ApiException) as error:
        custom.replace_namespaced_custom_object_status(*args, replaced)  # replaced's RV is stale now
    assert error.value.status == 409


def test_no_op_update_keeps_the_resource_version(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, config_map("cm"))
    same = core.patch_namespaced_config_map("cm", NS, {"data": {"k": "v"}})
    assert same.metadata.resource_version == created.metadata.resource_version


def test_deleting_an_owner_collects_its_dependents_recursively(
    core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r"))
    trainer = core.create_namespaced_pod(NS, pod("r-trainer-0", owner=owner_ref(owner)))
    grandchild_owner = {"apiVersion": "v1", "kind": "Pod", "name": "r-trainer-0", "uid": trainer.metadata.uid}
    core.create_namespaced_config_map(NS, config_map("r-trainer-0-env", owner=grandchild_owner))
    core.create_namespaced_config_map(NS, config_map("unrelated"))
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "r")
    assert core.list_namespaced_pod(NS).items == []
    assert [cm.metadata.name for cm in core.list_namespaced_config_map(NS).items] == ["unrelated"]


def test_orphan_propagation_and_finalizers(core: client.CoreV1Api, server: FakeKubeServer) -> None:
    owner = core.create_namespaced_config_map(NS, config_map("owner"))
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(NS, config_map("kept", owner=ref))
    core.delete_namespaced_config_map("owner", NS, propagation_policy="Orphan")
    assert core.read_namespaced_config_map("kept", NS).metadata.owner_references is None
    core.create_namespaced_config_map(NS, {"metadata": {"name": "held", "finalizers": ["orch.dev/cleanup"]}})
    core.delete_namespaced_config_map("held", NS)
    assert core.read_namespaced_config_map("held", NS).metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("held", NS, {"metadata": {"finalizers": None}})
    assert server.get_object("", "configmaps", NS, "held") is None


def test_deleting_a_namespace_or_a_collection_deletes_its_objects(
    core: client.CoreV1Api, server: FakeKubeServer
) -> None:
    core.create_namespace({"metadata": {"name": "doomed"}})
    core.create_namespaced_pod("doomed", pod("p"))
    core.create_namespaced_pod(NS, pod("keep", labels={"k": "1"}))
    core.create_namespaced_pod(NS, pod("drop", labels={"k": "2"}))
    core.delete_namespace("doomed")
    core.delete_collection_namespaced_pod(NS, label_selector="k=2")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in server.list_objects("", "pods")] == [
        (NS, "keep")
    ]


# ---------------------------------------------------------------------------------------------- watch


def test_watch_replays_from_a_resource_version_then_streams_live(core: client.CoreV1Api) -> None:
    start = core.create_namespaced_config_map(NS, config_map("a")).metadata.resource_version
    core.create_namespaced_config_map(NS, config_map("b"))
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "v2"}})
    core.create_namespaced_config_map("elsewhere", config_map("x"))
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, NS, resource_version=start, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:  # history replayed; now a live change on another connection
            core.delete_namespaced_config_map("b", NS)
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert int(w.resource_version) > int(start)


def test_watch_without_resource_version_starts_with_current_objects(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("a"))
    w = watch.Watch()
    events = []
    for event in w.stream(core.list_namespaced_config_map, NS, timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name))
        if len(events) == 1:
            core.create_namespaced_config_map(NS, config_map("b"))
        else:
            w.stop()
    assert events == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_with_a_selector_sees_objects_enter_and_leave(core: client.CoreV1Api) -> None:
    start = core.create_namespaced_pod(NS, pod("p", labels={"run": "r1"})).metadata.resource_version
    core.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"run": "r2"}}})
    core.patch_namespaced_pod("p", NS, {"metadata": {"labels": {"run": "r1"}}})
    w, events = watch.Watch(), []
    for event in w.stream(
        core.list_namespaced_pod, NS, label_selector="run=r1", resource_version=start, timeout_seconds=5
    ):
        events.append(event["type"])
        if len(events) == 2:
            w.stop()
    assert events == ["DELETED", "ADDED"]


def test_custom_object_watch_yields_dicts_and_bookmarks(
    custom: client.CustomObjectsApi, server: FakeKubeServer
) -> None:
    server.bookmark_interval = 0.05
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r"))
    w = watch.Watch()
    types = []
    for event in w.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        types.append(event["type"])
        if event["type"] == "ADDED":
            assert event["object"]["metadata"]["name"] == "r"
        else:
            w.stop()
    assert types == ["ADDED", "BOOKMARK"]
    assert w.resource_version == server.resource_version


def test_watch_from_a_compacted_resource_version_raises_410(
    core: client.CoreV1Api, server: FakeKubeServer
) -> None:
    old = core.create_namespaced_config_map(NS, config_map("a")).metadata.resource_version
    core.create_namespaced_config_map(NS, config_map("b"))
    server.compact()
    server.clear_requests()
    # With timeout_seconds, Watch.stream disables retries: the first ERROR event is raised.
    with pytest.raises(ApiException) as error:
        list(
            watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=old, timeout_seconds=5)
        )
    assert error.value.status == 410
    assert error.value.reason == f"Expired: too old resource version: {old} ({server.resource_version})"
    assert [r.verb for r in server.requests] == ["watch"]
    # Without it, Watch retries once from the same resourceVersion, then raises.
    server.clear_requests()
    with pytest.raises(ApiException) as error:
        list(watch.Watch().stream(core.list_namespaced_config_map, NS, resource_version=old))
    assert error.value.status == 410
    assert [r.verb for r in server.requests] == ["watch", "watch"]


def test_watch_older_than_retained_history_gets_410() -> None:
    with FakeKubeServer(history=3) as fake:
        api = fake.api_client()
        core = client.CoreV1Api(api)
        for name in "abcde":
            core.create_namespaced_config_map(NS, config_map(name))
        with pytest.raises(ApiException) as error:
            list(
                watch.Watch().stream(
                    core.list_namespaced_config_map, NS, resource_version="1", timeout_seconds=5
                )
            )
        assert error.value.status == 410
        w, names = watch.Watch(), []
        for event in w.stream(core.list_namespaced_config_map, NS, resource_version="2", timeout_seconds=5):
            names.append(event["object"].metadata.name)
            if len(names) == 3:
                w.stop()
        assert names == ["c", "d", "e"]
        api.close()


def test_stop_returns_promptly_with_an_open_watch() -> None:
    fake = FakeKubeServer().start()
    api = fake.api_client()
    core = client.CoreV1Api(api)
    opened = threading.Event()
    outcome: list[object] = []

    def watch_forever() -> None:
        try:
            for event in watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=600):
                outcome.append(event["type"])
                opened.set()
        except Exception as error:  # pragma: no cover - reported through outcome
            outcome.append(error)

    fake.put_object(pod("p") | {"metadata": {"name": "p", "namespace": NS}})
    watcher = threading.Thread(target=watch_forever)
    watcher.start()
    assert opened.wait(5)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    watcher.join(5)
    assert not watcher.is_alive() and outcome == ["ADDED"]
    api.close()


# ---------------------------------------------------------------------------------------------- wiring


def test_discovery_and_kubeconfig(server: FakeKubeServer, tmp_path: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(server.write_kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration
    )
    assert configuration.host == server.url
    with client.ApiClient(configuration) as api:
        assert client.VersionApi(api).get_code().git_version.startswith("v1.")
        core_resources = {r.name for r in client.CoreV1Api(api).get_api_resources().resources}
        expected = {"pods", "pods/status", "nodes", "services", "configmaps", "events", "namespaces"}
        assert expected <= core_resources
        groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
        assert {GROUP, "coordination.k8s.io"} <= groups
        crs = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION).resources
        assert [r.name for r in crs] == [PLURAL, f"{PLURAL}/status"]
        lease = client.CoordinationV1Api(api).create_namespaced_lease(
            NS, {"metadata": {"name": "orch-controller"}, "spec": {"holderIdentity": "me"}}
        )
        assert lease.spec.holder_identity == "me"


def test_request_log_records_rbac_verbs(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, server: FakeKubeServer
) -> None:
    server.clear_requests()
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, run("r"))
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "r", {"status": {"phase": "A"}})
    core.create_namespaced_pod(NS, pod("p"))
    core.read_namespaced_pod("p", NS)
    core.list_namespaced_pod(NS)
    core.replace_namespaced_pod_status("p", NS, core.read_namespaced_pod("p", NS))
    core.list_node()
    w = watch.Watch()
    for _ in w.stream(core.list_pod_for_all_namespaces, timeout_seconds=5):
        w.stop()
    core.delete_namespaced_pod("p", NS)
    assert server.requests == [
        ApiRequest("create", GROUP, PLURAL, "", NS, ""),
        ApiRequest("patch", GROUP, PLURAL, "status", NS, "r"),
        ApiRequest("create", "", "pods", "", NS, ""),
        ApiRequest("get", "", "pods", "", NS, "p"),
        ApiRequest("list", "", "pods", "", NS, ""),
        ApiRequest("get", "", "pods", "", NS, "p"),
        ApiRequest("update", "", "pods", "status", NS, "p"),
        ApiRequest("list", "", "nodes", "", "", ""),
        ApiRequest("watch", "", "pods", "", "", ""),
        ApiRequest("delete", "", "pods", "", NS, "p"),
    ]


# ---------------------------------------------------------------------------------------------- kubelet


def test_kubelet_schedules_gpu_pods_and_accounts_for_used_gpus(
    core: client.CoreV1Api, kubelet: FakeKubelet
) -> None:
    kubelet.add_node("gpu-1", gpus=8, labels={"pool": "h100"})
    for name in ("t0", "t1", "t2"):
        core.create_namespaced_pod(NS, pod(name, gpus=4))
    kubelet.tick()
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(NS).items}
    for name in ("t0", "t1"):
        assert pods[name].spec.node_name == "gpu-1" and pods[name].status.phase == "Running"
        assert pods[name].status.pod_ip and pods[name].status.container_statuses[0].state.running
        assert {c.type: c.status for c in pods[name].status.conditions}["Ready"] == "True"
    assert pods["t2"].status.phase == "Pending" and pods["t2"].spec.node_name is None
    kubelet.fail_pod(NS, "t0", reason="OOMKilled", exit_code=137)
    kubelet.tick()
    assert core.read_namespaced_pod("t2", NS).spec.node_name == "gpu-1"
    node = core.read_node("gpu-1")
    assert node.status.allocatable["nvidia.com/gpu"] == "8" and node.metadata.labels["pool"] == "h100"
    assert node.metadata.labels["kubernetes.io/hostname"] == "gpu-1"


def test_a_pod_too_big_for_any_node_stays_unschedulable(
    core: client.CoreV1Api, kubelet: FakeKubelet, server: FakeKubeServer
) -> None:
    kubelet.add_node("gpu-1", gpus=8)
    kubelet.add_node("cpu-1", gpus=0, labels={"pool": "cpu"})
    core.create_namespaced_pod(NS, pod("big", gpus=16))
    kubelet.tick()
    rv = server.resource_version
    kubelet.tick()
    assert server.resource_version == rv  # nothing changed, nothing written
    big = core.read_namespaced_pod("big", NS)
    assert big.status.phase == "Pending"
    condition = next(c for c in big.status.conditions if c.type == "PodScheduled")
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    assert condition.message == "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."


def test_kubelet_respects_node_selectors_taints_and_tolerations(
    core: client.CoreV1Api, kubelet: FakeKubelet
) -> None:
    kubelet.add_node("a100-1", gpus=8, labels={"gpu": "a100"})
    kubelet.add_node(
        "h100-1", gpus=8, labels={"gpu": "h100"}, taints=[Taint("dedicated", "rl", "NoSchedule")]
    )
    core.create_namespaced_pod(NS, pod("wants-h100", gpus=1, node_selector={"gpu": "h100"}))
    core.create_namespaced_pod(
        NS,
        pod(
            "tolerates",
            gpus=1,
            node_selector={"gpu": "h100"},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}],
        ),
    )
    core.create_namespaced_pod(
        NS, pod("exists", gpus=1, node_selector={"gpu": "h100"}, tolerations=[{"operator": "Exists"}])
    )
    core.create_namespaced_pod(NS, pod("anywhere", gpus=1))
    kubelet.tick()
    placed = {p.metadata.name: p.spec.node_name for p in core.list_namespaced_pod(NS).items}
    assert placed == {"anywhere": "a100-1", "exists": "h100-1", "tolerates": "h100-1", "wants-h100": None}
    stuck = core.read_namespaced_pod("wants-h100", NS)
    message = next(c.message for c in stuck.status.conditions if c.type == "PodScheduled")
    assert message == (
        "0/2 nodes are available: 1 node(s) didn't match node selector, "
        "1 node(s) had untolerated taint {dedicated: rl}."
    )


def test_cordoned_and_not_ready_nodes_get_no_pods(core: client.CoreV1Api, kubelet: FakeKubelet) -> None:
    kubelet.add_node("n1")
    kubelet.add_node("n2", ready=False)
    kubelet.cordon("n1")
    core.create_namespaced_pod(NS, pod("p", gpus=1))
    kubelet.tick()
    assert core.read_node("n1").spec.unschedulable is True
    assert core.read_namespaced_pod("p", NS).spec.node_name is None
    kubelet.uncordon("n1")
    kubelet.tick()
    assert core.read_namespaced_pod("p", NS).spec.node_name == "n1"


def test_injected_failures_produce_kubelet_statuses(core: client.CoreV1Api, kubelet: FakeKubelet) -> None:
    kubelet.add_node("n1")
    kubelet.add_node("n2", labels={"zone": "b"})
    for name in ("oom", "evicted", "pull"):
        core.create_namespaced_pod(NS, pod(name, gpus=1, node_selector={"kubernetes.io/hostname": "n1"}))
    core.create_namespaced_pod(NS, pod("lost", gpus=1, node_selector={"zone": "b"}))
    kubelet.image_pull_backoff(NS, "pull")  # before binding: it never starts
    kubelet.tick()
    kubelet.fail_pod(NS, "oom", reason="OOMKilled", exit_code=137)
    kubelet.evict_pod(NS, "evicted")
    kubelet.lose_node("n2")

    oom = core.read_namespaced_pod("oom", NS)
    terminated = oom.status.container_statuses[0].state.terminated
    assert oom.status.phase == "Failed" and (terminated.reason, terminated.exit_code) == ("OOMKilled", 137)
    evicted = core.read_namespaced_pod("evicted", NS)
    assert (evicted.status.phase, evicted.status.reason) == ("Failed", "Evicted")
    assert any(c.type == "DisruptionTarget" for c in evicted.status.conditions)
    pull = core.read_namespaced_pod("pull", NS)
    assert pull.status.phase == "Pending" and pull.spec.node_name == "n1"
    assert pull.status.container_statuses[0].state.waiting.reason == "ImagePullBackOff"
    lost = core.read_namespaced_pod("lost", NS)
    assert (lost.status.phase, lost.status.reason) == ("Failed", "NodeLost")
    ready = next(c for c in core.read_node("n2").status.conditions if c.type == "Ready")
    assert ready.status == "Unknown"
    core.create_namespaced_pod(NS, pod("after", gpus=1, node_selector={"zone": "b"}))
    kubelet.tick()
    assert core.read_namespaced_pod("after", NS).spec.node_name is None
    kubelet.restore_node("n2")
    kubelet.tick()
    assert core.read_namespaced_pod("after", NS).spec.node_name == "n2"


def test_background_kubelet_runs_behaviors_and_watches_see_pods_start(
    core: client.CoreV1Api, kubelet: FakeKubelet
) -> None:
    def finish_trainers(server: FakeKubeServer) -> None:
        for p in server.list_objects("", "pods", NS):
            if p["status"].get("phase") == "Running" and p["metadata"]["labels"].get("role") == "trainer":
                kubelet.succeed_pod(NS, p["metadata"]["name"])

    kubelet.behaviors.append(finish_trainers)
    kubelet.add_node("n1")
    trainer = core.create_namespaced_pod(NS, pod("t", gpus=8, labels={"role": "trainer"}))
    start = trainer.metadata.resource_version
    kubelet.start(interval=0.01)
    phases = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, NS, resource_version=start, timeout_seconds=5):
        phases.append(event["object"].status.phase)
        if phases[-1] == "Succeeded":
            w.stop()
    kubelet.stop()
    assert phases == ["Running", "Succeeded"]


def test_a_failing_behavior_surfaces_on_stop(kubelet: FakeKubelet) -> None:
    called = threading.Event()

    def broken(server: FakeKubeServer) -> None:
        called.set()
        raise RuntimeError("scripted trainer crashed")

    kubelet.behaviors.append(broken)
    kubelet.start(interval=0.01)
    assert called.wait(5)
    with pytest.raises(RuntimeError, match="scripted trainer crashed"):
        kubelet.stop()


def test_request_log_records_the_bearer_token_as_the_caller(server: FakeKubeServer) -> None:
    server.clear_requests()
    with server.api_client(user="orch-trainer") as trainer, server.api_client() as anonymous:
        client.CoreV1Api(trainer).create_namespaced_config_map(NS, {"metadata": {"name": "c"}})
        client.CoreV1Api(anonymous).read_namespaced_config_map("c", NS)
    assert server.requests == [
        ApiRequest("create", "", "configmaps", "", NS, "", "orch-trainer"),
        ApiRequest("get", "", "configmaps", "", NS, "c", ""),
    ]

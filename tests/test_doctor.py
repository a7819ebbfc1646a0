"""`orch doctor` against the wire-level fake API server: a healthy cluster passes, each check fails once."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import main
from orchestrator.errors import EXIT_CHECKS_FAILED
from orchestrator.kube.crd import GROUP, KIND, PLURAL
from orchestrator.kube.rbac import CONTROLLER_PERMISSIONS, granted_permissions, load_rbac_rules
from tests.kube_rig.api_server import FakeKubeServer

NS = "orch"
SECRET = "regcred"
MANIFESTS = Path(__file__).resolve().parents[1] / "manifests" / "base"
CONTROLLER = f"system:serviceaccount:{NS}:orch-controller"


def node(name: str, pool: str | None = "a", gpus: int = 8) -> dict:
    labels = {"kubernetes.io/hostname": name, **({"orch.dev/pool": pool} if pool else {})}
    allocatable = {"cpu": "64", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pull_secret(kind: str = "kubernetes.io/dockerconfigjson") -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS},
        "type": kind,
        "data": {".dockerconfigjson": "e30="},
    }


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Doctor:
    """Runs ``orch doctor`` against one fake cluster (through a kubeconfig) and one database."""

    server: FakeKubeServer
    kubeconfig: Path
    database_url: str | None

    def __call__(self, *args: str) -> Result:
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBERNETES_SERVICE_HOST": None,
            "ORCH_DATABASE_URL": self.database_url,
            "ORCH_NAMESPACE": None,
            "ORCH_POOL_LABEL": None,
            "ORCH_IMAGE_PULL_SECRET": None,
        }
        return CliRunner().invoke(main, ["doctor", *args], env=env, catch_exceptions=False)

    def outcomes(self, *args: str) -> tuple[int, dict[str, dict]]:
        result = self(*args, "-o", "json")
        return result.exit_code, {row["check"]: row for row in json.loads(result.stdout)}


@pytest.fixture
def doctor(tmp_path: Path) -> Iterator[Doctor]:
    """A healthy cluster: the CRD served, two labelled GPU nodes, RBAC allowed, the pull secret present."""
    with FakeKubeServer() as server:
        server.put_object(node("gpu-1"))
        server.put_object(node("gpu-2", pool="b", gpus=4))
        server.put_object(node("cpu-1", pool=None, gpus=0))
        server.put_object(pull_secret())
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        yield Doctor(server, kubeconfig, f"sqlite:///{tmp_path / 'o.db'}")


def only_failure(doctor: Doctor, check: str, *fragments: str) -> dict:
    """Run with the pull secret configured; exactly ``check`` fails, naming ``fragments``, with a fix."""
    code, rows = doctor.outcomes("--image-pull-secret", SECRET)
    failed = [name for name, row in rows.items() if row["outcome"] == "fail"]
    assert (code, failed) == (EXIT_CHECKS_FAILED, [check]), rows
    row = rows[check]
    for fragment in fragments:
        assert fragment in row["detail"], row
    assert row["fix"], row
    return row


def test_a_healthy_cluster_passes_every_check_one_line_each(doctor: Doctor) -> None:
    result = doctor("--image-pull-secret", SECRET)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0, result.stdout
    assert [line.split()[:2] for line in lines] == [
        ["ok", "api:"],
        ["ok", "crd:"],
        ["ok", "nodes:"],
        ["ok", "rbac:"],
        ["ok", "pull-secret:"],
        ["ok", "database:"],
    ]
    nodes = next(line for line in lines if "nodes:" in line)
    assert "pool a: 1 node (1 Ready), 8 GPUs; pool b: 1 node (1 Ready), 4 GPUs" in nodes


def test_rbac_is_asked_as_the_controller_for_every_call_it_makes(doctor: Doctor) -> None:
    assert doctor.outcomes()[0] == 0
    users = {user for user, _ in doctor.server.access_reviews}
    asked = {
        (a["verb"], a.get("group", ""), a["resource"], a.get("subresource", ""), "namespace" not in a)
        for _, a in doctor.server.access_reviews
    }
    wanted = {(p.verb, p.group, p.resource, p.subresource, p.cluster_wide) for p in CONTROLLER_PERMISSIONS}
    assert users == {CONTROLLER}
    assert asked == wanted
    assert all(a["namespace"] == NS for _, a in doctor.server.access_reviews if "namespace" in a)


def test_rbac_as_the_caller_sends_no_impersonation(doctor: Doctor) -> None:
    assert doctor.outcomes("--rbac-as", "")[0] == 0
    assert {user for user, _ in doctor.server.access_reviews} == {""}


def test_the_permissions_checked_are_exactly_what_the_shipped_rbac_grants() -> None:
    assert granted_permissions(load_rbac_rules(MANIFESTS)) == set(CONTROLLER_PERMISSIONS)


def test_an_unconfigured_pull_secret_is_skipped_not_failed(doctor: Doctor) -> None:
    code, rows = doctor.outcomes()
    assert code == 0
    assert rows["pull-secret"]["outcome"] == "skip"
    assert "not configured" in rows["pull-secret"]["detail"]


# ---- each check made to fail ------------------------------------------------------------------------------


def test_an_unreachable_api_server_fails_and_the_cluster_checks_are_not_run(doctor: Doctor) -> None:
    port = closed_port()
    text = doctor.kubeconfig.read_text().replace(f":{doctor.server.port}", f":{port}")
    doctor.kubeconfig.write_text(text)
    code, rows = doctor.outcomes("--image-pull-secret", SECRET)
    assert code == EXIT_CHECKS_FAILED
    assert rows["api"]["outcome"] == "fail"
    assert f"127.0.0.1:{port}" in rows["api"]["detail"]
    assert "kubectl cluster-info" in rows["api"]["fix"]
    assert [rows[name]["outcome"] for name in ("crd", "nodes", "rbac", "pull-secret")] == ["skip"] * 4
    assert rows["database"]["outcome"] == "pass"


def test_no_kubeconfig_fails_the_api_check_with_one_line(doctor: Doctor) -> None:
    doctor.kubeconfig.unlink()
    result = doctor()
    assert result.exit_code == EXIT_CHECKS_FAILED
    assert result.stdout.splitlines()[0].startswith("FAIL api: kubernetes: cannot load a configuration")


def test_a_missing_crd_fails(doctor: Doctor) -> None:
    doctor.server.unregister(GROUP, PLURAL)
    row = only_failure(doctor, "crd", "not installed")
    assert "orch manifests crd | kubectl apply -f -" in row["fix"]


def test_a_crd_serving_another_version_fails_naming_both(doctor: Doctor) -> None:
    doctor.server.unregister(GROUP, PLURAL)
    doctor.server.register(GROUP, "v1beta1", PLURAL, KIND)
    only_failure(doctor, "crd", "serves v1beta1", "needs v1alpha1")


def test_no_node_carrying_the_pool_label_fails(doctor: Doctor) -> None:
    for name in ("gpu-1", "gpu-2"):
        doctor.server.delete_object("", "nodes", None, name)
    row = only_failure(doctor, "nodes", "no node carries the label orch.dev/pool")
    assert "kubectl label node NODE orch.dev/pool=POOL" in row["fix"]


def test_a_custom_pool_label_is_the_one_looked_for(doctor: Doctor) -> None:
    code, rows = doctor.outcomes("--pool-label", "example.com/gpu-pool")
    assert code == EXIT_CHECKS_FAILED
    assert "no node carries the label example.com/gpu-pool" in rows["nodes"]["detail"]


def test_labelled_nodes_without_allocatable_gpus_fail_naming_the_pool(doctor: Doctor) -> None:
    doctor.server.put_object(node("gpu-2", pool="b", gpus=0))
    row = only_failure(doctor, "nodes", "no allocatable GPUs in pool b", "pool a: 1 node (1 Ready), 8 GPUs")
    assert "nvidia.com/gpu" in row["fix"]


@pytest.mark.parametrize(
    ("verb", "resource", "subresource", "shown"),
    [
        ("patch", PLURAL, "status", f"patch {PLURAL}/status.{GROUP}"),
        ("watch", "nodes", "", "watch nodes (all namespaces)"),
        ("create", "pods", "", "create pods"),
    ],
)
def test_a_denied_permission_fails_naming_it(
    doctor: Doctor, verb: str, resource: str, subresource: str, shown: str
) -> None:
    group = GROUP if resource == PLURAL else ""
    doctor.server.deny(verb, group, resource, subresource)
    row = only_failure(doctor, "rbac", shown, CONTROLLER)
    assert "kubectl apply -k manifests/base" in row["fix"]


def test_a_missing_pull_secret_fails_with_the_command_that_creates_it(doctor: Doctor) -> None:
    doctor.server.delete_object("", "secrets", NS, SECRET)
    row = only_failure(doctor, "pull-secret", f"Secret {SECRET} not found in namespace {NS}")
    assert f"kubectl -n {NS} create secret docker-registry {SECRET}" in row["fix"]


def test_a_pull_secret_of_the_wrong_type_fails(doctor: Doctor) -> None:
    doctor.server.put_object(pull_secret("Opaque"))
    only_failure(doctor, "pull-secret", "of type Opaque")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (lambda: f"postgresql://orch:secret@127.0.0.1:{closed_port()}/orch", "unavailable"),
        (lambda: None, "not configured"),
    ],
)
def test_an_unreachable_or_unconfigured_database_fails(
    doctor: Doctor, url: Callable[[], str | None], fragment: str
) -> None:
    doctor.database_url = url()
    row = only_failure(doctor, "database", fragment)
    assert "secret" not in row["detail"]  # the password never shows


def test_table_output_gives_the_fix_on_the_failing_line(doctor: Doctor) -> None:
    doctor.server.deny("create", "", "services")
    result = doctor()
    assert result.exit_code == EXIT_CHECKS_FAILED
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert line.startswith("FAIL rbac: ") and "; fix: apply orch's Role, ClusterRole" in line

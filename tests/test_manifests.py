"""What operators ``kubectl apply -k``: valid against a current Kubernetes, least privilege, hardened.

Every rendered overlay is checked with ``kubernetes-validate`` (strict); custom resources, which it skips,
are checked here: TrainingRuns against the CRD's own schema, ServiceMonitors against the Services they name.
The CRD and the example TrainingRun are generated from the run spec, and must equal the committed files.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from cli import main
from orchestrator.errors import SpecError
from orchestrator.kube.crd import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    training_run,
    training_run_crd,
    training_run_schema,
)
from orchestrator.kube.manifests import dump_yaml
from orchestrator.kube.objects import ROLE_LABEL, pod_manifest
from orchestrator.kube.rbac import TRAINER_ACCOUNT, load_rbac_rules, rbac_allows
from orchestrator.records import Workload, WorkloadStatus
from orchestrator.spec import load_spec_data, parse_spec

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
EXAMPLES = ROOT / "examples"
OVERLAYS = ("base", "dev", "production", "no-monitoring", "gvisor")
K8S_VERSION = kubernetes_validate.latest_version()
CUSTOM = {(API_VERSION, KIND), ("monitoring.coreos.com/v1", "ServiceMonitor")}
KUBECTL = shutil.which("kubectl")
Doc = dict[str, Any]
TOKENS = "orch-endpoint-tokens"  # the Secret with the bearer tokens of the controller's and agents' endpoints


# ---- rendering ----------------------------------------------------------------------------------


def _kubectl_minor() -> int:
    assert KUBECTL
    out = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True)
    return int(json.loads(out.stdout)["clientVersion"]["minor"].rstrip("+"))


@functools.cache
def rendered(overlay: str) -> list[Doc]:
    """``kubectl kustomize`` of ``manifests/base`` or an overlay, parsed."""
    if KUBECTL is None:
        pytest.skip("kubectl is not on PATH (.ci/run installs it)")
    if overlay != "base" and _kubectl_minor() < 21:
        pytest.skip("the overlays use kustomize v4+ fields (patches, replicas): kubectl >= 1.21 embeds it")
    folder = MANIFESTS / "base" if overlay == "base" else MANIFESTS / "overlays" / overlay
    done = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, f"kubectl kustomize {folder}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def example_docs() -> list[Doc]:
    return [
        doc
        for path in sorted((MANIFESTS / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_kustomization_renders_uniquely_named_objects(overlay: str) -> None:
    docs = rendered(overlay)
    ids = [
        (doc["apiVersion"], doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
        for doc in docs
    ]
    assert len(ids) == len(set(ids)) > 10
    for doc in docs:  # the tool service alone lives in orch-tools, and only the overlays bring it
        labels = doc["metadata"].get("labels", {})
        wanted = "orch-tools" if labels.get("app.kubernetes.io/component") == "tools" else "orch"
        assert doc["metadata"].get("namespace", wanted) == wanted, doc["metadata"]["name"]
    has_tools = any(doc["metadata"].get("namespace") == "orch-tools" for doc in docs)
    assert has_tools == (overlay != "base")


# ---- schema validation -----------------------------------------------------------------------


def test_kubernetes_validate_knows_a_current_kubernetes() -> None:
    assert tuple(map(int, K8S_VERSION.split(".")[:2])) >= (1, 31)


def openapi_to_json_schema(node: Doc) -> Doc:
    """A structural OpenAPI v3 schema as JSON Schema: ``nullable`` and boolean ``exclusiveMinimum`` undone."""
    out = {key: value for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.pop(flag, False):
            out[flag] = out.pop(bound)
    if "properties" in out:
        out["properties"] = {name: openapi_to_json_schema(sub) for name, sub in out["properties"].items()}
    for key in ("additionalProperties", "items"):
        if isinstance(out.get(key), dict):
            out[key] = openapi_to_json_schema(out[key])
    return out


@functools.cache
def crd_validator() -> jsonschema.Draft202012Validator:
    """The committed CRD's openAPIV3Schema, as the apiserver would apply it (less pruning and defaulting)."""
    crd = yaml.safe_load((MANIFESTS / "base" / "crd-trainingruns.yaml").read_text())
    schema = openapi_to_json_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_service_monitor(monitor: Doc, docs: list[Doc]) -> None:
    """Each endpoint names a port of a Service that the monitor's selector picks."""
    wanted = monitor["spec"]["selector"]["matchLabels"]
    services = [
        doc
        for doc in docs
        if doc["kind"] == "Service" and wanted.items() <= doc["metadata"].get("labels", {}).items()
    ]
    assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
    ports = {port.get("name") for service in services for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports


@pytest.mark.parametrize("overlay", [*OVERLAYS, "examples"])
def test_every_manifest_validates_against_kubernetes(overlay: str) -> None:
    docs = example_docs() if overlay == "examples" else rendered(overlay)
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) == (API_VERSION, KIND):
            errors = [error.message for error in crd_validator().iter_errors(doc)]
            assert not errors, f"{what}: {errors}"
            parse_spec(doc["spec"])
        elif doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, docs)
        else:
            assert (doc["apiVersion"], doc["kind"]) not in CUSTOM
            try:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{overlay}: {what}: {error.message} at {list(error.path)}")


def walk(node: Doc, path: str = "spec") -> list[tuple[str, Doc]]:
    nodes = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        nodes += walk(sub, f"{path}.{name}")
    for key in ("additionalProperties", "items"):
        if isinstance(node.get(key), dict):
            nodes += walk(node[key], f"{path}[]")
    return nodes


def test_the_crd_schema_is_structural_so_unknown_fields_are_pruned() -> None:
    for path, node in walk(training_run_schema()):
        assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"} & node.keys(), path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) is not False, path
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if flag in node:
                assert node[flag] is True and bound in node, path


def test_the_crd_names_and_columns() -> None:
    crd = training_run_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "trainingruns.orch.dev"
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("orch.dev", "Namespaced", "TrainingRun")
    assert spec["names"]["shortNames"] == ["tr"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "Step", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) == {
        "phase",
        "stage",
        "step",
        "attempt",
        "runId",
        "message",
        "observedGeneration",
        "conditions",
    }


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_crd_accepts_every_example(example: Path) -> None:
    run = training_run(load_spec_data(example))  # as `orch manifests trainingrun` writes it
    assert not [error.message for error in crd_validator().iter_errors(run)]


@pytest.mark.parametrize(
    ("written", "kept"), [("kv-aware", "kv_aware"), ("least_outstanding", "least_outstanding")]
)
def test_the_crd_takes_a_policy_name_in_either_spelling_and_the_spec_keeps_the_canonical_one(
    written: str, kept: str
) -> None:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    spec["rollout"]["dispatch"] = written
    run = training_run(spec)
    assert not [error.message for error in crd_validator().iter_errors(run)]
    assert parse_spec(run["spec"]).rollout.dispatch == kept
    spec["rollout"]["dispatch"] = "kv aware"
    assert [error.message for error in crd_validator().iter_errors(training_run_unchecked(spec))]


def training_run_unchecked(spec: Doc) -> Doc:
    """A TrainingRun around ``spec`` without orch's validation: what the apiserver's schema alone says."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "r"}, "spec": spec}


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def change(spec: Doc) -> None:
        *parents, last = path.split(".")
        for part in parents:
            spec = spec[int(part)] if isinstance(spec, list) else spec[part]
        if value is _set:
            del spec[last]
        else:
            spec[last] = value

    return change


BAD = {
    "a pool of zero GPUs": _set("pools.node.gpus", 0),
    "a string where an integer goes": _set("trainer.gpus", "8"),
    "a run name that is not a DNS label": _set("name", "Quick_Start"),
    "a missing required field": _set("checkpoint", _set),
    "a missing required nested field": _set("model.layers", _set),
    "a dtype outside the enum": _set("model.dtype", "int4"),
    "a GPU type outside the const": _set("pools.node.gpu_type", "A100"),
    "a solve rate above 1": _set("curriculum.0.advance_when", {"solve_rate_at_least": 1.5}),
    "an empty curriculum": _set("curriculum", []),
    "no pools at all": _set("pools", {}),
    "an empty image": _set("image", ""),
    "a float where an integer goes": _set("checkpoint.every_steps", 1.5),
    "a memory that is not a quantity": _set("trainer.resources", {"requests": {"memory": "64GB"}}),
    "a volume without a claim": _set("kubernetes", {"volumes": [{"name": "m", "mount_path": "/m"}]}),
}


# pydantic's lax mode reads "8" as 8; the apiserver is strict about JSON types.
LAX_IN_PYDANTIC = {"a string where an integer goes"}


@pytest.mark.parametrize(("case", "change"), BAD.items(), ids=BAD.keys())
def test_the_crd_rejects_what_the_spec_rejects(case: str, change: Callable[[Doc], None]) -> None:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    change(spec)
    if case not in LAX_IN_PYDANTIC:
        with pytest.raises(SpecError):
            parse_spec(spec)
    run = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "x"}, "spec": spec}
    assert list(crd_validator().iter_errors(run)), "the CRD schema accepted it"


def test_the_crd_accepts_null_where_the_spec_allows_none() -> None:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    spec["curriculum"][0].update(name=None, advance_when=None, entry_filter=None)
    parse_spec(spec)
    assert not list(crd_validator().iter_errors({"spec": spec}))


# ---- generated files ----------------------------------------------------------------------------


GENERATED = {
    "manifests/base/crd-trainingruns.yaml": ["manifests", "crd"],
    "manifests/examples/trainingrun-quickstart.yaml": [
        "manifests",
        "trainingrun",
        "examples/quickstart.yaml",
    ],
}


@pytest.mark.parametrize(("path", "args"), GENERATED.items(), ids=GENERATED.keys())
def test_generated_files_equal_the_committed_ones(path: str, args: list[str], monkeypatch: Any) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output == (ROOT / path).read_text(), f"stale: run `orch {' '.join(args)} > {path}`"


def test_the_generated_files_are_what_the_library_makes() -> None:
    crd = dump_yaml(training_run_crd(), "orch manifests crd")
    assert crd == (MANIFESTS / "base" / "crd-trainingruns.yaml").read_text()
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    example = yaml.safe_load((MANIFESTS / "examples" / "trainingrun-quickstart.yaml").read_text())
    assert example == training_run(spec) and example["spec"] == spec


# ---- RBAC -------------------------------------------------------------------------------------


READS = ("get", "list", "watch")
NEEDED = (
    [("cluster", verb, "", resource, "") for verb in ("list", "watch") for resource in ("nodes", "pods")]
    + [("namespace", verb, "", "pods", "") for verb in ("create", "delete")]
    + [("namespace", "create", "", "services", "")]
    + [("namespace", verb, "", "configmaps", "") for verb in ("list", "watch", "create", "patch", "delete")]
    + [("namespace", verb, GROUP, PLURAL, "") for verb in ("list", "watch")]
    + [("namespace", "patch", GROUP, PLURAL, "status")]
)
DENIED = [
    ("cluster", "delete", "", "nodes", ""),
    ("cluster", "patch", "", "nodes", ""),
    ("cluster", "create", "", "pods", ""),
    ("cluster", "get", "", "secrets", ""),
    ("namespace", "get", "", "secrets", ""),
    ("namespace", "create", "", "pods", "exec"),
    ("namespace", "create", GROUP, PLURAL, ""),
    ("namespace", "delete", GROUP, PLURAL, ""),
    ("namespace", "create", "rbac.authorization.k8s.io", "rolebindings", ""),
]


@functools.cache
def controller_rules() -> dict[str, list[Doc]]:
    return load_rbac_rules(MANIFESTS / "base")


@pytest.mark.parametrize(("scope", "verb", "group", "resource", "sub"), NEEDED)
def test_the_controller_may_do_what_it_needs(
    scope: str, verb: str, group: str, resource: str, sub: str
) -> None:
    assert rbac_allows(controller_rules()[scope], verb, group, resource, sub)


@pytest.mark.parametrize(("scope", "verb", "group", "resource", "sub"), DENIED)
def test_the_controller_may_not_do_more(scope: str, verb: str, group: str, resource: str, sub: str) -> None:
    assert not rbac_allows(controller_rules()[scope], verb, group, resource, sub)


def test_the_granted_rules_are_exactly_the_needed_ones() -> None:
    granted = {
        (scope, verb, group, resource.partition("/")[0], resource.partition("/")[2])
        for scope, rules in controller_rules().items()
        for rule in rules
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == set(NEEDED)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_has_no_wildcards_no_secrets_and_no_cluster_wide_writes(overlay: str) -> None:
    roles = [doc for doc in rendered(overlay) if doc["kind"] in ("Role", "ClusterRole")]
    assert {doc["kind"] for doc in roles} == {"Role", "ClusterRole"}
    for role in roles:
        for rule in role["rules"]:
            for key in ("verbs", "apiGroups", "resources", "resourceNames", "nonResourceURLs"):
                assert not any("*" in value for value in rule.get(key, [])), (
                    f"{role['metadata']['name']}: {key}"
                )
            assert "secrets" not in rule["resources"]
            if role["kind"] == "ClusterRole":
                assert set(rule["verbs"]) <= set(READS)
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        assert not any(rbac_allows(doc["rules"], verb, "", "secrets") for doc in roles)


def test_rbac_allows_matches_like_the_apiserver() -> None:
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["*"]},
        {"apiGroups": ["*"], "resources": ["leases"], "verbs": ["update"], "resourceNames": ["orch"]},
    ]
    assert rbac_allows(rules, "get", "", "pods")
    assert not rbac_allows(rules, "get", "", "pods", "log")
    assert not rbac_allows(rules, "get", "apps", "pods")
    assert rbac_allows(rules, "patch", "apps", "deployments", "scale")
    assert not rbac_allows(rules, "patch", "apps", "deployments")
    assert rbac_allows(rules, "update", "coordination.k8s.io", "leases", name="orch")
    assert not rbac_allows(rules, "update", "coordination.k8s.io", "leases", name="other")
    assert not rbac_allows(rules, "update", "coordination.k8s.io", "leases")


TRAINER_NEEDED = {("namespace", verb, "", "configmaps", "") for verb in ("get", "create", "patch")}


def test_the_trainer_account_may_only_get_create_and_patch_configmaps() -> None:
    rules = load_rbac_rules(MANIFESTS / "base", account=TRAINER_ACCOUNT)
    granted = {
        (scope, verb, group, resource.partition("/")[0], resource.partition("/")[2])
        for scope, scoped_rules in rules.items()
        for rule in scoped_rules
        for verb in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == TRAINER_NEEDED
    for verb in ("list", "watch", "update", "delete", "deletecollection"):
        assert not rbac_allows(rules["namespace"], verb, "", "configmaps")
    assert not rbac_allows(rules["namespace"], "get", "", "secrets")
    assert not rbac_allows(rules["namespace"], "get", "", "pods")
    account = one(rendered("base"), "ServiceAccount", TRAINER_ACCOUNT)
    assert account.get("automountServiceAccountToken", True) is True, "trainers need their token"


def test_the_agent_account_has_no_rules_and_no_token() -> None:
    assert load_rbac_rules(MANIFESTS / "base", account="orch-agent") == {"cluster": [], "namespace": []}
    account = one(rendered("base"), "ServiceAccount", "orch-agent")
    assert account["automountServiceAccountToken"] is False


# ---- workloads ----------------------------------------------------------------------------------


def hardened(container: Doc, pod: Doc) -> None:
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context.get("privileged") is not True
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] == 10001
    assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"requests", "limits"} <= container["resources"].keys()
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize(("overlay", "replicas"), [("base", 2), ("dev", 1), ("production", 2)])
def test_the_controller_is_hardened_probed_and_sized(overlay: str, replicas: int) -> None:
    docs = rendered(overlay)
    deployment = one(docs, "Deployment", "orch-controller")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    hardened(container, pod)
    assert deployment["spec"]["replicas"] == replicas
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["serviceAccountName"] == "orch-controller"
    assert container["args"][:3] == ["controller", "--backend", "kube"]
    assert container["image"] == "ghcr.io/orch-dev/orch:0.1.0"
    env = {item["name"]: item for item in container["env"]}
    assert env["ORCH_BACKEND"]["value"] == "kube"
    assert env["ORCH_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "orch-database",
        "key": "ORCH_DATABASE_URL",
    }
    assert container["args"][-6:] == [
        "--http-port",
        "8080",
        *listens_with_token(container, pod, "controller"),
    ]
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == {"path": "/healthz", "port": "http"}
    assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = one(docs, "PodDisruptionBudget", "orch-controller")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(docs, "Service", "orch-controller")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def listens_with_token(container: Doc, pod: Doc, key: str) -> list[str]:
    """The server arguments of a pod that listens on all addresses with its token mounted from the Secret."""
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    mount = mounts["/var/run/secrets/orch"]
    assert mount["readOnly"] is True
    volume = {volume["name"]: volume for volume in pod["volumes"]}[mount["name"]]
    assert volume["secret"] == {"secretName": TOKENS, "items": [{"key": key, "path": "token"}]}
    return ["--host", "0.0.0.0", "--token-file", "/var/run/secrets/orch/token"]


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_prometheus_sends_each_endpoints_token(overlay: str) -> None:
    docs = rendered(overlay)
    for name, key in (("orch-controller", "controller"), ("orch-agent", "agent")):
        [endpoint] = one(docs, "ServiceMonitor", name)["spec"]["endpoints"]
        assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": TOKENS, "key": key}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_overlay_ships_a_secret(overlay: str) -> None:
    """The database URL and the tokens are created by the operator: a re-apply never resets them."""
    assert [doc["metadata"]["name"] for doc in rendered(overlay) if doc["kind"] == "Secret"] == []


def test_only_the_no_monitoring_overlay_and_dev_leave_the_service_monitors_out() -> None:
    for overlay in OVERLAYS:
        monitors = {doc["metadata"]["name"] for doc in rendered(overlay) if doc["kind"] == "ServiceMonitor"}
        assert monitors == (
            set() if overlay in ("dev", "no-monitoring") else {"orch-controller", "orch-agent"}
        )


def test_dev_asks_for_less_than_production() -> None:
    def requests(overlay: str) -> Doc:
        pod = one(rendered(overlay), "Deployment", "orch-controller")["spec"]["template"]["spec"]
        return pod["containers"][0]["resources"]["requests"]

    assert requests("dev") == {"cpu": "100m", "memory": "256Mi"}
    assert requests("production") == {"cpu": "500m", "memory": "512Mi"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_agent_runs_only_on_gpu_nodes_and_takes_no_gpu(overlay: str) -> None:
    daemonset = one(rendered(overlay), "DaemonSet", "orch-agent")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    [container] = pod["containers"]
    hardened(container, pod)
    assert container["args"] == ["agent", "--port", "9400", *listens_with_token(container, pod, "agent")]
    for probe in ("livenessProbe", "readinessProbe"):  # open without a token; /metrics is not
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    for amounts in container["resources"].values():
        assert "nvidia.com/gpu" not in amounts


def test_priority_classes_rank_training_above_rollout() -> None:
    docs = rendered("base")
    training, rollout = (
        one(docs, "PriorityClass", name)["value"] for name in ("orch-training", "orch-rollout")
    )
    assert training > rollout > 0
    assert training < 1_000_000_000  # below the system-* classes


# ---- the tool service, Pod Security and NetworkPolicies ------------------------------------------

TOOLS = "orch-tools"  # its namespace, Deployment, Service, NetworkPolicy and ServiceAccount
WITH_TOOLS = [overlay for overlay in OVERLAYS if overlay != "base"]
TOOL_CAPABILITIES = {"SYS_ADMIN", "SETUID", "SETGID", "KILL", "DAC_READ_SEARCH"}


def option_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_namespace_enforces_the_pod_security_level_its_pods_need(overlay: str) -> None:
    docs = rendered(overlay)
    labels = {
        doc["metadata"]["name"]: doc["metadata"]["labels"] for doc in docs if doc["kind"] == "Namespace"
    }
    assert labels["orch"]["pod-security.kubernetes.io/enforce"] == "baseline"
    if overlay == "base":
        assert TOOLS not in labels
        return
    # The sandbox adds CAP_SYS_ADMIN and runs AppArmor-unconfined, beyond "baseline": its own namespace is
    # "privileged", and reports whatever else would break "baseline" there.
    tools = labels[TOOLS]
    assert tools["pod-security.kubernetes.io/enforce"] == "privileged"
    assert tools["pod-security.kubernetes.io/warn"] == tools["pod-security.kubernetes.io/audit"] == "baseline"
    privileged = [
        doc["metadata"]["name"]
        for doc in docs
        if doc["kind"] in ("Deployment", "DaemonSet")
        and any(
            container["securityContext"].get("capabilities", {}).get("add")
            for container in doc["spec"]["template"]["spec"]["containers"]
        )
    ]
    assert privileged == [TOOLS]


@pytest.mark.parametrize("overlay", WITH_TOOLS)
def test_the_tool_service_listens_with_a_token_and_refuses_weak_isolation(overlay: str) -> None:
    docs = rendered(overlay)
    deployment = one(docs, "Deployment", TOOLS)
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert args[:2] == ["tools", "serve"]
    assert option_values(args, "--host") == ["0.0.0.0"]
    assert option_values(args, "--token-file") == ["/var/run/secrets/orch/token"]
    assert "--allow-weak-isolation" not in args
    mount = {m["mountPath"]: m for m in container["volumeMounts"]}["/var/run/secrets/orch"]
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert mount["readOnly"] is True
    assert volume["secret"] == {
        "secretName": "orch-tools-token",
        "items": [{"key": "token", "path": "token"}],
    }
    # Callers use the Service's DNS name, which the Host check must admit.
    service = one(docs, "Service", TOOLS)
    assert f"{TOOLS}.{service['metadata']['namespace']}.svc" in option_values(args, "--allowed-host")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert option_values(args, "--port") == [str(port)]
    workers = int(option_values(args, "--workers")[0])
    assert workers == int(container["resources"]["limits"]["cpu"])  # not the node's CPU count
    context = container["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == TOOL_CAPABILITIES
    assert context["readOnlyRootFilesystem"] is True and context.get("privileged") is False
    assert "allowPrivilegeEscalation" not in context  # the apiserver refuses false next to CAP_SYS_ADMIN
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    assert pod["automountServiceAccountToken"] is False and not pod.get("hostNetwork")
    assert pod.get("runtimeClassName") == ("gvisor" if overlay == "gvisor" else None)
    account = one(docs, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert load_rbac_rules(MANIFESTS / "tools", account=TOOLS) == {"cluster": [], "namespace": []}


def policy(docs: list[Doc], name: str, namespace: str, workload: Doc) -> Doc:
    """The NetworkPolicy ``name``, checked to select ``workload``'s pods and to govern both directions."""
    found = one([doc for doc in docs if doc["metadata"].get("namespace") == namespace], "NetworkPolicy", name)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert found["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(found["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    return found["spec"]


def from_monitoring_on(port: str) -> list[Doc]:
    selector = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    return [{"from": [selector], "ports": [{"port": port, "protocol": "TCP"}]}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_prometheus_scrape_and_the_controller_reach_only_what_it_calls(
    overlay: str,
) -> None:
    docs = rendered(overlay)
    controller = policy(docs, "orch-controller", "orch", one(docs, "Deployment", "orch-controller"))
    assert controller["ingress"] == from_monitoring_on("http")
    egress_ports = {
        (port["port"], port["protocol"]) for rule in controller["egress"] for port in rule["ports"]
    }
    assert egress_ports == {(443, "TCP"), (6443, "TCP"), (5432, "TCP"), (53, "UDP"), (53, "TCP")}
    [dns] = [
        rule
        for rule in controller["egress"]
        if (53, "UDP") in {(p["port"], p["protocol"]) for p in rule["ports"]}
    ]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    agent = policy(docs, "orch-agent", "orch", one(docs, "DaemonSet", "orch-agent"))
    assert agent["ingress"] == from_monitoring_on("metrics")
    assert agent["egress"] == []  # it reads GPUs through the driver and calls nobody


@pytest.mark.parametrize("overlay", WITH_TOOLS)
def test_only_trainer_pods_reach_the_tool_service_and_it_reaches_nothing(overlay: str) -> None:
    docs = rendered(overlay)
    spec = policy(docs, TOOLS, TOOLS, one(docs, "Deployment", TOOLS))
    assert spec["egress"] == []
    [rule] = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    [peer] = rule["from"]
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "orch"}}
    # The selector matches the labels the controller gives trainer pods, and not an engine's.
    trainer = pod_manifest(member("trainer"), "orch", "orch.dev/pool", {"uid": "u"})
    engine = pod_manifest(member("engine"), "orch", "orch.dev/pool", {"uid": "u"})
    wanted = peer["podSelector"]["matchLabels"]
    assert wanted == {ROLE_LABEL: "trainer"}
    assert wanted.items() <= trainer["metadata"]["labels"].items()
    assert not wanted.items() <= engine["metadata"]["labels"].items()


def member(role: str) -> Workload:
    return Workload(f"r-{role}-0-a1", "r", role, 0, 1, "node", "n0", 1, WorkloadStatus.PENDING)


# ---- CLI and image ------------------------------------------------------------------------------


def test_render_without_kubectl_concatenates_the_base(monkeypatch: Any, tmp_path: Path) -> None:
    expected = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered("base")}
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(main, ["manifests", "render"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [doc for doc in yaml.safe_load_all(result.output) if doc]
    assert {(doc["kind"], doc["metadata"]["name"]) for doc in docs} == expected
    assert all(
        doc["metadata"].get("namespace") == "orch"
        for doc in docs
        if doc["kind"]
        not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "PriorityClass")
    )
    overlay = CliRunner().invoke(main, ["manifests", "render", "--overlay", "dev"])
    assert overlay.exit_code == 1 and "needs kustomize" in overlay.output


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_prints_what_kustomize_renders(overlay: str) -> None:
    expected = rendered(overlay)
    result = CliRunner().invoke(main, ["manifests", "render", "--overlay", overlay], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [doc for doc in yaml.safe_load_all(result.output) if doc] == expected


def test_trainingrun_command_rejects_a_bad_spec(tmp_path: Path) -> None:
    spec = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    bad = copy.deepcopy(spec)
    bad["trainer"]["gpus"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(main, ["manifests", "trainingrun", str(path)])
    assert result.exit_code == 2 and "trainer.gpus" in result.output


def test_the_image_runs_orch_as_user_10001() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["orch"]' in lines

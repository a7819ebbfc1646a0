"""``orch doctor``'s Kubernetes checks: is this cluster ready for orch's controller?

Each check is a thin read of the API (``*_check``) over a pure verdict (``*_verdict``) that turns what was
read into a ``Check``: what was found and, when it failed, the command that fixes it. Reads are discovery,
nodes, one Secret and SelfSubjectAccessReviews (authorization.k8s.io/v1), so an operator with read access
can run them; the RBAC check asks as the controller's ServiceAccount through impersonation (``kubectl
--as``), or as whoever runs it when ``as_user`` is empty (e.g. inside the controller's pod).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.errors import OrchError
from orchestrator.hardware import gpu_resource_names
from orchestrator.kube.api import NOT_FOUND, api_client_from_environment
from orchestrator.kube.crd import GROUP, PLURAL, VERSION
from orchestrator.kube.objects import gpu_allocatable
from orchestrator.kube.rbac import CONTROLLER_ACCOUNT, CONTROLLER_PERMISSIONS, Permission
from orchestrator.records import Check, CheckOutcome

__all__ = [
    "PULL_SECRET_TYPES",
    "cluster_checks",
    "controller_user",
    "crd_verdict",
    "nodes_verdict",
    "pull_secret_verdict",
    "rbac_verdict",
]

FORBIDDEN = 403
REQUEST_TIMEOUT_S = 10.0
# Secret types the kubelet reads registry credentials from (Kubernetes docs, "Pull an Image from a Private
# Registry"; core/v1 SecretType constants SecretTypeDockerConfigJson and SecretTypeDockercfg).
PULL_SECRET_TYPES = ("kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg")
APPLY = "kubectl apply -k manifests/base (or an overlay)"

PASS, FAIL, SKIP = CheckOutcome.PASS, CheckOutcome.FAIL, CheckOutcome.SKIP


def controller_user(namespace: str) -> str:
    """The user name the controller's ServiceAccount authenticates as."""
    return f"system:serviceaccount:{namespace}:{CONTROLLER_ACCOUNT}"


def _reason(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}".strip()
    return " ".join(str(error).split())[:200] or type(error).__name__


# ---- pure verdicts ---------------------------------------------------------------------------------------


def crd_verdict(served_versions: Sequence[str], resources: Sequence[str]) -> Check:
    """``served_versions``: the versions discovery lists for orch's group (empty when the group serves no
    TrainingRuns); ``resources``: what ``GROUP/VERSION`` serves (empty when that version is not served)."""
    name = f"{PLURAL}.{GROUP}"
    if PLURAL in resources:
        return Check("crd", PASS, f"{name} serves {VERSION}")
    if served_versions:
        return Check(
            "crd",
            FAIL,
            f"{name} serves {', '.join(served_versions)}, this orch needs {VERSION}",
            f"apply the CRD of this orch version: orch manifests crd | kubectl apply -f -  (or {APPLY})",
        )
    return Check(
        "crd",
        FAIL,
        f"the CRD {name} is not installed",
        f"orch manifests crd | kubectl apply -f -  (or {APPLY})",
    )


def nodes_verdict(nodes: Iterable[dict[str, Any]], pool_label: str) -> Check:
    """Nodes carrying ``pool_label`` (as the API lists them): every pool needs allocatable GPUs."""
    pools: dict[str, list[int]] = {}  # pool -> [nodes, ready nodes, GPUs]
    for node in nodes:
        pool = ((node.get("metadata") or {}).get("labels") or {}).get(pool_label)
        if pool is None:
            continue
        counts = pools.setdefault(pool, [0, 0, 0])
        counts[0] += 1
        conditions = (node.get("status") or {}).get("conditions") or []
        counts[1] += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        counts[2] += gpu_allocatable(node)
    if not pools:
        return Check(
            "nodes",
            FAIL,
            f"no node carries the label {pool_label}",
            f"label the GPU nodes with their pool: kubectl label node NODE {pool_label}=POOL",
        )
    found = "; ".join(
        f"pool {pool}: {n} node{'s' * (n != 1)} ({ready} Ready), {gpus} GPUs"
        for pool, (n, ready, gpus) in sorted(pools.items())
    )
    empty = sorted(pool for pool, (_, _, gpus) in pools.items() if gpus == 0)
    if empty:
        return Check(
            "nodes",
            FAIL,
            f"{found}: no allocatable GPUs in pool {', '.join(empty)}",
            f"install the GPU device plugin (NVIDIA GPU Operator) so the nodes advertise "
            f"{' or '.join(gpu_resource_names())}",
        )
    return Check("nodes", PASS, found)


def rbac_verdict(answers: Sequence[tuple[Permission, bool, str]], namespace: str, user: str) -> Check:
    """``answers``: each permission the controller needs, whether the review allowed it, and its reason."""
    who = user or "the current user"
    denied = [(permission, reason) for permission, allowed, reason in answers if not allowed]
    if not denied:
        return Check("rbac", PASS, f"{who} may make all {len(answers)} kinds of call the controller makes")
    shown = ", ".join(str(permission) for permission, _ in denied)
    return Check(
        "rbac",
        FAIL,
        f"{who} may not: {shown} (namespace {namespace})",
        f"apply orch's Role, ClusterRole and bindings for ServiceAccount {CONTROLLER_ACCOUNT}: {APPLY}",
    )


def pull_secret_verdict(secret: dict[str, Any] | None, name: str, namespace: str) -> Check:
    """``secret``: the Secret as read, or None when it does not exist."""
    create = (
        f"kubectl -n {namespace} create secret docker-registry {name} "
        "--docker-server=REGISTRY --docker-username=USER --docker-password=TOKEN"
    )
    if secret is None:
        return Check("pull-secret", FAIL, f"Secret {name} not found in namespace {namespace}", create)
    kind = secret.get("type") or "Opaque"
    if kind not in PULL_SECRET_TYPES:
        return Check(
            "pull-secret",
            FAIL,
            f"Secret {name} is of type {kind}, not {PULL_SECRET_TYPES[0]}",
            f"kubectl -n {namespace} delete secret {name}; {create}",
        )
    return Check("pull-secret", PASS, f"Secret {name} ({kind}) in namespace {namespace}")


# ---- reads -----------------------------------------------------------------------------------------------


def _api_check(api: client.ApiClient) -> Check:
    try:
        version = client.VersionApi(api).get_code(_request_timeout=REQUEST_TIMEOUT_S)
    except Exception as error:  # any failure (refused, TLS, 401, timeout) means "not reachable"
        return Check(
            "api",
            FAIL,
            f"cannot reach the API server at {api.configuration.host}: {_reason(error)}",
            "check KUBECONFIG and its current context (kubectl cluster-info), or run inside the cluster",
        )
    return Check("api", PASS, f"{api.configuration.host} answers (Kubernetes {version.git_version})")


def _crd_check(api: client.ApiClient) -> Check:
    try:
        listed = client.CustomObjectsApi(api).get_api_resources(
            GROUP, VERSION, _request_timeout=REQUEST_TIMEOUT_S
        )
        resources = [resource.name for resource in listed.resources or []]
        return crd_verdict([VERSION] if PLURAL in resources else [], resources)
    except ApiException as error:
        if error.status != NOT_FOUND:
            raise
    groups = client.ApisApi(api).get_api_versions(_request_timeout=REQUEST_TIMEOUT_S).groups or []
    served = [v.version for group in groups if group.name == GROUP for v in group.versions or []]
    return crd_verdict(served, [])


def _nodes_check(api: client.ApiClient, pool_label: str) -> Check:
    listed = client.CoreV1Api(api).list_node(
        label_selector=pool_label, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
    )
    return nodes_verdict(listed.json().get("items") or [], pool_label)


def _review(api: client.ApiClient, permission: Permission, namespace: str, user: str) -> tuple[bool, str]:
    attributes = client.V1ResourceAttributes(
        verb=permission.verb,
        group=permission.group,
        resource=permission.resource,
        subresource=permission.subresource or None,
        namespace=None if permission.cluster_wide else namespace,
    )
    body = client.V1SelfSubjectAccessReview(
        api_version="authorization.k8s.io/v1",
        kind="SelfSubjectAccessReview",
        spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes),
    )
    answer = client.AuthorizationV1Api(api).create_self_subject_access_review(
        body,
        _headers={"Impersonate-User": user} if user else None,
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT_S,
    )
    status = answer.json().get("status") or {}
    return bool(status.get("allowed")), str(status.get("reason") or "")


def _rbac_check(api: client.ApiClient, namespace: str, user: str) -> Check:
    try:
        answers = [(p, *_review(api, p, namespace, user)) for p in CONTROLLER_PERMISSIONS]
    except ApiException as error:
        if error.status != FORBIDDEN or not user:
            raise
        return Check(
            "rbac",
            FAIL,
            f"cannot ask as {user}: impersonation forbidden ({_reason(error)})",
            "run as a user who may impersonate ServiceAccounts, or run orch doctor --rbac-as '' inside "
            "the controller's pod",
        )
    return rbac_verdict(answers, namespace, user)


def _pull_secret_check(api: client.ApiClient, namespace: str, name: str) -> Check:
    if not name:
        return Check("pull-secret", SKIP, "not configured (--image-pull-secret / ORCH_IMAGE_PULL_SECRET)")
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
        )
    except ApiException as error:
        if error.status != NOT_FOUND:
            raise
        return pull_secret_verdict(None, name, namespace)
    return pull_secret_verdict(secret.json(), name, namespace)


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    """A read that fails for another reason than what it checks (403, 5xx) is that check's failure."""
    try:
        return check()
    except Exception as error:  # reported as this check's failure, never raised
        fix = "grant the user running orch doctor read access, or retry" if _forbidden(error) else "retry"
        return Check(name, FAIL, f"could not check: {_reason(error)}", fix)


def _forbidden(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == FORBIDDEN


def cluster_checks(
    *,
    namespace: str,
    pool_label: str,
    image_pull_secret: str = "",
    rbac_as: str | None = None,
    api_client: client.ApiClient | None = None,
) -> list[Check]:
    """The checks in order: API reachable, CRD, labelled GPU nodes, the controller's RBAC, pull secret.

    ``rbac_as``: the user the RBAC check asks for (default: the controller's ServiceAccount in
    ``namespace``; ``""``: whoever runs this). ``api_client`` (default: from KUBECONFIG or in-cluster) is
    closed when given none.
    """
    names = ("crd", "nodes", "rbac", "pull-secret")
    owned = api_client is None
    try:
        api = api_client or api_client_from_environment()
    except OrchError as error:
        fix = "set KUBECONFIG to a kubeconfig for the cluster, or run inside it"
        return [Check("api", FAIL, str(error), fix), *(_unreachable(name) for name in names)]
    try:
        first = _api_check(api)
        if first.outcome is FAIL:
            return [first, *(_unreachable(name) for name in names)]
        user = controller_user(namespace) if rbac_as is None else rbac_as
        return [
            first,
            _guarded("crd", lambda: _crd_check(api)),
            _guarded("nodes", lambda: _nodes_check(api, pool_label)),
            _guarded("rbac", lambda: _rbac_check(api, namespace, user)),
            _guarded("pull-secret", lambda: _pull_secret_check(api, namespace, image_pull_secret)),
        ]
    finally:
        if owned:
            api.close()


def _unreachable(name: str) -> Check:
    return Check(name, SKIP, "not checked: the API server is unreachable")

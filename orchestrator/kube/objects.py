"""Kubernetes objects orch writes, and how it reads pods back: pure functions over plain dicts."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.errors import SpecError
from orchestrator.hardware import GPU_TYPE_ENV, GPU_TYPES, H100_80GB, gpu_resource_names
from orchestrator.records import Workload
from orchestrator.worker.transport import CONFIGMAP_MAILBOX, MAILBOX_KIND_ENV

__all__ = [
    "ATTEMPT_LABEL",
    "COLOCATED_ANNOTATION",
    "CONFIGMAP_MAILBOX",
    "GPU_RESOURCE",
    "GPU_TYPE_ENV",
    "INDEX_LABEL",
    "MAILBOX_KIND_ENV",
    "MERGE_PATCH",
    "NAMESPACE_ENV",
    "PLAN_KEY",
    "ROLE_LABEL",
    "RUN_LABEL",
    "SPEC_KEY",
    "TRAINER_SERVICE_ACCOUNT",
    "TRAINER_SERVICE_ACCOUNT_ENV",
    "check_service_account",
    "closed_key",
    "control_configmap",
    "control_name",
    "gpu_allocatable",
    "gpu_request",
    "gpu_resource",
    "observe_pod",
    "owner_reference",
    "pod_manifest",
    "rendezvous_name",
    "rendezvous_service",
    "results_name",
]

MERGE_PATCH = "application/merge-patch+json"  # the Content-Type of a JSON merge patch
RUN_LABEL = "orch.dev/run"
ROLE_LABEL = "orch.dev/role"
ATTEMPT_LABEL = "orch.dev/attempt"
INDEX_LABEL = "orch.dev/index"
COLOCATED_ANNOTATION = "orch.dev/colocated-engines"
GPU_RESOURCE = H100_80GB.resource_name  # for a workload that names no GPU type
SPEC_KEY, PLAN_KEY = "spec.json", "plan.json"  # the control ConfigMap's keys
# Set on trainer pods with ``ORCH_MAILBOX=configmap``: the trainer SDK (``TrainerSession.from_env``) then
# takes its work through the API (``orchestrator.kube.trainer_transport``) in this namespace.
NAMESPACE_ENV = "ORCH_NAMESPACE"
PRIORITY_CLASSES = {"trainer": "orch-training", "engine": "orch-rollout"}
# Trainer pods run as this ServiceAccount: the mailbox needs the API (manifests/base/rbac.yaml grants it
# the ConfigMap calls ``trainer_transport`` makes). Engine pods never call the API and get no token.
TRAINER_SERVICE_ACCOUNT = "orch-trainer"
TRAINER_SERVICE_ACCOUNT_ENV = "ORCH_TRAINER_SERVICE_ACCOUNT"  # the controller's setting; default above
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Container states that never recover on their own: the member has failed even though the pod is Pending.
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"}
)


def check_service_account(name: str) -> str:
    """``name`` if it can name a ServiceAccount (a DNS subdomain), else a ``SpecError`` naming the setting."""
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise SpecError(
            f"{TRAINER_SERVICE_ACCOUNT_ENV}: {name!r} is not a ServiceAccount name (lowercase letters, "
            f"digits, '-' and '.', at most 253); set it to the trainers' account, "
            f"e.g. {TRAINER_SERVICE_ACCOUNT}"
        )
    return name


def control_name(run_id: str) -> str:
    """The run's anchor ConfigMap: its spec, the current work plan, and the owner of its objects."""
    return f"{run_id}-control"


def results_name(run_id: str, attempt: int) -> str:
    """Where the trainer of one attempt writes the results of the work it was asked to do."""
    return f"{run_id}-a{attempt}-results"


def closed_key(attempt: int) -> str:
    """The control ConfigMap key that says the controller wants no more work from ``attempt``'s trainer."""
    return f"closed-a{attempt}"


def rendezvous_name(run_id: str, attempt: int) -> str:
    """Headless Service giving the gang's members stable DNS names for rendezvous."""
    return f"{run_id}-a{attempt}"


def owner_reference(obj: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj.get("apiVersion", "v1"),
        "kind": obj.get("kind", "ConfigMap"),
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def _labels(workload: Workload) -> dict[str, str]:
    return {
        RUN_LABEL: workload.run_id,
        ROLE_LABEL: workload.role,
        ATTEMPT_LABEL: str(workload.attempt),
        INDEX_LABEL: str(workload.index),
    }


def control_configmap(run_id: str, namespace: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    """Empty at first; the executor writes ``spec.json`` and ``plan.json`` into it."""
    metadata: dict[str, Any] = {
        "name": control_name(run_id),
        "namespace": namespace,
        "labels": {RUN_LABEL: run_id},
    }
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {}}


def rendezvous_service(workload: Workload, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": rendezvous_name(workload.run_id, workload.attempt),
            "namespace": namespace,
            "labels": {RUN_LABEL: workload.run_id, ATTEMPT_LABEL: str(workload.attempt)},
            "ownerReferences": [owner],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {
                RUN_LABEL: workload.run_id,
                ATTEMPT_LABEL: str(workload.attempt),
                ROLE_LABEL: "trainer",
            },
            "ports": [{"name": "rendezvous", "port": 29500}],
        },
    }


def gpu_resource(workload: Workload) -> str:
    """The extended resource the workload's GPUs are requested by: its pool's GPU type's."""
    gpu = GPU_TYPES.get(workload.env.get(GPU_TYPE_ENV, ""))
    return gpu.resource_name if gpu is not None else GPU_RESOURCE


def pod_manifest(
    workload: Workload,
    namespace: str,
    pool_label: str,
    owner: dict[str, Any],
    *,
    trainer_service_account: str = TRAINER_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """One gang member or engine, pinned to the node placement chose, with its GPUs and env.

    Trainers run as ``trainer_service_account``, with its token mounted, to reach their mailbox through
    the API; engines never call the API, so they get no token at all.
    """
    service = rendezvous_name(workload.run_id, workload.attempt)
    env = dict(workload.env)
    if workload.role == "trainer":
        master = workload.name.replace(f"-trainer-{workload.index}-", "-trainer-0-")
        env["ORCH_MASTER_ADDR"] = f"{master}.{service}.{namespace}.svc"
        env[MAILBOX_KIND_ENV] = CONFIGMAP_MAILBOX
        env[NAMESPACE_ENV] = namespace
    container: dict[str, Any] = {
        "name": workload.role,
        "image": workload.image,
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        "volumeMounts": [{"name": "orch-control", "mountPath": "/etc/orch", "readOnly": True}],
    }
    resource = gpu_resource(workload)
    if workload.gpus:
        container["resources"] = {
            "requests": {resource: str(workload.gpus)},
            "limits": {resource: str(workload.gpus)},
        }
    metadata: dict[str, Any] = {
        "name": workload.name,
        "namespace": namespace,
        "labels": _labels(workload),
        "ownerReferences": [owner],
    }
    if "ORCH_COLOCATED_ENGINES" in workload.env:
        metadata["annotations"] = {COLOCATED_ANNOTATION: workload.env["ORCH_COLOCATED_ENGINES"]}
    identity: dict[str, Any] = (
        {"serviceAccountName": trainer_service_account, "automountServiceAccountToken": True}
        if workload.role == "trainer"
        else {"automountServiceAccountToken": False}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            **identity,
            "restartPolicy": "Never",
            "hostname": workload.name,
            "subdomain": service,
            "priorityClassName": PRIORITY_CLASSES.get(workload.role, "orch-rollout"),
            "nodeSelector": {pool_label: workload.pool, "kubernetes.io/hostname": workload.node},
            "tolerations": [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [container],
            "volumes": [{"name": "orch-control", "configMap": {"name": control_name(workload.run_id)}}],
        },
    }


def gpu_request(pod: dict[str, Any]) -> int:
    """GPUs a pod holds: per container the limit (or request) of any catalogue GPU resource."""
    total = 0
    for container in pod.get("spec", {}).get("containers") or []:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for name in gpu_resource_names():
            total += int(limits.get(name) or requests.get(name) or 0)
    return total


def gpu_allocatable(node: dict[str, Any]) -> int:
    """GPUs a node offers: its allocatable amount of any catalogue GPU resource."""
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return sum(int(allocatable.get(name) or 0) for name in gpu_resource_names())


def _terminated_reason(pod: dict[str, Any]) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode', '?')})"
    return ""


def _stuck_reason(pod: dict[str, Any]) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return ""


def observe_pod(pod: dict[str, Any]) -> tuple[str, str]:
    """(phase, reason) as orch sees a pod: Running, Pending, or Failed with the cluster's reason.

    A member that exits is a failure too: gang members are expected to run until orch deletes them.
    """
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Failed", "Terminating"
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or _terminated_reason(pod) or phase
        if status.get("message"):
            reason = f"{reason}: {status['message']}"
        return "Failed", reason
    stuck = _stuck_reason(pod)
    if stuck:
        return "Failed", stuck
    if phase == "Running":
        return "Running", ""
    return "Pending", ""

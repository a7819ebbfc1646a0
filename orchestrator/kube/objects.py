"""Kubernetes objects orch writes, and how it reads pods back: pure functions over plain dicts."""

from __future__ import annotations

import math
import re
import shlex
from typing import Any

from orchestrator.core.members import ENGINE, TRAINER, desired_members, workload_name
from orchestrator.core.ports import ENGINE_PORT_ENV, ENGINE_PORTS_ENV, ENGINE_URLS_ENV
from orchestrator.errors import SpecError
from orchestrator.hardware import GPU_TYPE_ENV, GPU_TYPES, H100_80GB, gpu_resource_names
from orchestrator.records import Workload
from orchestrator.spec import ResourcesSpec, RunSpec
from orchestrator.spec.launch import engine_launch
from orchestrator.worker.colocated import COMMANDS_ENV, LAUNCHER, EngineCommand, encode_commands
from orchestrator.worker.transport import CONFIGMAP_MAILBOX, MAILBOX_KIND_ENV

__all__ = [
    "ATTEMPT_LABEL",
    "COLOCATED_ANNOTATION",
    "CONFIGMAP_MAILBOX",
    "ENGINE_HOST",
    "ENGINE_MAX_RESTARTS",
    "ENGINE_PORT_NAME",
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
    "colocated_engine_commands",
    "control_configmap",
    "control_name",
    "engine_service",
    "engine_service_name",
    "engine_urls",
    "gpu_allocatable",
    "gpu_request",
    "gpu_resource",
    "observe_pod",
    "owner_reference",
    "pod_manifest",
    "rendezvous_name",
    "rendezvous_service",
    "results_name",
    "security_context",
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
ENGINE_HOST = "0.0.0.0"  # engines are reached over the pod network, at their pod's own IP
ENGINE_PORT_NAME = "http"
SHM_VOLUME, CONTROL_VOLUME = "dshm", "orch-control"
# The startup probe gives an engine ``rollout.engine.startup_timeout_s`` to answer its health path:
# loading a large model from a volume, then compiling and capturing CUDA graphs, takes many minutes, and
# until the startup probe passes the readiness probe does not run. Past it the kubelet kills the container
# and (restartPolicy Always) starts it again, which counts toward ``ENGINE_MAX_RESTARTS``.
STARTUP_PERIOD_S = 10
READINESS_PERIOD_S = 5
PROBE_TIMEOUT_S = 5  # an engine under full load may answer /health slowly; the default 1 s flaps
# Container states that never recover on their own: the member has failed even though the pod is Pending.
# (CrashLoopBackOff is only the wait between restarts of a restartable pod: see ``observe_pod``.)
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CrashLoopBackOff", "CreateContainerConfigError"}
)
# Engine pods are ``restartPolicy: Always``: an engine whose process exits is restarted in place by the
# kubelet (its requests were handed to the other engines by the trainer's balancer) and the gang stays, as
# on Ray (``backends/ray/member.RestartPolicy``, the same bound). Restarted more often than this, it is a
# crash loop and observed as failed, which is a gang failure. Trainer pods are ``restartPolicy: Never``: a
# trainer's exit is the gang's failure, resumed from the last checkpoint by a new attempt.
ENGINE_MAX_RESTARTS = 5
RESTART_POLICIES = {TRAINER: "Never", ENGINE: "Always"}


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


def engine_service_name(run_id: str) -> str:
    """Headless Service in front of a run's engine pods: each is ``<pod>.<service>.<namespace>.svc``."""
    return f"{run_id}-engines"


def engine_service(run_id: str, namespace: str, owner: dict[str, Any], port: int) -> dict[str, Any]:
    """The run's engines' Service (all attempts: pod names carry the attempt). Headless, so every engine
    gets its own DNS name (pods set ``hostname`` and ``subdomain``) and the trainer picks the engine."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": engine_service_name(run_id),
            "namespace": namespace,
            "labels": {RUN_LABEL: run_id, ROLE_LABEL: ENGINE},
            "ownerReferences": [owner],
        },
        "spec": {
            "clusterIP": "None",
            # Resolvable as soon as the pod has an IP: the trainer waits on each engine's health itself.
            "publishNotReadyAddresses": True,
            "selector": {RUN_LABEL: run_id, ROLE_LABEL: ENGINE},
            "ports": [{"name": ENGINE_PORT_NAME, "port": port, "targetPort": ENGINE_PORT_NAME}],
        },
    }


def engine_urls(spec: RunSpec, run_id: str, attempt: int, namespace: str, ports: str = "") -> list[str]:
    """The base URLs of one attempt's engines, by index.

    An engine pod has an IP of its own, so it listens on ``rollout.engine.port`` and is named through the
    run's engine Service. A colocated engine lives in the pod of the trainer member that hosts it (the same
    assignment as ``desired_members``), reached through the rendezvous Service on the port the placement
    gave it (``ports``: ``ORCH_ENGINE_PORTS``, by engine index), since several share that pod's IP.
    """
    port = spec.rollout.engine.port
    if not spec.colocated:
        service = engine_service_name(run_id)
        return [
            f"http://{workload_name(run_id, ENGINE, index, attempt)}.{service}.{namespace}.svc:{port}"
            for index in range(spec.rollout.engines)
        ]
    numbers = [int(each) for each in ports.split(",") if each.strip()]
    if len(numbers) != spec.rollout.engines:
        numbers = [port + index for index in range(spec.rollout.engines)]
    hosts = {m.index: m.same_node_as for m in desired_members(spec, run_id, attempt) if m.role == ENGINE}
    service = rendezvous_name(run_id, attempt)
    return [
        f"http://{hosts[index]}.{service}.{namespace}.svc:{numbers[index]}"
        for index in range(spec.rollout.engines)
    ]


def colocated_engine_commands(spec: RunSpec, trainer: Workload, stage_index: int) -> list[EngineCommand]:
    """The engines the trainer member ``trainer`` hosts (``desired_members``' assignment), as its
    container's launcher starts them (``orchestrator.worker.colocated``): each bound to ``0.0.0.0`` on the
    port the placement gave it (``ORCH_ENGINE_PORTS``, by index), with its own member's env, and, on a
    trainer with GPUs, its own slice of the container's GPUs (``CUDA_VISIBLE_DEVICES``: the hosted engines
    divide the member's GPUs, ``rollout.gpus_per_engine`` each, in order)."""
    ports = [int(each) for each in trainer.env.get(ENGINE_PORTS_ENV, "").split(",") if each.strip()]
    base = spec.rollout.engine.port
    hosted = [
        m
        for m in desired_members(spec, trainer.run_id, trainer.attempt)
        if m.role == ENGINE and m.same_node_as == trainer.name
    ]
    tp = spec.rollout.gpus_per_engine
    commands = []
    for slot, member in enumerate(sorted(hosted, key=lambda m: m.index)):
        port = ports[member.index] if len(ports) == spec.rollout.engines else base + member.index
        launch = engine_launch(spec, stage_index, host=ENGINE_HOST, port=port)
        env = {
            **launch.env,
            "ORCH_RUN_ID": trainer.run_id,
            "ORCH_ROLE": ENGINE,
            "ORCH_ATTEMPT": str(trainer.attempt),
            "ORCH_ENGINE_INDEX": str(member.index),
            ENGINE_PORT_ENV: str(port),
            "ORCH_COLOCATED_WITH": trainer.name,
        }
        if GPU_TYPE_ENV in trainer.env:
            env[GPU_TYPE_ENV] = trainer.env[GPU_TYPE_ENV]
        if trainer.gpus:
            devices = [(slot * tp + k) % trainer.gpus for k in range(tp)]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        commands.append(
            EngineCommand(
                name=member.key,
                argv=launch.argv,
                port=port,
                health_path=launch.health_path,
                startup_timeout_s=spec.rollout.engine.startup_timeout_s,
                env=env,
            )
        )
    return commands


def security_context(spec: RunSpec | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod, container) securityContext: no privilege escalation, no capabilities, the runtime's seccomp
    profile always; non-root and a uid where the spec says the image allows it (``kubernetes``)."""
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    settings = spec.kubernetes if spec is not None else None
    if settings is not None and settings.run_as_non_root:
        pod["runAsNonRoot"] = True
    if settings is not None and settings.run_as_user is not None:
        uid = settings.run_as_user
        pod.update(runAsUser=uid, runAsGroup=uid, fsGroup=uid)
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _resources(workload: Workload, resources: ResourcesSpec | None) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources is not None:
        for amounts, out in ((resources.requests, requests), (resources.limits, limits)):
            out.update({name: value for name, value in amounts.model_dump().items() if value is not None})
    if workload.gpus:
        requests[gpu_resource(workload)] = limits[gpu_resource(workload)] = str(workload.gpus)
    return {key: value for key, value in (("requests", requests), ("limits", limits)) if value}


def _env_list(env: dict[str, str], secrets: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in sorted(env.items())]
    for name, ref in sorted(secrets.items()):
        secret, _, key = ref.partition("/")
        items.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return items


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": ENGINE_PORT_NAME},
        "periodSeconds": period_s,
        "timeoutSeconds": PROBE_TIMEOUT_S,
        "failureThreshold": failures,
    }


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
    spec: RunSpec | None = None,
    stage_index: int = 0,
    trainer_service_account: str = TRAINER_SERVICE_ACCOUNT,
) -> dict[str, Any]:
    """One gang member or engine, pinned to the node placement chose, running what ``spec`` launches.

    - a trainer runs ``trainer.command`` (split as a shell would) in ``trainer.image``, with
      ``trainer.env``, its mailbox (the ConfigMap transport) and the engines' URLs (``engine_urls``), as
      ``trainer_service_account`` with its token mounted, to reach the mailbox through the API; when it
      hosts colocated engines, the command is wrapped by ``orchestrator.worker.colocated``'s launcher,
      which starts them (``colocated_engine_commands``) in the container before the trainer;
    - an engine runs ``engine_launch`` of curriculum stage ``stage_index``, bound to ``0.0.0.0`` on
      ``rollout.engine.port``, with a startup and a readiness probe on its health path; it never calls the
      API, so it gets no token at all, and it is named through the run's engine Service.

    Both get their role's CPU and memory, a memory-backed ``/dev/shm``, their Secrets as env, the run's
    volumes and pull secrets, and a locked-down securityContext (``security_context``). Without ``spec``
    the pod runs the run's image's own entry point (a member created outside a controller pass).
    """
    trainer = workload.role == TRAINER
    service = (
        rendezvous_name(workload.run_id, workload.attempt)
        if trainer
        else engine_service_name(workload.run_id)
    )
    env = dict(workload.env)
    secrets: dict[str, str] = {}
    roles = {workload.role}  # whose volumes the pod mounts: a trainer's also its colocated engines'
    container: dict[str, Any] = {"name": workload.role, "image": workload.image}
    if trainer:
        master = workload.name.replace(f"-trainer-{workload.index}-", "-trainer-0-")
        env["ORCH_MASTER_ADDR"] = f"{master}.{service}.{namespace}.svc"
        env[MAILBOX_KIND_ENV] = CONFIGMAP_MAILBOX
        env[NAMESPACE_ENV] = namespace
    if spec is not None and trainer:
        urls = engine_urls(spec, workload.run_id, workload.attempt, namespace, env.get(ENGINE_PORTS_ENV, ""))
        if not spec.colocated:
            env[ENGINE_PORTS_ENV] = ",".join([str(spec.rollout.engine.port)] * spec.rollout.engines)
        env = {**spec.trainer.env, **env, ENGINE_URLS_ENV: ",".join(urls)}
        secrets = dict(spec.trainer.env_from_secrets)
        container["image"] = spec.trainer.image or spec.image
        container["command"] = shlex.split(spec.trainer.command)
        engines = colocated_engine_commands(spec, workload, stage_index) if spec.colocated else []
        if engines:
            # Kubernetes expands $(VAR) in env values: $$ keeps the commands' own references for the
            # launcher, which expands them per engine, as an engine pod's command would be.
            env[COMMANDS_ENV] = encode_commands(engines).replace("$", "$$")
            container["command"] = [*LAUNCHER, "--", *container["command"]]
            secrets = {**spec.rollout.engine.env_from_secrets, **secrets}
            roles.add(ENGINE)
    elif spec is not None:
        engine = spec.rollout.engine
        launch = engine_launch(spec, stage_index, host=ENGINE_HOST, port=engine.port)
        env = {**launch.env, **env, ENGINE_PORT_ENV: str(launch.port)}
        secrets = dict(engine.env_from_secrets)
        container.update(
            image=launch.image,
            command=list(launch.argv),
            ports=[{"name": ENGINE_PORT_NAME, "containerPort": launch.port, "protocol": "TCP"}],
            startupProbe=_probe(
                launch.health_path, STARTUP_PERIOD_S, math.ceil(engine.startup_timeout_s / STARTUP_PERIOD_S)
            ),
            readinessProbe=_probe(launch.health_path, READINESS_PERIOD_S, 3),
        )
    role_spec = None if spec is None else spec.trainer if trainer else spec.rollout.engine
    pod_security, container_security = security_context(spec)
    container["env"] = _env_list(env, secrets)
    resources = _resources(workload, None if role_spec is None else role_spec.resources)
    if resources:
        container["resources"] = resources
    container["securityContext"] = container_security
    mounts: list[dict[str, Any]] = [{"name": CONTROL_VOLUME, "mountPath": "/etc/orch", "readOnly": True}]
    volumes: list[dict[str, Any]] = [
        {"name": CONTROL_VOLUME, "configMap": {"name": control_name(workload.run_id)}}
    ]
    if role_spec is not None and spec is not None:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
        volumes.append(
            {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": role_spec.shm_size}}
        )
        for volume in spec.kubernetes.volumes:
            if roles & set(volume.roles):
                mounts.append(
                    {"name": volume.name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
                )
                claim = {"claimName": volume.claim, "readOnly": volume.read_only}
                volumes.append({"name": volume.name, "persistentVolumeClaim": claim})
    container["volumeMounts"] = mounts
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
        if trainer
        else {"automountServiceAccountToken": False}
    )
    pod_spec: dict[str, Any] = {
        **identity,
        "restartPolicy": RESTART_POLICIES.get(workload.role, "Never"),
        "hostname": workload.name,
        "subdomain": service,
        "priorityClassName": PRIORITY_CLASSES.get(workload.role, "orch-rollout"),
        "nodeSelector": {pool_label: workload.pool, "kubernetes.io/hostname": workload.node},
        "tolerations": [{"key": gpu_resource(workload), "operator": "Exists", "effect": "NoSchedule"}],
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    if spec is not None and spec.kubernetes.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.kubernetes.image_pull_secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


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
            return _exit_text(terminated)
    return ""


def _exit_text(terminated: dict[str, Any]) -> str:
    return f"{terminated.get('reason') or 'Error'} (exit code {terminated.get('exitCode', '?')})"


def _stuck_reason(pod: dict[str, Any], restartable: bool) -> str:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_REASONS and not (restartable and reason == "CrashLoopBackOff"):
            return f"{reason}: {waiting.get('message', '')}".rstrip(": ")
    return ""


def _crash_loop(pod: dict[str, Any]) -> str:
    """Why a restartable pod has failed: a container restarted more than ``ENGINE_MAX_RESTARTS`` times."""
    for status in pod.get("status", {}).get("containerStatuses") or []:
        restarts = int(status.get("restartCount") or 0)
        if restarts > ENGINE_MAX_RESTARTS:
            last = (status.get("lastState") or {}).get("terminated")
            tail = f", last {_exit_text(last)}" if last else ""
            return f"CrashLoopBackOff: container {status.get('name', '')} restarted {restarts} times{tail}"
    return ""


def observe_pod(pod: dict[str, Any]) -> tuple[str, str]:
    """(phase, reason) as orch sees a pod: Running, Pending, or Failed with the cluster's reason.

    A member that exits is a failure too: gang members are expected to run until orch deletes them. A pod
    the kubelet restarts in place (``restartPolicy: Always``, engines) is still running while it restarts,
    until it has restarted more than ``ENGINE_MAX_RESTARTS`` times (a crash loop).
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
    restartable = (pod.get("spec") or {}).get("restartPolicy") in ("Always", "OnFailure")
    stuck = (_crash_loop(pod) if restartable else "") or _stuck_reason(pod, restartable)
    if stuck:
        return "Failed", stuck
    if phase == "Running":
        return "Running", ""
    return "Pending", ""

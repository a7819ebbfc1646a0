"""The Kubernetes backend: GPU node pools, gang members and engines as pods, fed by watches.

- Pools are nodes labelled ``orch.dev/pool=<name>`` (key configurable); a node's capacity is its
  allocatable GPUs (``nvidia.com/gpu`` or ``amd.com/gpu``) minus GPUs of pods orch did not create
  that are bound there (orch's own pods are accounted in SQL); cordoned or NotReady nodes are not
  capacity. A pod requests its pool's GPU type's resource name (``orchestrator.hardware``).
- Every workload is a pod with a deterministic name, pinned by nodeSelector to the node the gang
  placement chose; trainer members share a headless Service for rendezvous. Engines colocated with
  the trainer run inside its pods, started by the trainer container's launcher
  (``orchestrator.worker.colocated``), and are reported from the host pod's annotation.
- All objects of a run are owned by its control ConfigMap, itself owned by the TrainingRun when
  the run came from one, so deleting the TrainingRun (or the ConfigMap) deletes everything.
- Informers (list + watch with resourceVersion, re-list on 410 Gone) keep caches that every read
  uses, and wake the controller when anything changes.

Why pods and not Indexed Jobs / StatefulSets: the controller already is the level-triggered owner
of every member, and a Job or StatefulSet would restart failed members on its own, which is
exactly what a gang must not do (a partial gang has to be torn down and recreated as a whole). The one
restart orch wants is an engine's, in place: engine pods are ``restartPolicy: Always`` and a restarted
engine is still a running member until it crash-loops (``objects.observe_pod``); trainers never restart.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.backends.base import ClusterEvent, ExecutionInterrupted
from orchestrator.core.placement import NodeView
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.kube.api import (
    CONFLICT,
    NOT_FOUND,
    api_client_from_environment,
    transient_kube_error,
)
from orchestrator.kube.informer import Changes, Informer
from orchestrator.kube.objects import (
    ATTEMPT_LABEL,
    COLOCATED_ANNOTATION,
    MERGE_PATCH,
    ROLE_LABEL,
    RUN_LABEL,
    TRAINER_SERVICE_ACCOUNT,
    check_service_account,
    closed_key,
    control_configmap,
    control_name,
    engine_service,
    gpu_allocatable,
    gpu_request,
    observe_pod,
    owner_reference,
    pod_manifest,
    rendezvous_service,
)
from orchestrator.records import Workload
from orchestrator.spec import PoolSpec, RunSpec

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL_LABEL",
    "KubeCluster",
    "api_client_from_environment",
    "transient_kube_error",
]

DEFAULT_NAMESPACE = "orch"
DEFAULT_POOL_LABEL = "orch.dev/pool"
ZONE_LABEL = "topology.kubernetes.io/zone"  # the well-known label; the topology placement plugin reads it
RACK_LABEL = "orch.dev/rack"  # no well-known rack label exists; operators label their nodes with this one


def _ready(node: dict[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class KubeCluster:
    """``ClusterBackend`` over the Kubernetes API (the official client, unmodified)."""

    name = "kube"

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str = DEFAULT_NAMESPACE,
        pool_label: str = DEFAULT_POOL_LABEL,
        *,
        trainer_service_account: str = TRAINER_SERVICE_ACCOUNT,
        watch_timeout_s: int = 5,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.pool_label = pool_label
        self.trainer_service_account = check_service_account(trainer_service_account)
        self.changes = Changes()
        informer = {"changes": self.changes, "watch_timeout_s": watch_timeout_s}
        self.pods = Informer(self.core.list_namespaced_pod, namespace, label_selector=RUN_LABEL, **informer)
        self.configmaps = Informer(
            self.core.list_namespaced_config_map, namespace, label_selector=RUN_LABEL, **informer
        )
        self.nodes = Informer(self.core.list_node, label_selector=pool_label, **informer)
        # Pods orch did not create still take GPUs: watch the bound, unfinished ones cluster-wide.
        self.foreign_pods = Informer(
            self.core.list_pod_for_all_namespaces,
            label_selector=f"!{RUN_LABEL}",
            field_selector="status.phase!=Succeeded,status.phase!=Failed",
            **informer,
        )
        self._informers = (self.pods, self.configmaps, self.nodes, self.foreign_pods)
        self._owners: dict[str, dict[str, Any]] = {}
        for each in self._informers:
            each.start()
        for each in self._informers:
            each.wait_synced()

    def close(self) -> None:
        for each in self._informers:
            each.stop()

    # ---- ClusterBackend -----------------------------------------------------------------------

    def prepare_pools(self, pools: Mapping[str, PoolSpec]) -> None:
        """Nothing to create: pools are labelled nodes. Placement reports a pool with no nodes."""

    def list_nodes(self) -> list[NodeView]:
        used: dict[str, int] = {}
        for pod in self.foreign_pods.items():
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                used[node] = used.get(node, 0) + gpu_request(pod)
        views = []
        for node in self.nodes.items():
            meta = node["metadata"]
            allocatable = gpu_allocatable(node)
            views.append(
                NodeView(
                    name=meta["name"],
                    pool=meta["labels"][self.pool_label],
                    gpus=max(0, allocatable - used.get(meta["name"], 0)),
                    ready=_ready(node),
                    zone=meta["labels"].get(ZONE_LABEL, ""),
                    rack=meta["labels"].get(RACK_LABEL, ""),
                )
            )
        return sorted(views, key=lambda view: view.name)

    def list_workloads(self, run_id: str | None = None) -> list[ObservedWorkload]:
        observed = []
        for pod in self.pods.items():
            meta = pod["metadata"]
            owner_run = meta["labels"][RUN_LABEL]
            if run_id is not None and owner_run != run_id:
                continue
            phase, reason = observe_pod(pod)
            node = (pod.get("spec") or {}).get("nodeName") or ""
            observed.append(ObservedWorkload(meta["name"], owner_run, node, phase, reason))
            hosted = (meta.get("annotations") or {}).get(COLOCATED_ANNOTATION, "")
            for engine in filter(None, hosted.split(",")):
                host_reason = f"host {meta['name']}: {reason}" if reason else ""
                observed.append(ObservedWorkload(engine, owner_run, node, phase, host_reason))
        return observed

    def create_workload(self, workload: Workload) -> bool:
        """Without a spec: the pod runs its image's own entry point (see ``create_workloads``)."""
        return workload.colocated or self._create_member(workload, None, 0)

    def create_workloads(
        self, workloads: Sequence[Workload], *, spec: RunSpec | None = None, stage_index: int = 0
    ) -> int:
        """Create each member's pod, running what ``spec`` (their run's, at curriculum stage
        ``stage_index``) launches (``pod_manifest``); returns how many pods were created (members
        found by name, and colocated engines, are success but not created)."""
        if spec is not None:
            # One Service names all of a run's engine pods (their pod names carry the attempt).
            for run_id in sorted({w.run_id for w in workloads if w.role == "engine" and not w.colocated}):
                owner = self._run_owner(run_id)
                body = engine_service(run_id, self.namespace, owner, spec.rollout.engine.port)
                self._create(self.core.create_namespaced_service, body)
        return sum(self._create_member(workload, spec, stage_index) for workload in workloads)

    def _create_member(self, workload: Workload, spec: RunSpec | None, stage_index: int) -> bool:
        if workload.colocated:
            return False  # runs inside its host pod, reported through the host's annotation
        owner = self._run_owner(workload.run_id)
        if workload.role == "trainer":
            self._create(
                self.core.create_namespaced_service, rendezvous_service(workload, self.namespace, owner)
            )
        return self._create(
            self.core.create_namespaced_pod,
            pod_manifest(
                workload,
                self.namespace,
                self.pool_label,
                owner,
                spec=spec,
                stage_index=stage_index,
                trainer_service_account=self.trainer_service_account,
            ),
        )

    def delete_workload(self, name: str) -> bool:
        """Delete the member's pod; a trainer's attempt is closed first (``closed-a<attempt>`` in the
        control ConfigMap), so its ``work()`` loop ends cleanly within the deletion's grace period."""
        pod = next((pod for pod in self.pods.items() if pod["metadata"]["name"] == name), None)
        if pod is None:
            return False  # never created (a colocated engine) or already gone: nothing to call
        labels = pod["metadata"].get("labels") or {}
        if labels.get(ROLE_LABEL) == "trainer" and labels.get(ATTEMPT_LABEL, "").isdigit():
            self.close_attempt(labels[RUN_LABEL], int(labels[ATTEMPT_LABEL]))
        try:
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=30)
        except ApiException as error:
            if error.status == NOT_FOUND:
                return False
            raise
        return True

    def sweep(self, finished_runs: Collection[str]) -> int:
        """Delete the ConfigMaps of finished runs; the control ConfigMap's dependents (Services,
        leftover pods) go with it through owner-reference garbage collection."""
        deleted = 0
        for configmap in self.configmaps.items():
            meta = configmap["metadata"]
            if meta["labels"][RUN_LABEL] not in finished_runs:
                continue
            try:
                self.core.delete_namespaced_config_map(meta["name"], self.namespace)
                deleted += 1
            except ApiException as error:
                if error.status != NOT_FOUND:
                    raise
        return deleted

    def watch(self, since: int, timeout_s: float) -> tuple[int, list[ClusterEvent]]:
        """Wakes on any informer change; the controller re-reads the caches (level-triggered)."""
        return self.changes.wait(since, timeout_s), []

    # ---- the run's anchor ---------------------------------------------------------------------

    def ensure_control(self, run_id: str, owner: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's control ConfigMap (created once); returns it as the API server has it."""
        cached = self.configmaps.get(self.namespace, control_name(run_id))
        if cached is not None:
            return cached
        body = control_configmap(run_id, self.namespace, owner)
        try:
            return self.core.create_namespaced_config_map(self.namespace, body, _preload_content=False).json()
        except ApiException as error:
            if error.status != CONFLICT:
                raise
        # Someone created it first: the watch delivers it shortly (no extra RBAC verb needed to read it).
        deadline = time.monotonic() + 10
        while (cached := self.configmaps.get(self.namespace, control_name(run_id))) is None:
            if time.monotonic() > deadline:
                raise ExecutionInterrupted(
                    f"run {run_id}: its control ConfigMap exists but never arrived by watch"
                )
            time.sleep(0.05)
        return cached

    def close_attempt(self, run_id: str, attempt: int) -> None:
        """Tell ``attempt``'s trainer that no more work comes (the trainer transport's ``closed``)."""
        control = self.configmaps.get(self.namespace, control_name(run_id))
        key = closed_key(attempt)
        if control is None or key in (control.get("data") or {}):
            return  # no mailbox (a run that never posted work) or closed already
        try:
            self.core.patch_namespaced_config_map(
                control_name(run_id),
                self.namespace,
                {"data": {key: ""}},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as error:
            if error.status != NOT_FOUND:
                raise

    def _run_owner(self, run_id: str) -> dict[str, Any]:
        if run_id not in self._owners:
            self._owners[run_id] = owner_reference(self.ensure_control(run_id))
        return self._owners[run_id]

    @staticmethod
    def _create(create: Any, body: dict[str, Any]) -> bool:
        namespace = body["metadata"]["namespace"]
        try:
            create(namespace, body, _preload_content=False)
        except ApiException as error:
            if error.status == CONFLICT:
                return False  # deterministic name already taken: it is ours, created before
            raise
        return True

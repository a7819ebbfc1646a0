"""The embedded simulated GPU pool: nodes of simulated GPUs (each pool's ``gpu_type``) and their workloads.

It lives inside the controller's process, like a cluster that disappears when the controller
dies: a restarted controller finds none of its workloads and must recover the run from SQL
and its last checkpoint. Faults (a pod crash, a node loss) can be injected at a given step.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from orchestrator.backends.base import ClusterEvent
from orchestrator.core.placement import NodeView
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.errors import SpecError
from orchestrator.records import Workload
from orchestrator.sim.pool_telemetry import SimTelemetry
from orchestrator.spec import PoolSpec
from orchestrator.spec.inventory import CLUSTER_FILE_ENV, ClusterFile, load_cluster_file

__all__ = ["FAULTS_ENV", "Fault", "SimCluster", "parse_faults"]

FAULTS_ENV = "ORCH_SIM_FAULTS"
FAULT_KINDS = ("pod_crash", "node_loss")


@dataclass(frozen=True)
class Fault:
    """Fire once, just before a run executes step ``at_step`` for the first time in this process."""

    kind: str  # pod_crash | node_loss
    at_step: int


def parse_faults(text: str) -> tuple[Fault, ...]:
    """``"node_loss@5,pod_crash@3"`` → faults; one clear error for a bad item."""
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, step = item.partition("@")
        if kind not in FAULT_KINDS or not step.isdigit() or int(step) < 1:
            raise SpecError(
                f"{FAULTS_ENV}: bad fault {item!r}; write KIND@STEP with KIND one of {', '.join(FAULT_KINDS)}"
            )
        faults.append(Fault(kind, int(step)))
    return tuple(faults)


@dataclass
class _Node:
    name: str
    pool: str
    gpus: int
    ready: bool = True
    zone: str = ""
    rack: str = ""


@dataclass
class _Pod:
    workload: Workload
    phase: str = "Running"
    reason: str = ""
    gpu_indices: tuple[int, ...] = ()


class SimCluster:
    """Simulated nodes and workloads; thread-safe; every change bumps a resource version."""

    name = "sim"

    def __init__(
        self,
        pools: Mapping[str, PoolSpec] | None = None,
        *,
        autoprovision: bool = True,
        faults: Iterable[Fault] = (),
    ) -> None:
        self._lock = threading.Condition()
        self._nodes: dict[str, _Node] = {}
        self._pods: dict[str, _Pod] = {}
        self._events: list[ClusterEvent] = []
        self._version = 0
        self._replacements = 0
        self.autoprovision = autoprovision
        self.faults = tuple(faults)
        self._fired: set[tuple[str, Fault]] = set()
        self.created: list[str] = []  # every successful create, in order: lets tests prove none repeats
        self.telemetry = SimTelemetry()
        for name, pool in (pools or {}).items():
            self._add_pool(name, pool)

    @classmethod
    def from_env(cls) -> SimCluster:
        """Faults from ``ORCH_SIM_FAULTS``; the nodes of the cluster file ``ORCH_SIM_CLUSTER`` if set (then
        a run names one of its pools), else each run's pools made on first sight."""
        faults = parse_faults(os.environ.get(FAULTS_ENV, ""))
        path = os.environ.get(CLUSTER_FILE_ENV, "").strip()
        if not path:
            return cls(faults=faults)
        return cls.from_inventory(load_cluster_file(path), faults=faults)

    @classmethod
    def from_inventory(cls, inventory: ClusterFile, *, faults: Iterable[Fault] = ()) -> SimCluster:
        """The nodes of a cluster file, and no others."""
        cluster = cls(autoprovision=False, faults=faults)
        for name, pool in inventory.pools.items():
            for index in range(pool.nodes):
                node = f"sim-{name}-{index}"
                zone, rack = pool.topology(index)
                cluster._nodes[node] = _Node(node, name, pool.gpus_per_node, zone=zone, rack=rack)
        return cluster

    def _add_pool(self, name: str, pool: PoolSpec) -> None:
        for index in range(pool.nodes):
            node = f"sim-{name}-{index}"
            self._nodes[node] = _Node(node, name, pool.gpus_per_node)

    # ---- ClusterBackend -------------------------------------------------------------------

    def prepare_pools(self, pools: Mapping[str, PoolSpec]) -> None:
        with self._lock:
            known = {node.pool for node in self._nodes.values()}
            for name, pool in pools.items():
                if name not in known and self.autoprovision:
                    self._add_pool(name, pool)

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            return [NodeView(n.name, n.pool, n.gpus, n.ready, n.zone, n.rack) for n in self._nodes.values()]

    def list_workloads(self, run_id: str | None = None) -> list[ObservedWorkload]:
        with self._lock:
            return [
                self._observed(pod)
                for pod in self._pods.values()
                if run_id is None or pod.workload.run_id == run_id
            ]

    def create_workload(self, workload: Workload) -> bool:
        with self._lock:
            if workload.name in self._pods:
                return False
            node = self._nodes.get(workload.node)
            pod = _Pod(workload, gpu_indices=self._free_indices(workload))
            if node is None or not node.ready:
                pod.phase, pod.reason = "Failed", f"NodeLost: node {workload.node} is not ready"
            self._pods[workload.name] = pod
            self.created.append(workload.name)
            self._emit("ADDED", pod)
            return True

    def delete_workload(self, name: str) -> bool:
        with self._lock:
            pod = self._pods.pop(name, None)
            if pod is None:
                return False
            self.telemetry.release(pod.workload.node, pod.gpu_indices)
            self._emit("DELETED", pod)
            return True

    def watch(self, since: int, timeout_s: float) -> tuple[int, list[ClusterEvent]]:
        with self._lock:
            if self._version <= since and timeout_s > 0:
                self._lock.wait(timeout_s)
            return self._version, [event for event in self._events if event.resource_version > since]

    def sweep(self, finished_runs: Collection[str]) -> int:
        """The simulated pool keeps nothing for a run beyond its workloads."""
        return 0

    # ---- simulation -----------------------------------------------------------------------

    def _free_indices(self, workload: Workload) -> tuple[int, ...]:
        if workload.gpus == 0:
            return ()
        taken = {
            index
            for pod in self._pods.values()
            if pod.workload.node == workload.node and pod.phase != "Failed"
            for index in pod.gpu_indices
        }
        free = (
            [i for i in range(self._nodes[workload.node].gpus) if i not in taken]
            if workload.node in self._nodes
            else []
        )
        return tuple(free[: workload.gpus])

    def gpus_of(self, workload: Workload) -> tuple[int, ...]:
        """GPU indices a workload runs on; a colocated engine shares one of its host's GPUs."""
        with self._lock:
            pod = self._pods.get(workload.name)
            if pod is None:
                return ()
            host_name = workload.env.get("ORCH_COLOCATED_WITH")
            if host_name is None:
                return pod.gpu_indices
            host = self._pods.get(host_name)
            if host is None or not host.gpu_indices:
                return ()
            hosted = host.workload.env.get("ORCH_COLOCATED_ENGINES", "").split(",")
            position = hosted.index(workload.name) if workload.name in hosted else workload.index
            return (host.gpu_indices[position % len(host.gpu_indices)],)

    def pods_of(self, run_id: str, attempt: int) -> list[Workload]:
        with self._lock:
            return [
                p.workload
                for p in self._pods.values()
                if p.workload.run_id == run_id and p.workload.attempt == attempt
            ]

    def gang_running(self, run_id: str, attempt: int) -> bool:
        with self._lock:
            pods = [
                p
                for p in self._pods.values()
                if p.workload.run_id == run_id and p.workload.attempt == attempt
            ]
            return bool(pods) and all(p.phase == "Running" for p in pods)

    def due_fault(self, run_id: str, step: int) -> Fault | None:
        """The fault that fires now for ``run_id`` about to run ``step``, marked fired."""
        with self._lock:
            for fault in self.faults:
                if fault.at_step == step and (run_id, fault) not in self._fired:
                    self._fired.add((run_id, fault))
                    return fault
            return None

    def crash_pod(self, name: str, reason: str = "Error: exit code 137") -> None:
        with self._lock:
            pod = self._pods[name]
            pod.phase, pod.reason = "Failed", reason
            self._emit("MODIFIED", pod)

    def lose_node(self, node_name: str) -> str:
        """The node goes NotReady, its pods fail, and a fresh replacement node joins the pool."""
        with self._lock:
            node = self._nodes[node_name]
            node.ready = False
            for pod in self._pods.values():
                if pod.workload.node == node_name and pod.phase != "Failed":
                    pod.phase, pod.reason = "Failed", f"NodeLost: node {node_name} stopped responding"
                    self._emit("MODIFIED", pod)
            self._replacements += 1
            replacement = f"sim-{node.pool}-r{self._replacements}"
            self._nodes[replacement] = _Node(
                replacement, node.pool, node.gpus, zone=node.zone, rack=node.rack
            )
            return replacement

    def _observed(self, pod: _Pod) -> ObservedWorkload:
        w = pod.workload
        return ObservedWorkload(name=w.name, run_id=w.run_id, node=w.node, phase=pod.phase, reason=pod.reason)

    def _emit(self, kind: str, pod: _Pod) -> None:
        self._version += 1
        self._events.append(ClusterEvent(self._version, kind, self._observed(pod)))
        del self._events[:-1000]
        self._lock.notify_all()

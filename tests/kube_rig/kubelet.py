"""A scripted kubelet + node controller + scheduler for `FakeKubeServer`.

It changes objects through the server's direct helpers (so every change bumps the resourceVersion and reaches
watches), deterministically in `tick()` or from a background thread (`start()` / `stop()`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tests.kube_rig.api_server import FakeKubeServer

__all__ = ["GPU", "Behavior", "FakeKubelet", "Taint", "pod_gpus"]

Obj = dict[str, Any]
Behavior = Callable[[FakeKubeServer], None]
GPU = "nvidia.com/gpu"
_TERMINAL = ("Succeeded", "Failed")
_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Taint:
    """A node taint."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def as_dict(self) -> Obj:
        return {"key": self.key, "value": self.value, "effect": self.effect}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> Obj:
    condition: Obj = {"type": kind, "status": status, "lastTransitionTime": _now()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _set_condition(status: Obj, condition: Obj) -> None:
    """Replace the condition of the same type, keeping its transition time when its status is unchanged."""
    conditions = status.setdefault("conditions", [])
    for index, old in enumerate(conditions):
        if old.get("type") == condition["type"]:
            if old.get("status") == condition["status"] and old.get("lastTransitionTime"):
                condition["lastTransitionTime"] = old["lastTransitionTime"]
            conditions[index] = condition
            return
    conditions.append(condition)


def pod_gpus(pod: Obj) -> int:
    """GPUs a pod needs: the sum over its containers of the nvidia.com/gpu limit (else request)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        amount = (resources.get("limits") or {}).get(GPU) or (resources.get("requests") or {}).get(GPU) or 0
        total += int(amount)
    return total


def _tolerates(tolerations: Iterable[Obj], taint: Obj) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists":
            if not toleration.get("key") or toleration["key"] == taint.get("key"):
                return True
        elif toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
            "value", ""
        ):
            return True
    return False


def _node_ready(node: Obj) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _misfit(pod: Obj, node: Obj, free_gpus: int) -> str:
    """Why the pod cannot go on the node, in the scheduler's words; "" if it fits."""
    spec, node_spec = pod.get("spec") or {}, node.get("spec") or {}
    if not _node_ready(node):
        return "node(s) were not ready"
    if node_spec.get("unschedulable"):
        return "node(s) were unschedulable"
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(key) != value for key, value in (spec.get("nodeSelector") or {}).items()):
        return "node(s) didn't match node selector"
    for taint in node_spec.get("taints") or []:
        if taint.get("effect") in _BLOCKING_EFFECTS and not _tolerates(spec.get("tolerations") or [], taint):
            return f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}"
    if pod_gpus(pod) > free_gpus:
        return f"Insufficient {GPU}"
    return ""


def _unschedulable_message(total: int, reasons: Counter[str]) -> str:
    if total == 0:
        return "no nodes available to schedule pods"
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return f"0/{total} nodes are available: {parts}."


class FakeKubelet:
    """Schedules pending pods onto fake GPU nodes, runs them, and injects failures on request.

    `behaviors` are callables `(server) -> None` run at the end of every tick (e.g. a scripted trainer).
    """

    def __init__(self, server: FakeKubeServer, behaviors: Iterable[Behavior] = ()) -> None:
        self.server = server
        self.behaviors: list[Behavior] = list(behaviors)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pull_failures: set[tuple[str, str]] = set()
        self._next_ip = 1

    # -- nodes ---------------------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        gpus: int = 8,
        labels: dict[str, str] | None = None,
        taints: Iterable[Taint | Obj] = (),
        ready: bool = True,
        unschedulable: bool = False,
    ) -> Obj:
        """Create (or replace) a GPU node."""
        resources = {GPU: str(gpus), "cpu": "96", "memory": "1Ti", "pods": "110"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {
                "unschedulable": unschedulable,
                "taints": [t.as_dict() if isinstance(t, Taint) else dict(t) for t in taints],
            },
            "status": {
                "capacity": dict(resources),
                "allocatable": dict(resources),
                "conditions": [
                    _condition(
                        "Ready", "True" if ready else "False", "KubeletReady" if ready else "KubeletNotReady"
                    )
                ],
                "addresses": [{"type": "Hostname", "address": name}],
            },
        }
        return self.server.put_object(node)

    def cordon(self, name: str) -> None:
        self._update_node(name, lambda node: node.setdefault("spec", {}).update(unschedulable=True))

    def uncordon(self, name: str) -> None:
        self._update_node(name, lambda node: node.setdefault("spec", {}).update(unschedulable=False))

    def lose_node(self, name: str) -> None:
        """The node stops reporting: Ready=Unknown, unreachable taint, its live pods fail with NodeLost."""

        def change(node: Obj) -> None:
            _set_condition(
                node.setdefault("status", {}),
                _condition("Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status."),
            )
            taints = node.setdefault("spec", {}).setdefault("taints", [])
            if not any(t.get("key") == "node.kubernetes.io/unreachable" for t in taints):
                taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"})

        with self._lock:
            self._update_node(name, change)
            for pod in self._pods():
                if pod["spec"].get("nodeName") == name:
                    message = f"Node {name} which was running pod {pod['metadata']['name']} is unresponsive"
                    self._update_pod(pod, lambda p, m=message: self._fail_live(p, "NodeLost", m))

    def restore_node(self, name: str) -> None:
        """The node is back: Ready=True and no unreachable taint."""

        def change(node: Obj) -> None:
            _set_condition(node.setdefault("status", {}), _condition("Ready", "True", "KubeletReady"))
            spec = node.setdefault("spec", {})
            spec["taints"] = [
                t for t in spec.get("taints") or [] if t.get("key") != "node.kubernetes.io/unreachable"
            ]

        self._update_node(name, change)

    def _update_node(self, name: str, change: Callable[[Obj], None]) -> None:
        if self.server.update_object("", "nodes", None, name, change) is None:
            raise KeyError(f"no node {name!r}")

    # -- failure injection ---------------------------------------------------------------------------------
    def fail_pod(self, namespace: str, name: str, reason: str = "Error", exit_code: int = 1) -> None:
        """Its containers terminate with `reason` / `exit_code` (e.g. "OOMKilled", 137); phase Failed."""
        self._update_pod_named(namespace, name, lambda pod: self._terminate(pod, "", "", reason, exit_code))

    def succeed_pod(self, namespace: str, name: str) -> None:
        """Its containers exit 0; phase Succeeded."""

        def change(pod: Obj) -> None:
            self._terminate(pod, "", "", "Completed", 0)
            pod["status"]["phase"] = "Succeeded"

        self._update_pod_named(namespace, name, change)

    def evict_pod(self, namespace: str, name: str) -> None:
        """The kubelet evicts it: phase Failed, reason Evicted, DisruptionTarget condition."""

        def change(pod: Obj) -> None:
            self._terminate(pod, "Evicted", "The node was low on resource: memory.", "Error", 137)
            _set_condition(
                pod["status"],
                _condition(
                    "DisruptionTarget",
                    "True",
                    "TerminationByKubelet",
                    "The node was low on resource: memory.",
                ),
            )

        self._update_pod_named(namespace, name, change)

    def image_pull_backoff(self, namespace: str, name: str) -> None:
        """Image pulls fail: phase Pending, containers waiting in ImagePullBackOff (now, or once bound)."""
        with self._lock:
            self._pull_failures.add((namespace, name))
            pod = self.server.get_object("", "pods", namespace, name)
            if pod is None:
                raise KeyError(f"no pod {namespace}/{name}")
            if pod["spec"].get("nodeName"):
                self._update_pod(pod, self._pull_back_off)

    @staticmethod
    def _terminate(pod: Obj, reason: str, message: str, container_reason: str, exit_code: int) -> None:
        status = pod.setdefault("status", {})
        status["phase"] = "Failed"
        for key, value in (("reason", reason), ("message", message)):
            if value:
                status[key] = value
        now = _now()
        status["containerStatuses"] = [
            {
                **_container_status(c, ready=False),
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": container_reason,
                        "startedAt": status.get("startTime", now),
                        "finishedAt": now,
                    }
                },
            }
            for c in pod["spec"].get("containers") or []
        ]
        _set_condition(status, _condition("Ready", "False", "PodFailed"))
        _set_condition(status, _condition("ContainersReady", "False", "PodFailed"))

    @classmethod
    def _fail_live(cls, pod: Obj, reason: str, message: str) -> None:
        if (pod.get("status") or {}).get("phase") not in _TERMINAL:
            cls._terminate(pod, reason, message, "Error", 137)

    @staticmethod
    def _pull_back_off(pod: Obj) -> None:
        status = pod.setdefault("status", {})
        status["phase"] = "Pending"
        status["containerStatuses"] = [
            {
                **_container_status(c, ready=False, started=False),
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{c.get("image", "")}"',
                    }
                },
            }
            for c in pod["spec"].get("containers") or []
        ]
        _set_condition(status, _condition("Ready", "False", "ContainersNotReady"))

    def _update_pod_named(self, namespace: str, name: str, change: Callable[[Obj], None]) -> None:
        with self._lock:
            if self.server.update_object("", "pods", namespace, name, change) is None:
                raise KeyError(f"no pod {namespace}/{name}")

    def _update_pod(self, pod: Obj, change: Callable[[Obj], None]) -> Obj | None:
        meta = pod["metadata"]
        return self.server.update_object("", "pods", meta["namespace"], meta["name"], change)

    # -- the loop ------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One deterministic pass: schedule pending pods, then run the behaviours."""
        with self._lock:
            self._schedule()
            for behavior in list(self.behaviors):
                behavior(self.server)

    def start(self, interval: float = 0.02) -> FakeKubelet:
        """Tick from a background thread until stop()."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, args=(interval,), name="fake-kubelet", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread; re-raise the first error a tick raised there."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as error:  # surfaced by stop()
                self._error = error
                return
            self._stop.wait(interval)

    # -- scheduling ----------------------------------------------------------------------------------------
    def _pods(self) -> list[Obj]:
        """All pods in scheduling order: higher spec.priority first, then oldest, then by namespace/name."""
        pods = self.server.list_objects("", "pods")
        return sorted(
            pods,
            key=lambda p: (
                -int(p["spec"].get("priority") or 0),
                p["metadata"].get("creationTimestamp", ""),
                p["metadata"]["namespace"],
                p["metadata"]["name"],
            ),
        )

    def _schedule(self) -> None:
        nodes = self.server.list_objects("", "nodes")
        pods = self._pods()
        free = {node["metadata"]["name"]: self._free_gpus(node, pods) for node in nodes}
        for pod in pods:
            if self._pending(pod):
                self._place(pod, nodes, free)

    @staticmethod
    def _pending(pod: Obj) -> bool:
        return (
            (pod.get("status") or {}).get("phase", "Pending") == "Pending"
            and not pod["spec"].get("nodeName")
            and not pod["metadata"].get("deletionTimestamp")
        )

    @staticmethod
    def _free_gpus(node: Obj, pods: list[Obj]) -> int:
        allocatable = int(((node.get("status") or {}).get("allocatable") or {}).get(GPU, 0))
        used = sum(
            pod_gpus(p)
            for p in pods
            if p["spec"].get("nodeName") == node["metadata"]["name"]
            and (p.get("status") or {}).get("phase") not in _TERMINAL
        )
        return allocatable - used

    def _place(self, pod: Obj, nodes: list[Obj], free: dict[str, int]) -> None:
        reasons: Counter[str] = Counter()
        for node in nodes:
            name = node["metadata"]["name"]
            reason = _misfit(pod, node, free[name])
            if not reason:
                free[name] -= pod_gpus(pod)
                self._bind(pod, name)
                return
            reasons[reason] += 1
        message = _unschedulable_message(len(nodes), reasons)
        self._update_pod(pod, lambda p: self._mark_unschedulable(p, message))

    @staticmethod
    def _mark_unschedulable(pod: Obj, message: str) -> None:
        status = pod.setdefault("status", {})
        if pod["spec"].get("nodeName"):
            return
        for old in status.get("conditions") or []:
            if (
                old.get("type") == "PodScheduled"
                and old.get("reason") == "Unschedulable"
                and old.get("message") == message
            ):
                return
        _set_condition(status, _condition("PodScheduled", "False", "Unschedulable", message))

    def _bind(self, pod: Obj, node_name: str) -> None:
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        ip = self._pod_ip(*key)

        def change(p: Obj) -> None:
            if p["spec"].get("nodeName"):
                return
            p["spec"]["nodeName"] = node_name
            status = p.setdefault("status", {})
            status.update(podIP=ip, podIPs=[{"ip": ip}], hostIP="192.168.0.1", startTime=_now())
            _set_condition(status, _condition("PodScheduled", "True"))
            if key in self._pull_failures:
                self._pull_back_off(p)
            else:
                self._run_containers(p)

        self._update_pod(pod, change)

    def _pod_ip(self, namespace: str, name: str) -> str:
        """The IP a newly bound pod gets."""
        ip = f"10.244.{self._next_ip // 250}.{self._next_ip % 250 + 1}"
        self._next_ip += 1
        return ip

    def _run_containers(self, pod: Obj) -> None:
        """Its containers start (here at once, Running and Ready); called inside the binding's update."""
        status = pod["status"]
        status["phase"] = "Running"
        for kind in ("Initialized", "ContainersReady", "Ready"):
            _set_condition(status, _condition(kind, "True"))
        status["containerStatuses"] = [
            {**_container_status(c, ready=True), "state": {"running": {"startedAt": status["startTime"]}}}
            for c in pod["spec"].get("containers") or []
        ]


def _container_status(container: Obj, *, ready: bool, started: bool = True) -> Obj:
    image = container.get("image", "")
    return {
        "name": container.get("name", ""),
        "image": image,
        "imageID": f"{image}@sha256:{'0' * 64}",
        "containerID": f"containerd://{container.get('name', '')}",
        "ready": ready,
        "restartCount": 0,
        "started": started,
    }

"""A kubelet for `FakeKubeServer` that runs each pod's container as a local process.

`ProcessKubelet` schedules like `FakeKubelet` (nodes, selectors, taints, GPUs), then, for every pod bound
to a node, runs its one container's ``command`` + ``args`` as a process of its own (its own session, so its
whole process group is signalled; the kernel kills it if the kubelet's thread dies). What it emulates:

- **env**: ``value``; ``valueFrom.secretKeyRef`` (from the fake server's Secrets; a missing one leaves the
  container waiting in ``CreateContainerConfigError``, as the kubelet does); ``valueFrom.fieldRef`` for
  ``metadata.name``, ``metadata.namespace``, ``status.podIP``, ``spec.nodeName``,
  ``spec.serviceAccountName``; ``$(VAR)`` references in env values, command and args are expanded from the
  container's env (``$$(VAR)`` stays literal), as Kubernetes does. ``HOSTNAME`` is the pod's hostname.
- **the pod network**: every pod gets an IP of its own in 127.0.0.0/8 (``127.<a>.<b>.<c>``, from
  127.1.1.1, never twice in one test process; all of it is loopback on Linux), written to
  ``status.podIP``. The processes share the host's network, so
  a pod's "own" address is emulated by rewriting: ``0.0.0.0`` in command and args becomes the pod's IP
  (what it binds), and **"DNS"**: a ``<pod>.<subdomain>.<namespace>.svc[.cluster.local]`` name in an env
  value or argument becomes that pod's IP. A name is resolved by pod name, whether or not the pod exists
  yet (its IP is reserved on first use, then kept), so a trainer created before its engines still finds
  them, as a headless Service with ``publishNotReadyAddresses`` resolves pods as soon as they have an IP.
- **volumes**: each volume is a directory under the pod's directory (``<root>/<namespace>/<pod>/volumes/
  <volume>``): a ``configMap`` with its keys as files (refreshed when the ConfigMap changes), an
  ``emptyDir`` (``/dev/shm`` too) empty, a ``persistentVolumeClaim`` shared by every pod that claims it
  (``<root>/claims/<claim>``). A container cannot see them at their ``mountPath``, so every mount path in
  its command, args, env values and ``workingDir`` is rewritten to the directory (remapped, not mounted).
- **the API token**: a pod that mounts a token (``automountServiceAccountToken`` not false) gets a
  kubeconfig for the fake server in ``KUBECONFIG`` whose bearer token is its ServiceAccount's name, which
  the fake server records as the caller (in-cluster config reads fixed paths under /var/run/secrets, which
  a process here cannot be given).
- **container state**: running; an exit becomes ``terminated`` (``exitCode``, 128 + N and ``signal`` N
  when killed by signal N). Per ``restartPolicy`` (default Always) the container is started again in
  place (``restartCount`` + 1, ``lastState``; at once the first time, then after ``backoff_s`` doubling,
  ``waiting: CrashLoopBackOff`` meanwhile) or the pod ends: Succeeded if it exited 0, else Failed. A
  ``readinessProbe`` ``httpGet`` is tried at the pod's IP and sets ``ready`` and the Ready condition.
- **deletion**: a pod that is gone (the fake server deletes at once) has its process group sent SIGTERM,
  then SIGKILL after ``grace_s``; a container that exits takes the rest of its process group with it.

stdout and stderr go, appended across restarts, to ``<root>/<namespace>/<pod>/<container>.log``.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from base64 import b64decode
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.worker.colocated import expand_references
from tests.kube_rig.api_server import FakeKubeServer
from tests.kube_rig.kubelet import Behavior, FakeKubelet, _condition, _container_status, _now, _set_condition

__all__ = ["ContainerConfigError", "ProcessKubelet"]

_ADDRESSES = itertools.count()

Obj = dict[str, Any]
_DNS = re.compile(r"\b([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.[a-z0-9-]+\.([a-z0-9-]+)\.svc(\.cluster\.local)?\b")
_TERMINAL = ("Succeeded", "Failed")
PR_SET_PDEATHSIG = 1  # prctl(2)


class ContainerConfigError(Exception):
    """The container cannot be started as specified (e.g. a Secret it names is missing)."""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Member:
    """One pod's container process and what the kubelet knows of it."""

    namespace: str
    name: str
    uid: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    next_start: float = 0.0  # monotonic time of the next start while backing off
    last_exit: Obj | None = None
    ready: bool = False
    probed_at: float = 0.0
    volumes_seen: dict[str, str] = field(default_factory=dict)  # ConfigMap volume -> its resourceVersion


class ProcessKubelet(FakeKubelet):
    """`FakeKubelet` whose pods run as local processes; see the module docstring for the emulation."""

    def __init__(
        self,
        server: FakeKubeServer,
        root: Path,
        *,
        base_env: Mapping[str, str],
        grace_s: float = 5.0,
        backoff_s: float = 1.0,
        probe_period_s: float = 0.5,
        behaviors: Iterable[Behavior] = (),
    ) -> None:
        super().__init__(server, behaviors)
        self.root = Path(root)
        self.base_env = {k: v for k, v in base_env.items() if not k.startswith("KUBERNETES_")}
        self.base_env.pop("KUBECONFIG", None)
        self.grace_s = grace_s
        self.backoff_s = backoff_s
        self.probe_period_s = probe_period_s
        self._ips: dict[tuple[str, str], str] = {}
        self._members: dict[str, _Member] = {}  # pod uid -> member
        self._ended: set[str] = set()  # uids of pods whose containers ended for good
        self._stopping: list[threading.Thread] = []

    # -- what tests look at --------------------------------------------------------------------------------
    def ip_of(self, namespace: str, name: str) -> str:
        """The pod's IP (reserved now if the pod has none yet): ``127.<a>.<b>.<c>``."""
        with self._lock:
            key = (namespace, name)
            if key not in self._ips:
                # One counter for the whole test process: a later kubelet never reuses an address a
                # process of an earlier test may still hold (its port in use: the engine could not bind).
                n = next(_ADDRESSES)
                self._ips[key] = f"127.{1 + n // 62500}.{1 + n // 250 % 250}.{1 + n % 250}"
            return self._ips[key]

    def pid(self, namespace: str, name: str) -> int:
        """The pid of the pod's running container process."""
        with self._lock:
            for member in self._members.values():
                process = member.process
                here = (member.namespace, member.name) == (namespace, name)
                if here and process is not None and process.poll() is None:
                    return process.pid
        raise KeyError(f"no running process for pod {namespace}/{name}")

    def log_path(self, namespace: str, name: str, container: str) -> Path:
        return self.root / namespace / name / f"{container}.log"

    # -- FakeKubelet hooks ---------------------------------------------------------------------------------
    def _pod_ip(self, namespace: str, name: str) -> str:
        return self.ip_of(namespace, name)

    def _run_containers(self, pod: Obj) -> None:
        """Bound: the containers are created by the next sync, not here (this runs inside the update)."""
        status = pod["status"]
        _set_condition(status, _condition("Initialized", "True"))
        status["containerStatuses"] = [
            {
                **_container_status(c, ready=False, started=False),
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
            for c in pod["spec"].get("containers") or []
        ]

    def tick(self) -> None:
        with self._lock:
            super().tick()
            self._sync()

    def stop(self) -> None:
        """Stop ticking, then stop every container (SIGTERM, SIGKILL after the grace) and wait for them."""
        try:
            super().stop()
        finally:
            with self._lock:
                for uid in list(self._members):
                    self._stop_member(self._members.pop(uid))
                stopping, self._stopping = self._stopping, []
            for thread in stopping:
                thread.join()

    # -- the sync loop -------------------------------------------------------------------------------------
    def _sync(self) -> None:
        pods = {
            pod["metadata"]["uid"]: pod
            for pod in self.server.list_objects("", "pods")
            if pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp")
        }
        for uid in set(self._members) - set(pods):
            self._stop_member(self._members.pop(uid))
        self._stopping = [thread for thread in self._stopping if thread.is_alive()]
        for uid, pod in pods.items():
            if uid in self._ended or (pod.get("status") or {}).get("phase") in _TERMINAL:
                continue
            member = self._members.get(uid)
            if member is None:
                meta = pod["metadata"]
                member = self._members[uid] = _Member(
                    meta["namespace"], meta["name"], uid, self.root / meta["namespace"] / meta["name"]
                )
            self._sync_member(member, pod)

    def _sync_member(self, member: _Member, pod: Obj) -> None:
        process = member.process
        if process is not None:
            code = process.poll()
            if code is None:
                self._project_config_maps(member, pod)
                self._probe(member, pod)
                return
            self._exited(member, pod, code)
            return
        if time.monotonic() < member.next_start:
            return
        try:
            self._start(member, pod)
        except ContainerConfigError as error:
            self._set_waiting(pod, "CreateContainerConfigError", str(error), member)

    def _start(self, member: _Member, pod: Obj) -> None:
        spec = pod["spec"]
        [container] = spec["containers"]
        ip = self.ip_of(member.namespace, member.name)
        mounts = self._volumes(member, pod)

        def rewrite(text: str) -> str:
            for mount_path, directory in sorted(mounts.items(), key=lambda item: -len(item[0])):
                text = re.sub(rf"(?<![\w./-]){re.escape(mount_path)}(?=/|$|[^\w.-])", str(directory), text)
            return self._resolve_names(text, member.namespace)

        env = self._env(pod, container, ip, rewrite)
        argv = [
            rewrite(expand_references(word, env)).replace("0.0.0.0", ip)
            for word in [*(container.get("command") or []), *(container.get("args") or [])]
        ]
        if not argv:
            raise ContainerConfigError("no command: this kubelet cannot run an image's own entry point")
        working_dir = str(member.directory)
        if container.get("workingDir"):
            working_dir = rewrite(container["workingDir"])
        member.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(member.namespace, member.name, container["name"]), "ab") as log:
            member.process = subprocess.Popen(
                argv,
                cwd=working_dir,
                env={**self.base_env, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        member.started_at = _now()
        member.ready = not container.get("readinessProbe")
        member.probed_at = 0.0
        self._write_status(pod, member, {"running": {"startedAt": member.started_at}})

    def _exited(self, member: _Member, pod: Obj, code: int) -> None:
        assert member.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(member.process.pid, signal.SIGKILL)  # a container's exit ends all of its processes
        member.process = None
        terminated: Obj = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": member.started_at,
            "finishedAt": _now(),
        }
        if code < 0:
            terminated["signal"] = -code
        member.last_exit = terminated
        member.ready = False
        policy = pod["spec"].get("restartPolicy") or "Always"
        if policy == "Always" or (policy == "OnFailure" and code != 0):
            member.restarts += 1
            delay = 0.0 if member.restarts == 1 else min(300.0, self.backoff_s * 2 ** (member.restarts - 2))
            member.next_start = time.monotonic() + delay
            if delay:
                message = f"back-off {delay:g}s restarting failed container"
                self._set_waiting(pod, "CrashLoopBackOff", message, member)
            else:
                self._start(member, pod)
            return
        self._members.pop(member.uid, None)
        self._ended.add(member.uid)

        def end(p: Obj) -> None:
            status = p.setdefault("status", {})
            status["phase"] = "Succeeded" if code == 0 else "Failed"
            status["containerStatuses"] = [
                {
                    **_container_status(c, ready=False),
                    "restartCount": member.restarts,
                    "state": {"terminated": terminated},
                }
                for c in p["spec"].get("containers") or []
            ]
            reason = "PodCompleted" if code == 0 else "PodFailed"
            for kind in ("Ready", "ContainersReady"):
                _set_condition(status, _condition(kind, "False", reason))

        self._update_pod(pod, end)

    def _stop_member(self, member: _Member) -> None:
        """SIGTERM the container's process group, SIGKILL it after the grace period (in a thread)."""
        process = member.process
        member.process = None
        if process is None:
            return

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

        thread = threading.Thread(target=stop, name=f"stop-{member.name}", daemon=True)
        thread.start()
        self._stopping.append(thread)

    # -- status --------------------------------------------------------------------------------------------
    def _write_status(self, pod: Obj, member: _Member, state: Obj) -> None:
        def change(p: Obj) -> None:
            status = p.setdefault("status", {})
            status["phase"] = "Running"
            statuses = []
            for c in p["spec"].get("containers") or []:
                entry = {
                    **_container_status(c, ready=member.ready, started="running" in state),
                    "restartCount": member.restarts,
                    "state": state,
                }
                if member.last_exit is not None:
                    entry["lastState"] = {"terminated": member.last_exit}
                statuses.append(entry)
            status["containerStatuses"] = statuses
            ready = "True" if member.ready and "running" in state else "False"
            reason = "" if ready == "True" else "ContainersNotReady"
            for kind in ("ContainersReady", "Ready"):
                _set_condition(status, _condition(kind, ready, reason))

        self._update_pod(pod, change)

    def _set_waiting(self, pod: Obj, reason: str, message: str, member: _Member) -> None:
        if member.restarts or member.last_exit:
            self._write_status(pod, member, {"waiting": {"reason": reason, "message": message}})
            return

        def change(p: Obj) -> None:
            p["status"]["containerStatuses"] = [
                {
                    **_container_status(c, ready=False, started=False),
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
                for c in p["spec"].get("containers") or []
            ]

        self._update_pod(pod, change)

    def _probe(self, member: _Member, pod: Obj) -> None:
        [container] = pod["spec"]["containers"]
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        now = time.monotonic()
        if probe is None or now - member.probed_at < self.probe_period_s:
            return
        member.probed_at = now
        port = probe.get("port")
        if isinstance(port, str):
            named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
            port = named.get(port)
        url = f"http://{self.ip_of(member.namespace, member.name)}:{port}{probe.get('path', '/')}"
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                ready = 200 <= answer.status < 400
        except OSError:
            ready = False
        if ready != member.ready:
            member.ready = ready
            self._write_status(pod, member, {"running": {"startedAt": member.started_at}})

    # -- env, names, volumes -------------------------------------------------------------------------------
    def _env(self, pod: Obj, container: Obj, ip: str, rewrite: Any) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "status.podIP": ip,
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        }
        env: dict[str, str] = {"HOSTNAME": spec.get("hostname") or meta["name"]}
        if spec.get("automountServiceAccountToken") is not False:
            env["KUBECONFIG"] = str(self._kubeconfig(pod))
        for item in container.get("env") or []:
            source = item.get("valueFrom")
            if source is None:
                value = expand_references(item.get("value", ""), env)
            elif "secretKeyRef" in source:
                value = self._secret(meta["namespace"], source["secretKeyRef"])
            elif "fieldRef" in source:
                path = source["fieldRef"].get("fieldPath", "")
                if path not in fields:
                    raise ContainerConfigError(f"env {item['name']}: fieldRef {path!r} is not emulated")
                value = fields[path]
            else:
                raise ContainerConfigError(f"env {item['name']}: valueFrom {sorted(source)} is not emulated")
            env[item["name"]] = rewrite(value)
        return env

    def _secret(self, namespace: str, ref: Obj) -> str:
        secret = self.server.get_object("", "secrets", namespace, ref["name"])
        if secret is None:
            raise ContainerConfigError(f'secret "{ref["name"]}" not found')
        if ref["key"] in (secret.get("stringData") or {}):
            return str(secret["stringData"][ref["key"]])
        data = secret.get("data") or {}
        if ref["key"] not in data:
            raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}")
        return b64decode(data[ref["key"]]).decode()

    def _resolve_names(self, text: str, namespace: str) -> str:
        return _DNS.sub(lambda match: self.ip_of(match.group(3), match.group(1)), text)

    def _kubeconfig(self, pod: Obj) -> Path:
        account = pod["spec"].get("serviceAccountName") or "default"
        directory = self.root / pod["metadata"]["namespace"] / pod["metadata"]["name"]
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.server.url}}],
            "users": [{"name": account, "user": {"token": account}}],
            "contexts": [
                {
                    "name": "pod",
                    "context": {
                        "cluster": "fake",
                        "user": account,
                        "namespace": pod["metadata"]["namespace"],
                    },
                }
            ],
            "current-context": "pod",
        }
        path.write_text(json.dumps(config))
        return path

    def _volumes(self, member: _Member, pod: Obj) -> dict[str, Path]:
        """mountPath -> the host directory standing in for it; ConfigMap volumes projected."""
        [container] = pod["spec"]["containers"]
        directories: dict[str, Path] = {}
        for volume in pod["spec"].get("volumes") or []:
            if "persistentVolumeClaim" in volume:
                directory = self.root / "claims" / volume["persistentVolumeClaim"]["claimName"]
            else:
                directory = member.directory / "volumes" / volume["name"]
            directory.mkdir(parents=True, exist_ok=True)
            directories[volume["name"]] = directory
        member.volumes_seen.clear()
        self._project_config_maps(member, pod)
        return {m["mountPath"]: directories[m["name"]] for m in container.get("volumeMounts") or []}

    def _project_config_maps(self, member: _Member, pod: Obj) -> None:
        for volume in pod["spec"].get("volumes") or []:
            source = volume.get("configMap")
            if source is None:
                continue
            configmap = self.server.get_object("", "configmaps", member.namespace, source["name"])
            version = "" if configmap is None else configmap["metadata"].get("resourceVersion", "")
            if member.volumes_seen.get(volume["name"]) == version:
                continue
            member.volumes_seen[volume["name"]] = version
            directory = member.directory / "volumes" / volume["name"]
            directory.mkdir(parents=True, exist_ok=True)
            data = (configmap or {}).get("data") or {}
            for old in directory.iterdir():
                if old.name not in data:
                    old.unlink()
            for key, value in data.items():
                temporary = directory / f".{key}.tmp"
                temporary.write_text(value)
                temporary.replace(directory / key)  # atomic, as the kubelet's symlink swap is

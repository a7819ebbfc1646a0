"""The process kubelet of the test rig (``tests/kube_rig/processes.py``): what a pod's process is given."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.kube.objects import observe_pod
from tests.kube_rig.api_server import FakeKubeServer
from tests.kube_rig.processes import ProcessKubelet
from tests.process_checks import alive, until

NAMESPACE = "orch"
# Writes what the process was given to $OUT, then exits with $EXIT (or sleeps when it is "sleep").
PROBE = """
import json, os, sys, time
cfg = os.environ.get("CFG", "")
out = {"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd(),
       "cfg": open(cfg).read() if cfg else None}
open(os.environ["OUT"], "w").write(json.dumps(out))
if os.environ.get("EXIT") == "sleep":
    time.sleep(600)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[ProcessKubelet]:
    server = FakeKubeServer().start()
    kubelet = ProcessKubelet(server, tmp_path / "pods", base_env=dict(os.environ), grace_s=2, backoff_s=0.2)
    kubelet.add_node("n0", gpus=0)
    kubelet.start(interval=0.02)
    yield kubelet
    kubelet.stop()
    server.stop()


def make_pod(
    kubelet: ProcessKubelet,
    name: str,
    out: Path,
    env: list[dict[str, Any]] | None = None,
    args: list[str] | None = None,
    *,
    restart: str = "Never",
    **spec: Any,
) -> None:
    kubelet.server.put_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "restartPolicy": restart,
                "containers": [
                    {
                        "name": "main",
                        "image": "x",
                        "command": [sys.executable, "-c", PROBE],
                        "args": args or [],
                        "env": [{"name": "OUT", "value": str(out)}, *(env or [])],
                        "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
                    }
                ],
                "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
                **spec,
            },
        }
    )


def pod(kubelet: ProcessKubelet, name: str) -> dict[str, Any]:
    found = kubelet.server.get_object("", "pods", NAMESPACE, name)
    assert found is not None
    return found


def phase(kubelet: ProcessKubelet, name: str) -> str:
    return str((pod(kubelet, name).get("status") or {}).get("phase"))


def test_a_pod_process_gets_its_env_secrets_ip_names_files_and_token(
    kubelet: ProcessKubelet, tmp_path: Path
) -> None:
    server = kubelet.server
    secret = base64.b64encode(b"s3cr3t").decode()
    server.put_object(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NAMESPACE},
         "data": {"key": secret}}
    )  # fmt: skip
    server.put_object(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": NAMESPACE},
         "data": {"a": "hello"}}
    )  # fmt: skip
    env = [
        {"name": "PEER", "value": "http://peer.peers.orch.svc:8000/v1"},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LOG", "value": "/logs/$(ME).log"},
        {"name": "CFG", "value": "/etc/cfg/a"},
    ]
    out = tmp_path / "one.json"
    make_pod(kubelet, "one", out, env, ["--host", "0.0.0.0", "$(ME)", "$$(ME)"], serviceAccountName="robot")
    until(lambda: phase(kubelet, "one") == "Succeeded", 30, "the pod to succeed")

    seen = json.loads(out.read_text())
    ip = pod(kubelet, "one")["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert seen["argv"] == ["--host", ip, "one", "$(ME)"]
    given = seen["env"]
    assert given["TOKEN"] == "s3cr3t" and given["MY_IP"] == ip and given["LOG"] == "/logs/one.log"
    assert given["PEER"] == f"http://{kubelet.ip_of(NAMESPACE, 'peer')}:8000/v1" != f"http://{ip}:8000/v1"
    assert seen["cfg"] == "hello" and given["CFG"] != "/etc/cfg/a"  # projected, its mount path remapped
    config = json.loads(Path(given["KUBECONFIG"]).read_text())
    assert config["users"][0]["user"]["token"] == "robot"
    assert config["clusters"][0]["cluster"]["server"] == server.url
    [status] = pod(kubelet, "one")["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0


def test_a_missing_secret_leaves_the_container_waiting_and_orch_sees_it_failed(
    kubelet: ProcessKubelet, tmp_path: Path
) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    make_pod(kubelet, "two", tmp_path / "two.json", env, automountServiceAccountToken=False)

    def waiting() -> str:
        statuses = (pod(kubelet, "two").get("status") or {}).get("containerStatuses") or [{}]
        return str((statuses[0].get("state") or {}).get("waiting", {}).get("reason"))

    until(lambda: waiting() == "CreateContainerConfigError", 30, "the config error")
    assert observe_pod(pod(kubelet, "two")) == (
        "Failed",
        'CreateContainerConfigError: secret "absent" not found',
    )
    assert not (tmp_path / "two.json").exists()


def test_restart_policies_exits_and_deletion(kubelet: ProcessKubelet, tmp_path: Path) -> None:
    make_pod(kubelet, "never", tmp_path / "never.json", [{"name": "EXIT", "value": "3"}])
    make_pod(kubelet, "always", tmp_path / "always.json", [{"name": "EXIT", "value": "3"}], restart="Always")
    make_pod(kubelet, "sleeper", tmp_path / "sleeper.json", [{"name": "EXIT", "value": "sleep"}])

    until(lambda: phase(kubelet, "never") == "Failed", 30, "the Never pod to fail")
    [status] = pod(kubelet, "never")["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 3 and status["restartCount"] == 0
    assert observe_pod(pod(kubelet, "never")) == ("Failed", "Error (exit code 3)")

    def restarts() -> int:
        return int(pod(kubelet, "always")["status"]["containerStatuses"][0]["restartCount"])

    until(lambda: restarts() >= 2, 30, "the Always pod to be restarted twice")
    always = pod(kubelet, "always")
    assert always["status"]["phase"] == "Running"
    assert always["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 3
    assert observe_pod(always) == ("Running", "")

    until(lambda: phase(kubelet, "sleeper") == "Running" and (tmp_path / "sleeper.json").exists(), 30)
    pid = kubelet.pid(NAMESPACE, "sleeper")
    assert kubelet.server.delete_object("", "pods", NAMESPACE, "sleeper")
    until(lambda: not alive(pid), 10, "the deleted pod's process to end")

"""The pods orch writes run what the spec launches, hardened: pure builders, validated as Kubernetes would."""

from __future__ import annotations

import re
import shlex
from typing import Any

import kubernetes_validate
import pytest

from orchestrator.errors import SpecError
from orchestrator.kube.objects import (
    ENGINE_MAX_RESTARTS,
    engine_service,
    engine_urls,
    observe_pod,
    pod_manifest,
    rendezvous_service,
)
from orchestrator.records import Workload, WorkloadStatus
from orchestrator.spec import RunSpec, parse_spec
from orchestrator.spec.launch import engine_launch
from orchestrator.worker.colocated import (
    COMMANDS_ENV,
    LAUNCHER,
    ColocatedEngines,
    decode_commands,
    expand_references,
)
from tests.conftest import spec_data

NAMESPACE = "orch"
POOL = "orch.dev/pool"
OWNER = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "name": "r1-control",
    "uid": "0000-1111",
    "controller": True,
    "blockOwnerDeletion": True,
}
K8S_VERSION = kubernetes_validate.latest_version()
Doc = dict[str, Any]

# Every pod setting the spec has, set: what a production run on a shared cluster would write.
FULL = {
    "trainer": {
        "pool": "train",
        "gpus": 16,
        "command": "python -m my_trainer --config '/models/my config.yaml'",
        "image": "registry.example/trainer:2",
        "env": {"WANDB_PROJECT": "rl"},
        "resources": {"requests": {"cpu": "32", "memory": "512Gi"}, "limits": {"memory": "1Ti"}},
        "shm_size": "64Gi",
        "env_from_secrets": {"AWS_SECRET_ACCESS_KEY": "ckpt-creds/secret-key"},
    },
    "kubernetes": {
        "image_pull_secrets": ["regcred"],
        "run_as_non_root": True,
        "run_as_user": 10001,
        "volumes": [
            {"name": "models", "claim": "model-store", "mount_path": "/models", "read_only": True},
            {"name": "ckpt", "claim": "checkpoints", "mount_path": "/ckpt", "roles": ["trainer"]},
        ],
    },
}


def split_spec(**changes: Any) -> RunSpec:
    """Trainer on two 8-GPU nodes of pool "train", eight 1-GPU engines in pool "gen"; ``changes`` merged."""
    data = spec_data()
    data["pools"] = {"train": {"gpus": 16}, "gen": {"gpus": 8}}
    data["trainer"] = {"pool": "train", "gpus": 16}
    data["rollout"]["pool"] = "gen"
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_spec(data)


def member(spec: RunSpec, role: str, index: int, **env: str) -> Workload:
    trainer = role == "trainer"
    return Workload(
        name=f"r1-{role}-{index}-a1",
        run_id="r1",
        role=role,
        index=index,
        attempt=1,
        pool=spec.trainer.pool if trainer else spec.rollout.pool,
        node=f"{'train' if trainer else 'gen'}-{index if trainer else 0}",
        gpus=8 if trainer else spec.rollout.gpus_per_engine,
        status=WorkloadStatus.PENDING,
        env={
            "ORCH_RUN_ID": "r1",
            "ORCH_ROLE": role,
            "ORCH_ATTEMPT": "1",
            "ORCH_GPU_TYPE": "H100-80GB",
            **env,
        },
        image=spec.image,
    )


def pod(spec: RunSpec | None, workload: Workload, stage_index: int = 0) -> Doc:
    return pod_manifest(workload, NAMESPACE, POOL, OWNER, spec=spec, stage_index=stage_index)


def container(pod: Doc) -> Doc:
    [only] = pod["spec"]["containers"]
    return only


def env_values(pod: Doc) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(pod)["env"] if "value" in item}


def valid(doc: Doc) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


# ---- engines -----------------------------------------------------------------------------------


def test_an_engine_pod_runs_engine_launch_on_all_interfaces_at_the_spec_port() -> None:
    spec = split_spec()
    # Placement gave this engine port 8001 (another engine shares its node); its pod has an IP of its own.
    engine = pod(
        spec, member(spec, "engine", 1, ORCH_ENGINE_PORT="8001", ORCH_ENGINE_INDEX="1"), stage_index=1
    )
    launch = engine_launch(spec, 1, host="0.0.0.0", port=8000)
    box = container(engine)
    assert box["command"] == list(launch.argv)
    assert box["command"][:2] == ["vllm", "serve"] and "--host" in box["command"]
    assert box["command"][box["command"].index("--host") + 1] == "0.0.0.0"
    assert box["command"][box["command"].index("--max-model-len") + 1] == str(spec.max_model_len(1))
    assert box["image"] == spec.image
    assert box["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    env = env_values(engine)
    assert env["VLLM_SERVER_DEV_MODE"] == "1", "engine_launch's env reaches the pod"
    assert env["ORCH_ENGINE_PORT"] == "8000" and env["ORCH_ENGINE_INDEX"] == "1"
    assert engine["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in engine["spec"]
    assert (engine["spec"]["hostname"], engine["spec"]["subdomain"]) == ("r1-engine-1-a1", "r1-engines")
    valid(engine)


def test_an_engine_pod_takes_the_engine_image_and_a_command_template() -> None:
    spec = split_spec(
        rollout={
            **spec_data()["rollout"],
            "pool": "gen",
            "engine": {
                "kind": "command",
                "command": "python -m fake_engine --port {port} --model {model}",
                "image": "registry.example/engine:1",
                "env": {"HF_HOME": "/models/hf"},
            },
        }
    )
    box = container(pod(spec, member(spec, "engine", 0)))
    assert box["command"] == ["python", "-m", "fake_engine", "--port", "8000", "--model", spec.model.name]
    assert box["image"] == "registry.example/engine:1"
    assert {"name": "HF_HOME", "value": "/models/hf"} in box["env"]


def test_engine_probes_wait_for_model_loading_then_track_readiness() -> None:
    spec = split_spec()
    box = container(pod(spec, member(spec, "engine", 0)))
    startup, ready = box["startupProbe"], box["readinessProbe"]
    for probe in (startup, ready):
        assert probe["httpGet"] == {"path": "/health", "port": "http"}
    # A 70B model read from network storage, compiled and graph-captured takes many minutes: 30 by default.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert ready["periodSeconds"] * ready["failureThreshold"] <= 30, "a wedged engine leaves the pool fast"
    short = split_spec(
        rollout={**spec_data()["rollout"], "pool": "gen", "engine": {"startup_timeout_s": 600}}
    )
    probe = container(pod(short, member(short, "engine", 0)))["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 600
    assert "livenessProbe" not in box, (
        "a liveness kill would restart a slow-answering engine and drop its requests"
    )


def test_engines_restart_in_place_and_trainers_never() -> None:
    spec = split_spec()
    assert pod(spec, member(spec, "engine", 0))["spec"]["restartPolicy"] == "Always"
    assert pod(spec, member(spec, "trainer", 0))["spec"]["restartPolicy"] == "Never"


def _status(phase: str, restarts: int, state: Doc, last: Doc | None = None) -> Doc:
    container_status: Doc = {"name": "c", "restartCount": restarts, "state": state}
    if last is not None:
        container_status["lastState"] = last
    return {"phase": phase, "containerStatuses": [container_status]}


KILLED = {"terminated": {"reason": "Error", "exitCode": 137}}
BACKOFF = "back-off 10s restarting failed container"
BACKING_OFF = {"waiting": {"reason": "CrashLoopBackOff", "message": BACKOFF}}
LOOPING = ENGINE_MAX_RESTARTS + 1
KILLED_TEXT = "Error (exit code 137)"


@pytest.mark.parametrize(
    ("role", "status", "seen"),
    [
        ("engine", _status("Running", 1, {"running": {}}, KILLED), ("Running", "")),
        ("engine", _status("Running", 2, BACKING_OFF, KILLED), ("Running", "")),
        ("engine", _status("Running", ENGINE_MAX_RESTARTS, BACKING_OFF, KILLED), ("Running", "")),
        (
            "engine",
            _status("Running", LOOPING, {"running": {}}, KILLED),
            ("Failed", f"CrashLoopBackOff: container c restarted {LOOPING} times, last {KILLED_TEXT}"),
        ),
        ("trainer", _status("Failed", 0, KILLED), ("Failed", KILLED_TEXT)),
        ("trainer", _status("Pending", 0, BACKING_OFF), ("Failed", f"CrashLoopBackOff: {BACKOFF}")),
    ],
)
def test_a_restarted_engine_is_running_until_it_crash_loops_and_a_trainer_exit_is_a_failure(
    role: str, status: Doc, seen: tuple[str, str]
) -> None:
    spec = split_spec()
    observed = {**pod(spec, member(spec, role, 0)), "status": status}
    assert observe_pod(observed) == seen


def test_the_engine_service_names_each_engine_pod_of_the_run() -> None:
    spec = split_spec()
    service = engine_service("r1", NAMESPACE, OWNER, spec.rollout.engine.port)
    engine = pod(spec, member(spec, "engine", 3))
    assert service["spec"]["clusterIP"] == "None", "headless: one DNS name per engine pod"
    assert service["spec"]["selector"].items() <= engine["metadata"]["labels"].items()
    trainer = pod(spec, member(spec, "trainer", 0))
    assert not service["spec"]["selector"].items() <= trainer["metadata"]["labels"].items()
    assert engine["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert service["metadata"]["ownerReferences"] == [OWNER]
    valid(service)


# ---- trainers ----------------------------------------------------------------------------------


def test_a_trainer_pod_runs_the_trainer_command_with_the_engines_urls() -> None:
    spec = split_spec(**FULL)
    trainer = pod(
        spec, member(spec, "trainer", 1, ORCH_ENGINE_PORTS="8000,8001,8000,8001,8000,8001,8000,8001")
    )
    box = container(trainer)
    assert box["command"] == shlex.split(FULL["trainer"]["command"])
    assert box["command"][-1] == "/models/my config.yaml"
    assert box["image"] == "registry.example/trainer:2"
    env = env_values(trainer)
    urls = [f"http://r1-engine-{i}-a1.r1-engines.orch.svc:8000" for i in range(8)]
    assert env["ORCH_ENGINE_URLS"].split(",") == urls == engine_urls(spec, "r1", 1, NAMESPACE)
    assert env["ORCH_ENGINE_PORTS"] == ",".join(["8000"] * 8), "the ports the engine pods listen on"
    assert env["WANDB_PROJECT"] == "rl"
    assert (env["ORCH_MAILBOX"], env["ORCH_NAMESPACE"]) == ("configmap", NAMESPACE)
    assert env["ORCH_MASTER_ADDR"] == "r1-trainer-0-a1.r1-a1.orch.svc"
    assert trainer["spec"]["serviceAccountName"] == "orch-trainer"
    assert "ports" not in box and "readinessProbe" not in box
    assert COMMANDS_ENV not in env, "engines of a pool of their own run in pods of their own"
    valid(trainer)


def test_colocated_engines_are_reached_in_their_host_trainer_pods_at_their_placed_ports() -> None:
    data = spec_data()
    data["pools"] = {"node": {"gpus": 16}}
    data["trainer"]["gpus"] = 16
    spec = parse_spec(data)
    ports = "8000,8001,8002,8003,8000,8001,8002,8003"
    assert engine_urls(spec, "r1", 2, NAMESPACE, ports) == [
        f"http://r1-trainer-{i // 4}-a2.r1-a2.orch.svc:{8000 + i % 4}" for i in range(8)
    ]


def colocated_spec(kubernetes: Doc | None = None, **engine: Any) -> RunSpec:
    """The quickstart on two 8-GPU nodes: each trainer member hosts four 1-GPU engines."""
    data = spec_data()
    if kubernetes is not None:
        data["kubernetes"] = kubernetes
    data["pools"] = {"node": {"gpus": 16, "gpus_per_node": 8}}
    data["trainer"].update(gpus=16, command="orch worker --idle-timeout 60")
    data["rollout"]["engine"] = {"port": 8000, "startup_timeout_s": 900, **engine}
    return parse_spec(data)


COLOCATED_PORTS = "8000,8001,8002,8003,8000,8001,8002,8003"


def test_a_colocated_trainer_pod_starts_its_engines_on_its_gpus_then_the_trainer() -> None:
    data_volume = {"name": "models", "claim": "model-store", "mount_path": "/models", "roles": ["engine"]}
    spec = colocated_spec(env_from_secrets={"HF_TOKEN": "hf/token"}, kubernetes={"volumes": [data_volume]})
    hosted = ",".join(f"r1-engine-{i}-a1" for i in range(4, 8))
    workload = member(spec, "trainer", 1, ORCH_ENGINE_PORTS=COLOCATED_PORTS, ORCH_COLOCATED_ENGINES=hosted)
    built = pod(spec, workload)
    box = container(built)
    assert box["command"] == [*LAUNCHER, "--", "orch", "worker", "--idle-timeout", "60"]
    assert box["resources"]["limits"] == {"nvidia.com/gpu": "8"}, "the engines share the trainer's GPUs"
    env = env_values(built)
    engines = decode_commands(expand_references(env[COMMANDS_ENV], env))
    assert [e.name for e in engines] == hosted.split(",")
    assert [e.port for e in engines] == [8000, 8001, 8002, 8003]
    for slot, engine in enumerate(engines):
        launch = engine_launch(spec, 0, host="0.0.0.0", port=engine.port)
        assert engine.argv == launch.argv and "--enable-sleep-mode" in engine.argv
        assert (engine.health_path, engine.startup_timeout_s) == (launch.health_path, 900)
        assert engine.env["ORCH_ENGINE_INDEX"] == str(4 + slot)
        assert engine.env["ORCH_ENGINE_PORT"] == str(engine.port)
        assert engine.env["ORCH_COLOCATED_WITH"] == "r1-trainer-1-a1"
        assert engine.env["CUDA_VISIBLE_DEVICES"] == str(slot), "each engine on a GPU of its own"
        assert engine.env["VLLM_SERVER_DEV_MODE"] == "1"
    # The trainer reaches them in this pod, where the launcher binds them.
    urls = env["ORCH_ENGINE_URLS"].split(",")[4:]
    assert urls == [f"http://r1-trainer-1-a1.r1-a1.orch.svc:{p}" for p in (8000, 8001, 8002, 8003)]
    secrets = {item["name"]: item["valueFrom"] for item in box["env"] if "valueFrom" in item}
    assert secrets == {"HF_TOKEN": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "/models" in {mount["mountPath"] for mount in box["volumeMounts"]}, "the engines' volumes too"
    valid(built)


def test_a_colocated_engine_command_keeps_its_own_references_through_kubernetes_expansion() -> None:
    spec = colocated_spec(
        kind="command",
        command="serve --host {host} --port {port} --log /logs/$(ORCH_ENGINE_INDEX).jsonl --cost $$5",
    )
    workload = member(spec, "trainer", 0, ORCH_ENGINE_PORTS=COLOCATED_PORTS, ORCH_COLOCATED_ENGINES="x")
    env = env_values(pod(spec, workload))
    # The kubelet expands $(VAR) in env values (the trainer's own env has no ORCH_ENGINE_INDEX); the
    # launcher then expands each engine's argv from that engine's env, as an engine pod's kubelet would.
    engines = ColocatedEngines(decode_commands(expand_references(env[COMMANDS_ENV], env)), {"ORCH_RANK": "0"})
    assert [e.argv for e in engines.engines][1] == [
        *("serve", "--host", "0.0.0.0", "--port", "8001"),
        *("--log", "/logs/1.jsonl", "--cost", "$5"),
    ]
    assert all("ORCH_RANK" not in e.env for e in engines.engines), "the trainer's ORCH_* stay the trainer's"


# ---- what every pod gets -------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["trainer", "engine"])
def test_resources_shm_secrets_volumes_and_pull_secrets(role: str) -> None:
    spec = split_spec(**FULL)
    built = pod(spec, member(spec, role, 0))
    box = container(built)
    gpus = "8" if role == "trainer" else "1"
    if role == "trainer":
        assert box["resources"] == {
            "requests": {"cpu": "32", "memory": "512Gi", "nvidia.com/gpu": gpus},
            "limits": {"memory": "1Ti", "nvidia.com/gpu": gpus},
        }
    else:  # the engine keeps its defaults: requests only, no limit to kill a model while it loads
        assert box["resources"] == {
            "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": gpus},
            "limits": {"nvidia.com/gpu": gpus},
        }
    volumes = {volume["name"]: volume for volume in built["spec"]["volumes"]}
    shm = "64Gi" if role == "trainer" else "16Gi"
    assert volumes["dshm"] == {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}
    mounts = {mount["mountPath"]: mount for mount in box["volumeMounts"]}
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    assert mounts["/models"]["readOnly"] is True
    assert ("ckpt" in volumes, "/ckpt" in mounts) == (role == "trainer",) * 2, "roles pick the pods"
    secrets = [item for item in box["env"] if "valueFrom" in item]
    if role == "trainer":
        assert secrets == [
            {
                "name": "AWS_SECRET_ACCESS_KEY",
                "valueFrom": {"secretKeyRef": {"name": "ckpt-creds", "key": "secret-key"}},
            }
        ]
    else:
        assert secrets == []
    assert built["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    valid(built)


@pytest.mark.parametrize("role", ["trainer", "engine"])
def test_every_container_is_locked_down_and_non_root_where_the_spec_says(role: str) -> None:
    default = split_spec()
    built = pod(default, member(default, role, 0))
    assert container(built)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    # Root stays allowed by default: vLLM's and SGLang's own images run as root.
    assert built["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    strict = split_spec(**FULL)
    assert pod(strict, member(strict, role, 0))["spec"]["securityContext"] == {
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
    }


def test_without_a_spec_a_pod_runs_its_image_entry_point_still_locked_down() -> None:
    spec = split_spec()
    built = pod(None, member(spec, "engine", 0))
    box = container(built)
    assert "command" not in box and "startupProbe" not in box
    assert box["securityContext"]["allowPrivilegeEscalation"] is False
    valid(built)


def test_the_rendezvous_service_and_pods_of_every_kind_validate() -> None:
    spec = split_spec(**FULL)
    valid(rendezvous_service(member(spec, "trainer", 0), NAMESPACE, OWNER))
    data = spec_data()  # colocated: the trainer pod carries its engines' names
    valid(
        pod(parse_spec(data), member(parse_spec(data), "trainer", 0, ORCH_COLOCATED_ENGINES="r1-engine-0-a1"))
    )


# ---- the spec refuses what would make a broken pod -------------------------------------------------


BAD_POD_SETTINGS = {
    "a memory that is not a quantity": (
        {"trainer": {"resources": {"requests": {"memory": "64GB"}}}},
        "trainer.resources.requests.memory",
    ),
    "a limit below the request": (
        {"trainer": {"resources": {"requests": {"cpu": "8"}, "limits": {"cpu": "500m"}}}},
        "limits.cpu: 500m is below requests.cpu (8)",
    ),
    "/dev/shm above the memory limit": (
        {"trainer": {"shm_size": "32Gi", "resources": {"limits": {"memory": "16Gi"}}}},
        "shm_size: 32Gi exceeds resources.limits.memory (16Gi)",
    ),
    "a secret without a key": ({"trainer": {"env_from_secrets": {"TOKEN": "hf-token"}}}, "is not SECRET/KEY"),
    "a variable both plain and secret": (
        {"trainer": {"env": {"TOKEN": "x"}, "env_from_secrets": {"TOKEN": "s/k"}}},
        "TOKEN is also in env",
    ),
    "a volume on orch's /dev/shm": (
        {"kubernetes": {"volumes": [{"name": "m", "claim": "c", "mount_path": "/dev/shm"}]}},
        "kubernetes.volumes[0].mount_path",
    ),
    "a volume named like orch's": (
        {"kubernetes": {"volumes": [{"name": "dshm", "claim": "c", "mount_path": "/m"}]}},
        "orch's own volume",
    ),
    "two volumes on one path": (
        {
            "kubernetes": {
                "volumes": [
                    {"name": "a", "claim": "c", "mount_path": "/m"},
                    {"name": "b", "claim": "d", "mount_path": "/m/"},
                ]
            }
        },
        "'/m' is listed twice",
    ),
    "root with run_as_non_root": (
        {"kubernetes": {"run_as_non_root": True, "run_as_user": 0}},
        "run_as_user: 0",
    ),
    "a pull secret that is not a name": (
        {"kubernetes": {"image_pull_secrets": ["Reg Cred"]}},
        "image_pull_secrets",
    ),
}


@pytest.mark.parametrize(("changes", "words"), BAD_POD_SETTINGS.values(), ids=BAD_POD_SETTINGS.keys())
def test_the_spec_refuses_pod_settings_that_kubernetes_would_not_run(changes: Doc, words: str) -> None:
    data = spec_data()
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value}
    with pytest.raises(SpecError, match=re.escape(words)):
        parse_spec(data)

"""Issue 11, point 3: the GPU catalogue, and the pool's type used by the simulator and the Kubernetes pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.core.feasibility import engine_memory
from orchestrator.core.work import StepPlan
from orchestrator.hardware import GPU_TYPE_ENV, GPU_TYPES, H100_80GB, MI300X
from orchestrator.kube.objects import gpu_allocatable, gpu_request, pod_manifest
from orchestrator.records import Workload, WorkloadStatus
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.gpu_source import SimulatedGpuSource
from orchestrator.sim.trainer import SimTrainer, StepSimulator
from orchestrator.spec import parse_spec
from orchestrator.state.store import Store
from tests.conftest import spec_data, write_spec

OWNER = {"apiVersion": "v1", "kind": "ConfigMap", "name": "r-control", "uid": "u", "controller": True}


def quickstart_on(gpu_type: str) -> dict:
    data = spec_data()
    data["pools"]["node"]["gpu_type"] = gpu_type
    return data


def workload(**env: str) -> Workload:
    return Workload("r-engine-0-a1", "r", "engine", 0, 1, "node", "n0", 2, WorkloadStatus.PENDING, env=env)


@pytest.mark.parametrize(
    ("gpu_type", "resource"), [("MI300X", "amd.com/gpu"), ("H200-141GB", "nvidia.com/gpu")]
)
def test_a_pod_requests_its_pool_type_s_resource_and_tolerates_its_taint(
    gpu_type: str, resource: str
) -> None:
    pod = pod_manifest(workload(**{GPU_TYPE_ENV: gpu_type}), "orch", "orch.dev/pool", OWNER)
    [container] = pod["spec"]["containers"]
    assert container["resources"] == {"requests": {resource: "2"}, "limits": {resource: "2"}}
    assert pod["spec"]["tolerations"][0]["key"] == resource
    assert gpu_request(pod) == 2


def test_a_workload_recorded_before_gpu_types_requests_nvidia_gpus() -> None:
    pod = pod_manifest(workload(), "orch", "orch.dev/pool", OWNER)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_a_node_s_capacity_counts_amd_gpus_too() -> None:
    assert gpu_allocatable({"status": {"allocatable": {"amd.com/gpu": "8", "cpu": "192"}}}) == 8
    assert gpu_allocatable({"status": {"allocatable": {"nvidia.com/gpu": "4"}}}) == 4
    assert gpu_allocatable({"status": {}}) == 0


def test_every_member_of_a_run_is_told_its_pool_s_gpu_type(store: Store, tmp_path: Path) -> None:
    run = service.submit(store, service.validate(write_spec(tmp_path, quickstart_on("MI300X"))))
    cluster = SimCluster()
    Controller(store, cluster, SimTrainer(cluster), identity="ctl").reconcile_once()
    workloads = store.workloads(run.id)
    assert workloads and {w.env[GPU_TYPE_ENV] for w in workloads} == {"MI300X"}


def test_the_simulated_engines_use_the_pool_s_gpu_type() -> None:
    plan = StepPlan("r", 1, 0, 1, 8192, 10, False, "file:///tmp/x")
    seconds, capacity = {}, {}
    for gpu_type in ("H100-80GB", "H200-141GB"):
        spec = parse_spec(quickstart_on(gpu_type))
        physics = StepSimulator()
        seconds[gpu_type] = physics.simulate(spec, plan).outcome.rollout_seconds
        capacity[gpu_type] = physics.last_kv_capacity
        assert capacity[gpu_type] == engine_memory(spec.model, GPU_TYPES[gpu_type], 1).kv_capacity_tokens
    assert capacity["H200-141GB"] > capacity["H100-80GB"]
    assert seconds["H200-141GB"] < seconds["H100-80GB"], "more HBM bandwidth decodes faster"


def test_the_simulated_telemetry_reports_the_pool_s_gpu_type(store: Store, tmp_path: Path) -> None:
    run = service.submit(store, service.validate(write_spec(tmp_path, quickstart_on("MI300X"))))
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl", telemetry=cluster.telemetry)
    while store.get_run(run.id).steps_done < 1:
        controller.reconcile_once()
    controller.reconcile_once()
    samples = [s for s in store.latest_gpu_samples() if s.pool == "node"]
    assert len(samples) == 8
    assert {(s.name, s.memory_total_bytes, s.power_limit_watts) for s in samples} == {
        ("AMD Instinct MI300X", MI300X.memory_bytes, 750.0)
    }


def test_the_simulated_agent_source_takes_a_gpu_type() -> None:
    [sample] = SimulatedGpuSource("n", gpus=1, gpu_type=MI300X).samples()
    assert (sample.name, sample.memory_total_bytes, sample.power_limit_watts) == (
        "AMD Instinct MI300X",
        MI300X.memory_bytes,
        750.0,
    )
    [default] = SimulatedGpuSource("n", gpus=1).samples()
    assert (default.name, default.memory_total_bytes) == ("NVIDIA H100 80GB HBM3", H100_80GB.memory_bytes)

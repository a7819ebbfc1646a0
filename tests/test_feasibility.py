"""Issue 11, point 2: `orch validate` refuses what the controller would refuse, by the same pure checks."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator import service
from orchestrator.controller import Controller
from orchestrator.core.feasibility import ENGINE_MEMORY_UTILIZATION, engine_memory, run_problems
from orchestrator.core.reconcile import decide
from orchestrator.errors import SpecError
from orchestrator.hardware import GPU_TYPES, H100_80GB
from orchestrator.records import Phase
from orchestrator.sim.cluster import SimCluster
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.trainer import SimTrainer
from orchestrator.spec import RunSpec, parse_spec
from orchestrator.state.store import Store
from tests.conftest import ROOT, spec_data, write_spec
from tests.test_reconcile import make_run, make_snapshot


def quickstart(**changes: Any) -> dict[str, Any]:
    """The quickstart spec as data; ``changes`` maps a dotted path to a new value."""
    data = copy.deepcopy(spec_data())
    for path, value in changes.items():
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[int(last) if isinstance(node, list) else last] = value
    return data


def seventy_b(**changes: Any) -> dict[str, Any]:
    """The issue's oversized model: the quickstart with a 70B, 80-layer model."""
    return quickstart(**{"model.params_b": 70, "model.layers": 80, **changes})


def split_pools(**changes: Any) -> dict[str, Any]:
    """Trainer and engines in pools of their own (not colocated)."""
    data = quickstart(**changes)
    data["pools"] = {"train": {"gpus": 8}, "gen": {"gpus": 16}}
    data["trainer"]["pool"], data["rollout"]["pool"] = "train", "gen"
    return data


def problems(data: dict[str, Any]) -> tuple[str, ...]:
    return run_problems(parse_spec(data))


# ---- the checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_the_examples_can_run(name: str) -> None:
    assert run_problems(service.validate(ROOT / "examples" / name)) == ()


def test_a_model_whose_weights_do_not_fit_one_engine_names_the_field_and_the_fix() -> None:
    [engine, trainer] = problems(seventy_b())
    assert engine.startswith("model: Qwen3-14B-Base needs 140.0 GB of weights + ")
    assert "for one longest request (12,688 tokens) per engine, but 1 × H100-80GB holds 77.0 GB" in engine
    assert "raise rollout.gpus_per_engine to 2 with rollout.engines at most 4" in engine
    assert "use a gpu_type with more memory (B200, MI300X)" in engine
    # The simulator's trainer keeps 16 bytes per parameter: 1.12 TB does not fit 8 × 85.5 GB either.
    assert trainer.startswith(
        "trainer.gpus: training Qwen3-14B-Base keeps 16 bytes per parameter (1120.0 GB)"
    )


def test_the_suggested_fix_is_accepted() -> None:
    data = seventy_b(**{"rollout.gpus_per_engine": 2, "rollout.engines": 4, "trainer.gpus": 24})
    data["pools"]["node"]["gpus"] = 24
    assert problems(data) == ()


def test_memory_fit_is_per_gpu_type() -> None:
    """The same 70B model fits one MI300X per engine and 8 MI300X for the trainer."""
    assert problems(seventy_b(**{"pools.node.gpu_type": "MI300X"})) == ()
    assert problems(seventy_b(**{"pools.node.gpu_type": "A100-40GB"}))[0].startswith("model: ")


def test_a_stage_longer_than_an_engine_s_kv_cache_is_named_with_the_longest_length_that_fits() -> None:
    capacity = engine_memory(parse_spec(quickstart()).model, H100_80GB, 1).kv_capacity_tokens
    [line] = problems(quickstart(**{"curriculum.2.max_response_tokens": capacity}))
    assert line.startswith(
        f"curriculum[2].max_response_tokens: a request of 400 prompt + {capacity} response tokens needs "
        f"{capacity + 400:,} tokens of KV cache but one engine (1 × H100-80GB) holds {capacity:,}; "
        f"lower max_response_tokens to at most {capacity - 400} or raise rollout.gpus_per_engine to 2"
    )
    assert problems(quickstart(**{"curriculum.2.max_response_tokens": capacity - 400})) == ()


def test_the_longest_prompt_not_the_mean_sizes_the_engine() -> None:
    """An engine runs with max model length = the longest prompt + the stage's limit: a spec whose mean
    prompt fits but whose longest does not is refused, naming the longest."""
    capacity = engine_memory(parse_spec(quickstart()).model, H100_80GB, 1).kv_capacity_tokens
    fits_the_mean = quickstart(**{"curriculum.2.max_response_tokens": capacity - 400})
    assert problems(fits_the_mean) == ()
    fits_the_mean["dataset"]["max_prompt_tokens"] = 2_000
    [line] = problems(fits_the_mean)
    assert line.startswith(f"curriculum[2].max_response_tokens: a request of 2000 prompt + {capacity - 400} ")
    assert f"lower max_response_tokens to at most {capacity - 2_000} " in line


def test_an_engine_wider_than_a_node_cannot_be_placed() -> None:
    [line] = problems(split_pools(**{"rollout.engines": 1, "rollout.gpus_per_engine": 16}))
    assert line == (
        "rollout.gpus_per_engine: an engine's 16 GPUs must share one node but pools.gen.gpus_per_node is 8; "
        "lower rollout.gpus_per_engine to at most 8"
    )


def test_engines_that_do_not_pack_onto_whole_nodes_cannot_be_placed() -> None:
    # 5 engines × 3 GPUs = 15 of the pool's 16, but a node of 8 holds only two of them.
    [line] = problems(split_pools(**{"rollout.engines": 5, "rollout.gpus_per_engine": 3}))
    assert line.startswith("rollout: the gang cannot be placed even on an empty cluster (pool 'gen' has ")
    assert line.endswith("lower rollout.engines or rollout.gpus_per_engine, or grow pools.gen.gpus")


def test_colocated_engines_cannot_need_more_gpus_than_the_trainer_holds() -> None:
    data = quickstart(**{"pools.node.gpus": 16, "rollout.engines": 16})
    [line] = problems(data)
    assert line.startswith("rollout.engines: colocated engines (rollout.pool is the trainer's pool) run on")
    assert "16 × 1 GPUs need 16 but the trainer holds 8; lower rollout.engines to at most 8" in line


def test_the_simulated_engines_size_their_kv_cache_by_the_same_arithmetic() -> None:
    model = parse_spec(quickstart()).model
    for gpu in GPU_TYPES.values():
        for gpus in (1, 2, 4):
            memory = engine_memory(model, gpu, gpus)
            assert memory.usable_bytes == int(gpus * gpu.memory_bytes * ENGINE_MEMORY_UTILIZATION)
            assert EngineCost.for_engine(model, gpu, gpus).kv_capacity_tokens == memory.kv_capacity_tokens > 0


# ---- validate and submit refuse; the controller fails what reaches it anyway ---------------------------


def test_orch_validate_refuses_the_oversized_model_with_exit_2_and_a_line_per_problem(tmp_path: Path) -> None:
    path = write_spec(tmp_path, seventy_b())
    result = subprocess.run(
        [sys.executable, "cli.py", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ")[:3] for line in lines] == [
        ["error", str(path), "model"],
        ["error", str(path), "trainer.gpus"],
    ]
    assert "Traceback" not in result.stderr


def test_submit_refuses_it_and_stores_nothing(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        service.submit(store, service.validate(write_spec(tmp_path, seventy_b())))
    assert len(caught.value.problems) == 2
    assert store.list_runs() == []


def test_decide_fails_a_pending_run_that_can_never_run_and_places_nothing() -> None:
    spec = parse_spec(seventy_b())
    snapshot = replace(make_snapshot(make_run(spec=spec.model_dump(mode="json"))), spec=spec)
    patch = decide(snapshot).patch
    assert patch is not None
    assert patch.run["phase"] == "Failed"
    assert patch.workloads == ()
    [event] = patch.events
    assert event.reason == "Failed" and event.data["problems"] == list(run_problems(spec))
    assert patch.run["message"] == event.message and "model: Qwen3-14B-Base needs" in event.message


def test_a_forced_oversized_run_fails_while_a_good_run_in_the_same_store_succeeds(
    store: Store, tmp_path: Path
) -> None:
    bad = store.create_run(RunSpec.model_validate(seventy_b(name="too-big")))  # as a TrainingRun could
    good = service.submit(store, service.validate(write_spec(tmp_path, quickstart())))
    cluster = SimCluster()
    controller = Controller(store, cluster, SimTrainer(cluster), identity="ctl")
    for _ in range(500):
        if store.get_run(good.id).phase.terminal:
            break
        controller.reconcile_once()
    assert store.get_run(good.id).phase is Phase.SUCCEEDED
    failed = store.get_run(bad.id)
    assert failed.phase is Phase.FAILED
    assert failed.message.startswith("the spec can never run: model: Qwen3-14B-Base needs 140.0 GB")
    assert [e.reason for e in store.events(bad.id)][-1] == "Failed"
    assert store.workloads(bad.id) == []
    assert not any(name.startswith(bad.id) for name in cluster.created), "never placed"

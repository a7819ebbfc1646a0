"""Can a run ever run? Pure checks of one spec against itself, shared by ``orch validate`` and the controller.

Nothing here depends on other runs: memory fit per engine and per trainer GPU (the pool's GPU type from
``orchestrator.hardware``), every stage's longest request against an engine's KV capacity, and gang
placement on an empty cluster made of the spec's own pools. ``run_problems`` returns one line per
problem, each naming the field and the fix; the simulated engines size their KV cache with the same
``engine_memory`` arithmetic, so validate and the simulator agree on every number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.core.members import ENGINE, desired_members
from orchestrator.core.placement import MemberRequest, NodeView, place_all
from orchestrator.hardware import GPU_TYPES, GpuType
from orchestrator.spec import ModelSpec, PoolSpec, RunSpec

__all__ = [
    "ACTIVATION_BYTES_PER_TRAINER_GPU",
    "ACTIVATION_MARGIN_BYTES_PER_GPU",
    "ENGINE_MEMORY_UTILIZATION",
    "TRAINING_BYTES_PER_PARAM",
    "EngineMemory",
    "engine_memory",
    "run_problems",
    "trainer_bytes_per_gpu",
]

# Memory an engine keeps back on each GPU for activations, CUDA graphs and the allocator, on top of
# weights and KV cache (vLLM measures this by profiling a forward pass; ~2 GiB for a 14B model). Assumption.
ACTIVATION_MARGIN_BYTES_PER_GPU = 2 * 2**30
# Share of each GPU's memory an engine may use (vLLM's --gpu-memory-utilization default, 0.9).
ENGINE_MEMORY_UTILIZATION = 0.9
# Training state per parameter: bf16 weights and gradients, fp32 master weights and two Adam moments.
TRAINING_BYTES_PER_PARAM = 16
# Activation memory per trainer GPU during the train phase; assumption.
ACTIVATION_BYTES_PER_TRAINER_GPU = 20 * 2**30

GB = 1e9


@dataclass(frozen=True)
class EngineMemory:
    """How one engine (``gpus`` GPUs, tensor parallel) splits its memory: weights, margin, KV cache."""

    gpus: int
    usable_bytes: int  # gpus × memory × utilization
    weight_bytes: int
    margin_bytes: int  # activations, CUDA graphs, allocator: per GPU
    kv_bytes_per_token: int

    @property
    def kv_bytes(self) -> int:
        """What is left for KV cache; negative when the weights alone do not fit."""
        return self.usable_bytes - self.weight_bytes - self.margin_bytes

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache the engine holds (0 when nothing is left for it)."""
        return max(0, self.kv_bytes // self.kv_bytes_per_token)

    def fits(self, tokens: int) -> bool:
        """One request of ``tokens`` (prompt + response) fits in the KV cache."""
        return self.kv_bytes > 0 and tokens <= self.kv_capacity_tokens


def engine_memory(
    model: ModelSpec,
    gpu: GpuType,
    gpus_per_engine: int,
    memory_utilization: float = ENGINE_MEMORY_UTILIZATION,
) -> EngineMemory:
    """Memory of an engine serving ``model`` over ``gpus_per_engine`` GPUs of type ``gpu``.

    Weights and KV cache are sharded over the group, so memory adds up; each GPU keeps its margin.
    """
    if gpus_per_engine < 1:
        raise ValueError(f"gpus_per_engine must be at least 1, got {gpus_per_engine}")
    if not 0 < memory_utilization <= 1:
        raise ValueError(f"memory_utilization must be in (0, 1], got {memory_utilization}")
    return EngineMemory(
        gpus=gpus_per_engine,
        usable_bytes=int(gpus_per_engine * gpu.memory_bytes * memory_utilization),
        weight_bytes=model.weight_bytes,
        margin_bytes=gpus_per_engine * ACTIVATION_MARGIN_BYTES_PER_GPU,
        kv_bytes_per_token=model.kv_bytes_per_token,
    )


def trainer_bytes_per_gpu(spec: RunSpec) -> int:
    """Training state sharded over the trainer's GPUs (ZeRO/FSDP style), without activations."""
    return int(TRAINING_BYTES_PER_PARAM * spec.model.params_b * 1e9 / spec.trainer.gpus)


def run_problems(spec: RunSpec) -> tuple[str, ...]:
    """Every reason this run can never run, however empty the cluster; one line each, () if none."""
    return (*_placement_problems(spec), *_engine_problems(spec), *_trainer_problems(spec))


# ---- engines -----------------------------------------------------------------------------------------


def _longest_request(spec: RunSpec) -> int:
    """The longest request an engine must hold: the longest prompt plus the largest stage limit (the
    engine's max model length in that stage)."""
    return max(spec.max_model_len(index) for index in range(len(spec.curriculum)))


def _engine_gpus_available(spec: RunSpec) -> int:
    """GPUs the engines may take in all: the trainer's when colocated, else their pool's."""
    return spec.trainer.gpus if spec.colocated else spec.pools[spec.rollout.pool].gpus


def _engine_problems(spec: RunSpec) -> list[str]:
    pool = spec.pools[spec.rollout.pool]
    gpu = GPU_TYPES[pool.gpu_type]
    gpus = spec.rollout.gpus_per_engine
    memory = engine_memory(spec.model, gpu, gpus)
    longest = _longest_request(spec)
    if memory.fits(longest):
        return []
    if memory.kv_bytes <= 0 or not _fits_at_all(spec, memory):
        return [_engine_memory_line(spec, pool, gpu, memory, longest)]
    prompt = spec.dataset.prompt_budget
    return [
        f"curriculum[{index}].max_response_tokens: a request of {prompt} prompt + "
        f"{stage.max_response_tokens} response tokens needs {tokens:,} tokens of KV cache but one engine "
        f"({gpus} × {gpu.name}) holds {memory.kv_capacity_tokens:,}; lower max_response_tokens to at most "
        f"{memory.kv_capacity_tokens - prompt} or {_more_memory_fix(spec, pool, longest)}"
        for index, stage in enumerate(spec.curriculum)
        if not memory.fits(tokens := spec.max_model_len(index))
    ]


def _fits_at_all(spec: RunSpec, memory: EngineMemory) -> bool:
    """Even the shortest stage fits: the problem is the stage limits, not the engine's size."""
    shortest = min(spec.max_model_len(index) for index in range(len(spec.curriculum)))
    return memory.fits(shortest)


def _engine_memory_line(
    spec: RunSpec, pool: PoolSpec, gpu: GpuType, memory: EngineMemory, longest: int
) -> str:
    kv_needed = longest * memory.kv_bytes_per_token
    return (
        f"model: {spec.model.name} needs {memory.weight_bytes / GB:.1f} GB of weights + "
        f"{memory.margin_bytes / GB:.1f} GB of activations + {kv_needed / GB:.1f} GB of KV cache for one "
        f"longest request ({longest:,} tokens) per engine, but {memory.gpus} × {gpu.name} holds "
        f"{memory.usable_bytes / GB:.1f} GB at {ENGINE_MEMORY_UTILIZATION:.0%} memory utilization; "
        f"{_more_memory_fix(spec, pool, longest)}"
    )


def _more_memory_fix(spec: RunSpec, pool: PoolSpec, longest: int) -> str:
    """Raise gpus_per_engine to the smallest group that fits, or name the GPU types that would."""
    fixes = []
    gpu = GPU_TYPES[pool.gpu_type]
    for gpus in range(spec.rollout.gpus_per_engine + 1, pool.gpus_per_node + 1):
        if engine_memory(spec.model, gpu, gpus).fits(longest):
            engines = _engine_gpus_available(spec) // gpus
            fewer = f" with rollout.engines at most {engines}" if engines < spec.rollout.engines else ""
            fixes.append(f"raise rollout.gpus_per_engine to {gpus}{fewer}")
            break
    larger = [
        other.name
        for other in GPU_TYPES.values()
        if other.memory_bytes > gpu.memory_bytes
        and engine_memory(spec.model, other, spec.rollout.gpus_per_engine).fits(longest)
    ]
    if larger:
        fixes.append(f"use a gpu_type with more memory ({', '.join(larger)})")
    if not fixes:
        return "use a smaller model or shorter responses: no engine of up to one whole node fits it"
    return " or ".join(fixes)


# ---- trainer -----------------------------------------------------------------------------------------


def _trainer_problems(spec: RunSpec) -> list[str]:
    pool = spec.pools[spec.trainer.pool]
    gpu = GPU_TYPES[pool.gpu_type]
    state = trainer_bytes_per_gpu(spec)
    if state + ACTIVATION_BYTES_PER_TRAINER_GPU <= gpu.memory_bytes:
        return []
    total = TRAINING_BYTES_PER_PARAM * spec.model.params_b * 1e9
    room = gpu.memory_bytes - ACTIVATION_BYTES_PER_TRAINER_GPU
    needed = math.ceil(total / room)
    fix = (
        f"raise trainer.gpus to at least {needed}"
        if needed <= pool.gpus
        else (
            f"grow pools.{spec.trainer.pool}.gpus to at least "
            f"{math.ceil(needed / pool.gpus_per_node) * pool.gpus_per_node} (whole nodes) and raise "
            f"trainer.gpus to at least {needed}"
        )
    )
    return [
        f"trainer.gpus: training {spec.model.name} keeps {TRAINING_BYTES_PER_PARAM} bytes per parameter "
        f"({total / GB:.1f} GB), {state / GB:.1f} GB on each of {spec.trainer.gpus} × {gpu.name} plus "
        f"{ACTIVATION_BYTES_PER_TRAINER_GPU / GB:.1f} GB of activations, but one holds "
        f"{gpu.memory_bytes / GB:.1f} GB; {fix} or use a larger gpu_type"
    ]


# ---- placement on an empty cluster -------------------------------------------------------------------


def _empty_cluster(spec: RunSpec) -> list[NodeView]:
    return [
        NodeView(f"{name}-{index}", name, pool.gpus_per_node)
        for name, pool in spec.pools.items()
        for index in range(pool.nodes)
    ]


def _placement_problems(spec: RunSpec) -> list[str]:
    rollout = spec.rollout
    pool = spec.pools[rollout.pool]
    if rollout.gpus_per_engine > pool.gpus_per_node:
        return [
            f"rollout.gpus_per_engine: an engine's {rollout.gpus_per_engine} GPUs must share one node but "
            f"pools.{rollout.pool}.gpus_per_node is {pool.gpus_per_node}; lower rollout.gpus_per_engine to "
            f"at most {pool.gpus_per_node}"
        ]
    members = desired_members(spec, "run", 1)
    if spec.colocated:
        return _colocation_problems(spec, members)
    placement = place_all(members, _empty_cluster(spec), {})
    if placement.ok:
        return []
    return [
        f"rollout: the gang cannot be placed even on an empty cluster ({placement.reason}); "
        f"lower rollout.engines or rollout.gpus_per_engine, or grow pools.{rollout.pool}.gpus"
    ]


def _colocation_problems(spec: RunSpec, members: list[MemberRequest]) -> list[str]:
    """Colocated engines take turns with the trainer on its GPUs: they must fit inside its members."""
    rollout = spec.rollout
    if rollout.gpus > spec.trainer.gpus:
        most = spec.trainer.gpus // rollout.gpus_per_engine
        return [
            f"rollout.engines: colocated engines (rollout.pool is the trainer's pool) run on the trainer's "
            f"GPUs: {rollout.engines} × {rollout.gpus_per_engine} GPUs need {rollout.gpus} but the trainer "
            f"holds {spec.trainer.gpus}; lower rollout.engines to at most {most} or give the engines a pool "
            "of their own"
        ]
    host_gpus = {member.key: member.gpus for member in members if member.role != ENGINE}
    hosted: dict[str, int] = {}
    for member in members:
        if member.role == ENGINE and member.same_node_as is not None:
            hosted[member.same_node_as] = hosted.get(member.same_node_as, 0) + rollout.gpus_per_engine
    crowded = sorted(host for host, gpus in hosted.items() if gpus > host_gpus[host])
    if not crowded:
        return []
    return [
        f"rollout.gpus_per_engine: colocated engines of {rollout.gpus_per_engine} GPUs do not divide evenly "
        f"over the trainer's members ({', '.join(str(host_gpus[h]) for h in crowded)} GPUs on a node hold "
        f"more engine GPUs than that); make trainer.gpus a multiple of gpus_per_node and rollout.engines × "
        "rollout.gpus_per_engine a divisor of trainer.gpus"
    ]

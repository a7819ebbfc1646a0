"""How long an inference engine takes to prefill and to decode, from public hardware figures.

Prefill is compute-bound (every prompt token goes through every weight: 2 × params FLOPs per token);
decode is memory-bandwidth-bound (every step streams all weights plus the KV cache of every running
sequence from HBM once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.core.feasibility import (
    ACTIVATION_MARGIN_BYTES_PER_GPU,
    ENGINE_MEMORY_UTILIZATION,
    engine_memory,
)
from orchestrator.hardware import GpuType
from orchestrator.spec import ModelSpec

__all__ = [
    "ACTIVATION_MARGIN_BYTES_PER_GPU",
    "BANDWIDTH_EFFICIENCY",
    "DECODE_STEP_OVERHEAD_S",
    "PREFILL_MFU",
    "EngineCost",
]

# Model FLOPs utilisation of a long prefill: it runs large dense GEMMs, the regime where well-tuned
# transformer kernels sustain about half of peak (Megatron-LM reports 52% of A100 peak on GPT-3 175B,
# Narayanan et al., SC'21, arXiv 2104.04473). Assumption, not a measurement of vLLM or SGLang.
PREFILL_MFU = 0.5

# Share of peak HBM bandwidth that decode kernels sustain. Stream-style copies on an H100 SXM reach about
# 3.0 of the 3.35 TB/s (~90%); GEMV over weights and paged-attention reads land a little lower. Assumption.
BANDWIDTH_EFFICIENCY = 0.85

# Fixed cost of one decode step outside the bandwidth-bound kernels: scheduling, sampling and launch gaps
# between CUDA graphs. Assumption in the range engines with CUDA graphs and async scheduling report.
DECODE_STEP_OVERHEAD_S = 0.5e-3


@dataclass(frozen=True)
class EngineCost:
    """The speed and KV capacity of one engine (one GPU or one tensor-parallel group)."""

    kv_capacity_tokens: int
    prefill_tokens_per_s: float
    weight_bytes: int
    kv_bytes_per_token: int
    hbm_bytes_per_s: float

    def prefill_seconds(self, tokens: int) -> float:
        """Time to prefill ``tokens`` context tokens (no prefix caching)."""
        return tokens / self.prefill_tokens_per_s

    def decode_step_seconds(self, batch: int, kv_tokens: int) -> float:
        """One decode step for ``batch`` sequences holding ``kv_tokens`` of KV cache in all.

        Bandwidth-bound, so ``batch`` only matters through the KV cache it holds.
        """
        bytes_read = self.weight_bytes + kv_tokens * self.kv_bytes_per_token
        return bytes_read / self._effective_bandwidth + DECODE_STEP_OVERHEAD_S

    def decode_seconds(self, batch: int, kv_tokens: int, steps: int) -> float:
        """``steps`` consecutive decode steps; each one adds ``batch`` tokens to the KV cache it reads.

        The per-step time is linear in the KV cache, so the sum is an arithmetic series (closed form).
        """
        growth = batch * self.kv_bytes_per_token / self._effective_bandwidth
        return steps * self.decode_step_seconds(batch, kv_tokens) + growth * steps * (steps - 1) / 2

    def decode_steps_within(self, batch: int, kv_tokens: int, seconds: float) -> int:
        """How many whole decode steps finish within ``seconds``: the inverse of ``decode_seconds``."""
        if seconds <= 0:
            return 0
        first = self.decode_step_seconds(batch, kv_tokens)
        growth = batch * self.kv_bytes_per_token / self._effective_bandwidth
        # Root of growth/2·k² + (first − growth/2)·k = seconds, in the form that stays stable as growth → 0.
        linear = first - growth / 2
        steps = int(2 * seconds / (linear + math.sqrt(linear * linear + 2 * growth * seconds)))
        while self.decode_seconds(batch, kv_tokens, steps + 1) <= seconds:
            steps += 1
        while steps > 0 and self.decode_seconds(batch, kv_tokens, steps) > seconds:
            steps -= 1
        return steps

    @property
    def _effective_bandwidth(self) -> float:
        return self.hbm_bytes_per_s * BANDWIDTH_EFFICIENCY

    @classmethod
    def for_engine(
        cls,
        model: ModelSpec,
        gpu: GpuType,
        gpus_per_engine: int,
        memory_utilization: float = ENGINE_MEMORY_UTILIZATION,
    ) -> EngineCost:
        """Cost of an engine serving ``model`` tensor-parallel over ``gpus_per_engine`` GPUs of type ``gpu``.

        Weights and KV cache are sharded over the group, so memory, FLOPs and bandwidth add up; the
        all-reduce cost of tensor parallelism is not modelled. The KV capacity is
        ``orchestrator.core.feasibility.engine_memory``'s, the same number ``orch validate`` checks.
        """
        memory = engine_memory(model, gpu, gpus_per_engine, memory_utilization)
        if memory.kv_capacity_tokens <= 0:
            raise ValueError(
                f"{model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no room for KV cache on "
                f"{gpus_per_engine} × {gpu.name}; use more GPUs per engine"
            )
        flops = gpus_per_engine * gpu.bf16_dense_flops * PREFILL_MFU
        return cls(
            kv_capacity_tokens=memory.kv_capacity_tokens,
            prefill_tokens_per_s=flops / (2 * model.params_b * 1e9),
            weight_bytes=model.weight_bytes,
            kv_bytes_per_token=model.kv_bytes_per_token,
            hbm_bytes_per_s=gpus_per_engine * gpu.hbm_bytes_per_s,
        )

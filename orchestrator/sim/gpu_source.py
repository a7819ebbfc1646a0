"""A simulated node of GPUs (a ``TelemetrySource``), for ``orch agent --simulate`` and tests.

Each GPU follows a load: the one last given by ``set_load`` (the simulated pool's workloads drive it), or,
until then, a seeded random walk so a stand-alone agent shows readings that move. Power, temperature, SM
clock and throttle reasons follow the utilisation, with the GPU type's public figures
(``orchestrator.hardware``; an H100-80GB unless told otherwise).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.hardware import H100_80GB, GpuType
from orchestrator.telemetry.sample import GpuSample, ProcessMemory

__all__ = ["SimulatedGpuSource"]

# Idle power (~10% of the power limit, ~70 W on an H100 SXM5), idle SM clock (345 MHz on an H100) and
# temperatures are typical readings, not datasheet figures.
IDLE_POWER_RATIO = 0.1
IDLE_CLOCK_HZ = 345e6
IDLE_TEMP_C = 31.0
LOADED_TEMP_C = 68.0
CONTEXT_BYTES = 512 * 2**20  # the CUDA context a process holds before it allocates anything


@dataclass
class _Gpu:
    index: int
    uuid: str
    utilization: float = 0.0
    memory_used: int = 0
    driven: bool = False  # set_load was called: follow it, stop wandering
    run: str = ""
    role: str = ""
    pool: str = ""
    temperature: float = IDLE_TEMP_C


class SimulatedGpuSource:
    """``gpus`` simulated GPUs of ``gpu_type`` on ``node``; deterministic for a given ``seed`` and calls."""

    def __init__(
        self,
        node: str,
        gpus: int = 8,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        gpu_type: GpuType = H100_80GB,
    ) -> None:
        self.node = node
        self.gpu_type = gpu_type
        self._rng = random.Random(seed)
        self._clock = clock
        self._lock = threading.Lock()
        self._gpus = [self._new_gpu(i) for i in range(gpus)]

    def set_load(
        self,
        index: int,
        utilization_ratio: float,
        memory_used_bytes: int,
        run: str = "",
        role: str = "",
        pool: str = "",
    ) -> None:
        """From the next sample on, GPU ``index`` runs at this utilisation and memory, for this run."""
        if not 0.0 <= utilization_ratio <= 1.0:
            raise ValueError(f"utilization_ratio must be within 0..1, got {utilization_ratio}")
        if not 0 <= memory_used_bytes <= self.gpu_type.memory_bytes:
            raise ValueError(f"memory_used_bytes must be within 0..{self.gpu_type.memory_bytes}")
        with self._lock:
            gpu = self._gpus[index]
            gpu.utilization, gpu.memory_used, gpu.driven = utilization_ratio, memory_used_bytes, True
            gpu.run, gpu.role, gpu.pool = run, role, pool

    def samples(self) -> list[GpuSample]:
        at = self._clock()
        with self._lock:
            return [self._sample(gpu, at) for gpu in self._gpus]

    def close(self) -> None:
        """Nothing to release."""

    def _new_gpu(self, index: int) -> _Gpu:
        gpu_uuid = f"GPU-{uuid.UUID(int=self._rng.getrandbits(128), version=4)}"
        return _Gpu(index, gpu_uuid, utilization=self._rng.uniform(0.3, 0.95))

    def _sample(self, gpu: _Gpu, at: float) -> GpuSample:
        if not gpu.driven:
            self._wander(gpu)
        noise = self._rng.uniform(-0.02, 0.02) if gpu.utilization > 0 else 0.0
        util = min(1.0, max(0.0, gpu.utilization + noise))
        limit = self.gpu_type.power_limit_w
        idle = IDLE_POWER_RATIO * limit
        power = idle + (limit - idle) * util * self._rng.uniform(0.85, 0.98)
        gpu.temperature += 0.2 * (IDLE_TEMP_C + (LOADED_TEMP_C - IDLE_TEMP_C) * util - gpu.temperature)
        return GpuSample(
            node=self.node,
            index=gpu.index,
            uuid=gpu.uuid,
            name=self.gpu_type.product_name,
            utilization_ratio=round(util, 4),
            memory_utilization_ratio=round(
                util * 0.45, 4
            ),  # decode-heavy work keeps HBM busy about half as often
            memory_used_bytes=gpu.memory_used,
            memory_total_bytes=self.gpu_type.memory_bytes,
            power_watts=round(power, 1),
            power_limit_watts=limit,
            temperature_celsius=round(gpu.temperature, 1),
            sm_clock_hertz=self.gpu_type.max_sm_clock_hz if util > 0.01 else IDLE_CLOCK_HZ,
            throttle_reasons=_throttle(util, power, limit),
            ecc_errors=dict.fromkeys(
                (
                    "volatile_uncorrected",
                    "volatile_corrected",
                    "aggregate_uncorrected",
                    "aggregate_corrected",
                ),
                0,
            ),
            mig_enabled=False,
            processes=(ProcessMemory(10_000 + gpu.index, gpu.memory_used),) if gpu.memory_used else (),
            pool=gpu.pool,
            run=gpu.run,
            role=gpu.role,
            at=at,
        )

    def _wander(self, gpu: _Gpu) -> None:
        """An undriven GPU drifts between idle and busy, so a stand-alone agent has something to show."""
        gpu.utilization = min(1.0, max(0.0, gpu.utilization + self._rng.uniform(-0.1, 0.12)))
        gpu.memory_used = CONTEXT_BYTES + int(
            gpu.utilization * 0.8 * (self.gpu_type.memory_bytes - CONTEXT_BYTES)
        )


def _throttle(util: float, power: float, limit: float) -> tuple[str, ...]:
    if util <= 0.01:
        return ("gpu_idle",)
    return ("sw_power_cap",) if power >= 0.95 * limit else ()

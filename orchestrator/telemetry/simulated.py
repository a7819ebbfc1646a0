"""A simulated node of H100-80GB GPUs (a ``TelemetrySource``), for ``orch agent --simulate`` and tests.

Each GPU follows a load: the one last given by ``set_load`` (the simulated pool's workloads drive it), or,
until then, a seeded random walk so a stand-alone agent shows readings that move. Power, temperature, SM
clock and throttle reasons follow the utilisation with the public H100 SXM5 figures below.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.rollout.hardware import H100_80GB
from orchestrator.telemetry.sample import GpuSample, ProcessMemory

__all__ = ["SimulatedGpuSource"]

# NVIDIA H100 datasheet (SXM5): max TDP 700 W; max boost clock 1,980 MHz. nvidia-smi names the part
# "NVIDIA H100 80GB HBM3". Idle power (~70 W), idle SM clock (345 MHz) and temperatures are typical readings.
NAME = "NVIDIA H100 80GB HBM3"
POWER_LIMIT_W = 700.0
IDLE_POWER_W = 70.0
BOOST_CLOCK_HZ = 1_980e6
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
    """``gpus`` simulated H100-80GB GPUs on ``node``; deterministic for a given ``seed`` and call sequence."""

    def __init__(
        self, node: str, gpus: int = 8, seed: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        self.node = node
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
        if not 0 <= memory_used_bytes <= H100_80GB.memory_bytes:
            raise ValueError(f"memory_used_bytes must be within 0..{H100_80GB.memory_bytes}")
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
        power = IDLE_POWER_W + (POWER_LIMIT_W - IDLE_POWER_W) * util * self._rng.uniform(0.85, 0.98)
        gpu.temperature += 0.2 * (IDLE_TEMP_C + (LOADED_TEMP_C - IDLE_TEMP_C) * util - gpu.temperature)
        return GpuSample(
            node=self.node,
            index=gpu.index,
            uuid=gpu.uuid,
            name=NAME,
            utilization_ratio=round(util, 4),
            memory_utilization_ratio=round(
                util * 0.45, 4
            ),  # decode-heavy work keeps HBM busy about half as often
            memory_used_bytes=gpu.memory_used,
            memory_total_bytes=H100_80GB.memory_bytes,
            power_watts=round(power, 1),
            power_limit_watts=POWER_LIMIT_W,
            temperature_celsius=round(gpu.temperature, 1),
            sm_clock_hertz=BOOST_CLOCK_HZ if util > 0.01 else IDLE_CLOCK_HZ,
            throttle_reasons=_throttle(util, power),
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
            gpu.utilization * 0.8 * (H100_80GB.memory_bytes - CONTEXT_BYTES)
        )


def _throttle(util: float, power: float) -> tuple[str, ...]:
    if util <= 0.01:
        return ("gpu_idle",)
    return ("sw_power_cap",) if power >= 0.95 * POWER_LIMIT_W else ()

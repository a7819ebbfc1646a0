"""GPU telemetry of the simulated pool, driven by what its workloads do in virtual time.

For every simulated step the trainer reports its phases; each GPU then gets one sample per
phase, standing for the phase's length (``period_s``): during the rollout phase an engine's
GPUs are busy for the share of the phase its engine was generating and hold weights plus its
KV cache; during the train phase the trainer's GPUs are busy and hold the training state.
GPUs without work in a phase read idle. Each GPU reads as its pool's type (``orchestrator.hardware``):
its memory, power limit and clock; power and temperature follow utilization between an idle floor
and the type's power limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.hardware import H100_80GB, GpuType
from orchestrator.records import Workload
from orchestrator.telemetry.sample import GpuSample

__all__ = ["GpuLoad", "SimTelemetry"]

IDLE_POWER_RATIO = 0.1  # assumption: an idle GPU draws ~10% of its power limit (~70 W on an H100 SXM)
IDLE_TEMPERATURE_C, TEMPERATURE_RISE_C = 32.0, 40.0  # assumption


@dataclass(frozen=True)
class GpuLoad:
    """What one GPU does during one phase."""

    utilization_ratio: float
    memory_used_bytes: int
    role: str


def _idle_power(power_limit_w: float) -> float:
    return IDLE_POWER_RATIO * power_limit_w


def _uuid(node: str, index: int) -> str:
    return f"GPU-sim-{node}-{index}"


class SimTelemetry:
    """Collects phase-by-phase samples; ``drain`` hands the new ones to the controller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[float, GpuSample]] = []
        self._latest: dict[tuple[str, int], GpuSample] = {}

    def record_phase(
        self,
        at: float,
        period_s: float,
        loads: dict[tuple[str, int], GpuLoad],
        workloads: Sequence[Workload],
        shown_at: float = 0.0,
        gpu_types: Mapping[str, GpuType] | None = None,
    ) -> None:
        """One phase of a run: ``loads`` maps (node, gpu index) to what that GPU did.

        ``gpu_types`` maps a pool to its GPU type (an H100-80GB where none is given). The samples
        become visible at wall time ``shown_at`` (``time.monotonic()``; 0: at once), which lets a
        paced simulation show its phases as they happen."""
        run = workloads[0].run_id if workloads else ""
        pools = {w.node: w.pool for w in workloads}
        types = gpu_types or {}
        samples = [
            GpuSample(
                node=node,
                index=index,
                uuid=_uuid(node, index),
                name=gpu.product_name,
                utilization_ratio=round(load.utilization_ratio, 4),
                memory_utilization_ratio=round(load.utilization_ratio * 0.6, 4),
                memory_used_bytes=min(load.memory_used_bytes, gpu.memory_bytes),
                memory_total_bytes=gpu.memory_bytes,
                power_watts=round(
                    _idle_power(gpu.power_limit_w) + load.utilization_ratio * gpu.power_limit_w * 0.9, 1
                ),
                power_limit_watts=gpu.power_limit_w,
                temperature_celsius=round(
                    IDLE_TEMPERATURE_C + load.utilization_ratio * TEMPERATURE_RISE_C, 1
                ),
                sm_clock_hertz=gpu.max_sm_clock_hz,
                ecc_errors={"volatile_uncorrected": 0},
                mig_enabled=False,
                pool=pool,
                run=run,
                role=load.role,
                at=at,
                virtual_clock=True,
                period_s=period_s,
            )
            for (node, index), load in sorted(loads.items())
            for pool in [pools.get(node, "")]
            for gpu in [types.get(pool, H100_80GB)]
        ]
        with self._lock:
            self._pending.extend((shown_at, sample) for sample in samples)

    def release(self, node: str, indices: Sequence[int]) -> None:
        """GPUs given back by a deleted workload: idle and empty from the end of their last phase on."""
        with self._lock:
            last = {key: sample for _, sample in self._pending for key in [(sample.node, sample.index)]}
            for index in indices:
                previous = last.get((node, index)) or self._latest.get((node, index))
                if previous is None:
                    continue
                freed = replace(
                    previous,
                    utilization_ratio=0.0,
                    memory_utilization_ratio=0.0,
                    memory_used_bytes=0,
                    power_watts=_idle_power(previous.power_limit_watts),
                    temperature_celsius=IDLE_TEMPERATURE_C,
                    run="",
                    role="",
                    at=previous.at + previous.period_s,
                    period_s=0.0,
                )
                shown = max(
                    (at for at, s in self._pending if (s.node, s.index) == (node, index)), default=0.0
                )
                self._pending.append((shown, freed))

    def drain(self) -> list[GpuSample]:
        """Samples that became visible since the last drain, oldest first."""
        now = time.monotonic()
        with self._lock:
            shown = [sample for at, sample in self._pending if at <= now]
            self._pending = [(at, sample) for at, sample in self._pending if at > now]
            for sample in shown:
                self._latest[(sample.node, sample.index)] = sample
            return shown

    def samples(self) -> list[GpuSample]:
        """The latest visible sample of every GPU that has one (``TelemetrySource``)."""
        self.drain_into_latest()
        with self._lock:
            return list(self._latest.values())

    def drain_into_latest(self) -> None:
        """Move visible samples into the latest view without handing them to a consumer."""
        now = time.monotonic()
        with self._lock:
            for at, sample in self._pending:
                if at <= now:
                    self._latest[(sample.node, sample.index)] = sample

    def close(self) -> None:
        """Nothing to release."""

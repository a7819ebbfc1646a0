"""GPU telemetry of the simulated pool, driven by what its workloads do in virtual time.

For every simulated step the trainer reports its phases; each GPU then gets one sample per
phase, standing for the phase's length (``period_s``): during the rollout phase an engine's
GPUs are busy for the share of the phase its engine was generating and hold weights plus its
KV cache; during the train phase the trainer's GPUs are busy and hold the training state.
GPUs without work in a phase read idle. Power and temperature follow utilization between an
idle floor and the H100 SXM's 700 W limit (NVIDIA H100 datasheet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from orchestrator.records import Workload
from orchestrator.rollout.hardware import H100_80GB
from orchestrator.telemetry.sample import GpuSample

__all__ = ["GpuLoad", "SimTelemetry"]

H100_POWER_LIMIT_W = 700.0  # H100 SXM5 max thermal design power, NVIDIA H100 datasheet
IDLE_POWER_W = 70.0  # assumption: an idle H100 SXM draws ~70 W
H100_MAX_SM_CLOCK_HZ = 1.98e9  # H100 SXM5 max boost clock, 1,980 MHz (NVIDIA H100 datasheet)
IDLE_TEMPERATURE_C, TEMPERATURE_RISE_C = 32.0, 40.0  # assumption


@dataclass(frozen=True)
class GpuLoad:
    """What one GPU does during one phase."""

    utilization_ratio: float
    memory_used_bytes: int
    role: str


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
    ) -> None:
        """One phase of a run: ``loads`` maps (node, gpu index) to what that GPU did.

        The samples become visible at wall time ``shown_at`` (``time.monotonic()``; 0: at once),
        which lets a paced simulation show its phases as they happen."""
        run = workloads[0].run_id if workloads else ""
        pools = {w.node: w.pool for w in workloads}
        samples = [
            GpuSample(
                node=node,
                index=index,
                uuid=_uuid(node, index),
                name=H100_80GB.name,
                utilization_ratio=round(load.utilization_ratio, 4),
                memory_utilization_ratio=round(load.utilization_ratio * 0.6, 4),
                memory_used_bytes=min(load.memory_used_bytes, H100_80GB.memory_bytes),
                memory_total_bytes=H100_80GB.memory_bytes,
                power_watts=round(
                    IDLE_POWER_W + load.utilization_ratio * (H100_POWER_LIMIT_W - IDLE_POWER_W), 1
                ),
                power_limit_watts=H100_POWER_LIMIT_W,
                temperature_celsius=round(
                    IDLE_TEMPERATURE_C + load.utilization_ratio * TEMPERATURE_RISE_C, 1
                ),
                sm_clock_hertz=H100_MAX_SM_CLOCK_HZ,
                ecc_errors={"volatile_uncorrected": 0},
                mig_enabled=False,
                pool=pools.get(node, ""),
                run=run,
                role=load.role,
                at=at,
                virtual_clock=True,
                period_s=period_s,
            )
            for (node, index), load in sorted(loads.items())
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
                    power_watts=IDLE_POWER_W,
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

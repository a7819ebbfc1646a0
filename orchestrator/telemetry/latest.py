"""The seam ``orch gpus`` and ``orch top`` read through: the newest sample of each GPU, from a store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator.records import GpuReading
from orchestrator.telemetry.sample import GpuSample

__all__ = ["LatestGpuReadings", "LatestGpuSamples", "latest_readings", "latest_samples"]


@runtime_checkable
class LatestGpuReadings(Protocol):
    """Anything that can list the newest sample of each GPU with the wall time it was received."""

    def latest_gpu_readings(self) -> list[GpuReading]: ...


@runtime_checkable
class LatestGpuSamples(Protocol):
    """Anything that can list the newest sample of each GPU (the SQL store, a test stub)."""

    def latest_gpu_samples(self) -> list[GpuSample]: ...


def latest_readings(store: object) -> list[GpuReading]:
    """``store.latest_gpu_readings()`` where the store has it, else ``[]`` (a store without telemetry)."""
    if isinstance(store, LatestGpuReadings):
        return list(store.latest_gpu_readings())
    return []


def latest_samples(store: object) -> list[GpuSample]:
    """``store.latest_gpu_samples()`` where the store has it, else ``[]`` (a store without telemetry)."""
    if isinstance(store, LatestGpuSamples):
        return list(store.latest_gpu_samples())
    return []

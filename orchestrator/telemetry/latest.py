"""The seam ``orch gpus`` and ``orch top`` read through: the newest sample of each GPU, from a store."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from orchestrator.telemetry.sample import GpuSample

__all__ = ["LatestGpuSamples", "latest_samples"]


@runtime_checkable
class LatestGpuSamples(Protocol):
    """Anything that can list the newest sample of each GPU (the SQL store, a test stub)."""

    def latest_gpu_samples(self) -> list[GpuSample]: ...


def latest_samples(store: object) -> list[GpuSample]:
    """``store.latest_gpu_samples()`` where the store has it, else ``[]`` (a store without telemetry)."""
    if isinstance(store, LatestGpuSamples):
        return list(store.latest_gpu_samples())
    return []

"""One reading of one GPU, from any source (NVML, dcgm-exporter, the simulator).

``GpuSample`` is a value type shared with the pure core, so it lives in ``orchestrator.records``.
"""

from __future__ import annotations

from typing import Protocol

from orchestrator.records import GpuSample, ProcessMemory

__all__ = ["GpuSample", "ProcessMemory", "TelemetrySource"]


class TelemetrySource(Protocol):
    """Anything that can read the GPUs of one node (or a whole simulated pool)."""

    def samples(self) -> list[GpuSample]: ...

    def close(self) -> None: ...

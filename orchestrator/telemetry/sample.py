"""One reading of one GPU, from any source (NVML, dcgm-exporter, the simulator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["GpuSample", "ProcessMemory", "TelemetrySource"]


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuSample:
    """A field that could not be read is None, and ``errors`` says why (field -> short reason)."""

    node: str
    index: int
    uuid: str
    name: str = ""
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    throttle_reasons: tuple[str, ...] = ()
    ecc_errors: dict[str, int] = field(default_factory=dict)  # e.g. {"volatile_uncorrected": 0}
    mig_enabled: bool | None = None
    processes: tuple[ProcessMemory, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)
    pool: str = ""
    run: str = ""
    role: str = ""
    at: float = 0.0  # seconds: wall time for real sources, virtual time for the simulator


class TelemetrySource(Protocol):
    """Anything that can read the GPUs of one node (or a whole simulated pool)."""

    def samples(self) -> list[GpuSample]: ...

    def close(self) -> None: ...

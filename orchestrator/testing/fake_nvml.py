"""An in-memory stand-in for the ``pynvml`` module: N fake GPUs with a driver present, for tests and benches.

Only the functions ``telemetry.nvml.NvmlSource`` calls exist, with pynvml's names, argument order, units
(mW, MHz, bytes, percent) and exception classes (``NVMLError`` and its ``NVMLError_<Name>`` subclasses, each
with its ``value`` code). Failures are injected per GPU and per function::

    nvml = FakeNvml(gpus=8)
    nvml.fail(3, "nvmlDeviceGetPowerUsage", nvml.NVMLError_NotSupported)
    nvml.lose(5)                      # every call on GPU 5 raises NVMLError_GpuIsLost
    source = NvmlSource("node-a", nvml=nvml)

It never imports pynvml (that stays in ``telemetry.nvml``), and it only models a machine WITH a driver:
the no-driver path is tested through the real pynvml.

Calls cost nothing unless ``call_costs`` gives a CPU cost per function (seconds; ``default_cost`` for the
rest): each call then busy-waits until its thread has spent that much CPU time, so a bench that counts CPU
seconds sees the driver's share. ``PUBLISHED_CALL_COSTS`` holds the figures the telemetry bench uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

__all__ = ["PUBLISHED_CALL_COSTS", "PUBLISHED_DEFAULT_COST", "FakeGpu", "FakeNvml", "spend_cpu"]

# Per-call NVML cost in seconds, for an estimate without a driver. These are the figures of orch issue 12,
# not independently sourced: no public per-call timing of these three functions was found. The one public
# measurement found is of the same order: pynvml temperature + utilization + memory info + power took
# ~0.09 ms together on an RTX 5080 (github.com/davidboulay/OpenKraken/pull/3, "NVML ~0.09 ms/sample").
PUBLISHED_CALL_COSTS: dict[str, float] = {
    "nvmlDeviceGetUtilizationRates": 2.5e-6,
    "nvmlDeviceGetMemoryInfo": 11.6e-6,
    "nvmlDeviceGetComputeRunningProcesses": 4.5e-3,
}
# Calls with no figure (power, clocks, ECC, nvmlInit, handles, ...) are charged the cheapest one: an
# assumption, so the estimate is a floor for them.
PUBLISHED_DEFAULT_COST = PUBLISHED_CALL_COSTS["nvmlDeviceGetUtilizationRates"]


def spend_cpu(seconds: float) -> None:
    """Busy-wait until this thread has used ``seconds`` of CPU time (not wall time: a preempted wait
    still charges the full cost)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class NVMLError(Exception):
    """pynvml's base error: ``value`` is the NVML return code."""

    value = 999

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_Uninitialized(NVMLError):
    value = 1


class NVMLError_NotSupported(NVMLError):
    value = 3


class NVMLError_NoPermission(NVMLError):
    value = 4


class NVMLError_DriverNotLoaded(NVMLError):
    value = 9


class NVMLError_LibraryNotFound(NVMLError):
    value = 12


class NVMLError_GpuIsLost(NVMLError):
    value = 15


_MESSAGES = {
    1: "Uninitialized",
    3: "Not Supported",
    4: "Insufficient Permissions",
    9: "Driver Not Loaded",
    12: "NVML Shared Library Not Found",
    15: "GPU is lost",
}


@dataclass
class FakeGpu:
    """One fake GPU's readings, in NVML's own units (an H100 80GB at work by default)."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    utilization_percent: int = 87
    memory_utilization_percent: int = 41
    memory_total: int = 81_559 * 2**20
    memory_used: int = 61 * 2**30
    power_mw: int = 612_000
    power_limit_mw: int = 700_000
    temperature_c: int = 64
    sm_clock_mhz: int = 1_980
    clocks_event_reasons: int = 0x004  # sw power cap
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {(1, 0): 0, (0, 0): 2, (1, 1): 1, (0, 1): 7}
    )
    mig_mode: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=lambda: [(4242, 60 * 2**30)])


class FakeNvml:
    """A module-like object with the pynvml API subset orch uses, over ``gpus`` fake GPUs."""

    NVMLError = NVMLError
    NVMLError_Uninitialized = NVMLError_Uninitialized
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVMLError_GpuIsLost = NVMLError_GpuIsLost

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_AGGREGATE_ECC = 1
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(
        self,
        gpus: int = 8,
        call_costs: Mapping[str, float] | None = None,
        default_cost: float = 0.0,
        spend: Callable[[float], None] = spend_cpu,
    ) -> None:
        """``call_costs``: CPU seconds per pynvml function name, ``default_cost`` for any other call;
        ``spend`` charges them (a test passes a recorder)."""
        self.call_costs = dict(call_costs or {})
        self.default_cost = default_cost
        self._spend = spend
        self.gpus = [FakeGpu(i, f"GPU-00000000-0000-4000-8000-{i:012x}") for i in range(gpus)]
        self.initialised = 0  # nvmlInit minus nvmlShutdown calls, like NVML's reference count
        self.init_calls = 0
        self.calls = 0
        self._failures: dict[tuple[int, str], type[NVMLError]] = {}
        self._lost: set[int] = set()

    # ---- fault injection ------------------------------------------------------------------------

    def fail(self, index: int, function: str, error: type[NVMLError] = NVMLError_NotSupported) -> None:
        """Make ``function`` (a pynvml name: ``nvmlDeviceGetPowerUsage``) raise ``error`` on GPU ``index``."""
        self._failures[(index, function)] = error

    def lose(self, index: int) -> None:
        """GPU ``index`` fell off the bus: every call on it raises ``NVMLError_GpuIsLost``."""
        self._lost.add(index)

    def heal(self, index: int) -> None:
        self._lost.discard(index)
        self._failures = {key: error for key, error in self._failures.items() if key[0] != index}

    # ---- library -----------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self._charge("nvmlInit")
        self.init_calls += 1
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._charge("nvmlShutdown")
        self._check_init()
        self.initialised -= 1

    def nvmlDeviceGetCount(self) -> int:
        self._charge("nvmlDeviceGetCount")
        self._check_init()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._charge("nvmlDeviceGetHandleByIndex")
        self._check_init()
        if index in self._lost:
            raise NVMLError_GpuIsLost()
        return self.gpus[index]

    # ---- per device ----------------------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str:
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=gpu.utilization_percent, memory=gpu.memory_utilization_percent)

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu) -> Any:
        gpu = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(
            total=gpu.memory_total, used=gpu.memory_used, free=gpu.memory_total - gpu.memory_used
        )

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetTemperature(self, handle: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature_c

    def nvmlDeviceGetClockInfo(self, handle: FakeGpu, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return self._gpu(handle, "nvmlDeviceGetClockInfo").sm_clock_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeGpu) -> int:
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeGpu, error_type: int, counter_type: int) -> int:
        return self._gpu(handle, "nvmlDeviceGetTotalEccErrors").ecc[(error_type, counter_type)]

    def nvmlDeviceGetMigMode(self, handle: FakeGpu) -> list[int]:
        gpu = self._gpu(handle, "nvmlDeviceGetMigMode")
        return [gpu.mig_mode, gpu.mig_mode]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        gpu = self._gpu(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.processes]

    # ---- helpers ---------------------------------------------------------------------------------------

    def _charge(self, function: str) -> None:
        cost = self.call_costs.get(function, self.default_cost)
        if cost > 0:
            self._spend(cost)

    def _check_init(self) -> None:
        if self.initialised <= 0:
            raise NVMLError_Uninitialized()

    def _gpu(self, handle: FakeGpu, function: str) -> FakeGpu:
        self._charge(function)
        self._check_init()
        self.calls += 1
        if handle.index in self._lost:
            raise NVMLError_GpuIsLost()
        error = self._failures.get((handle.index, function))
        if error is not None:
            raise error()
        return handle

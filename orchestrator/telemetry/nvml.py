"""GPU samples from NVML through ``pynvml`` (nvidia-ml-py): the only module of orch that imports pynvml.

NVML is initialised once per source (``nvmlInit`` in the constructor, ``nvmlShutdown`` in ``close``). Every
field is read on its own: a read that fails (``NVMLError_NotSupported`` on a GPU without ECC,
``NVMLError_GpuIsLost`` after a fall off the bus, ...) leaves that field None and records a short reason in
``GpuSample.errors``; the sampler never raises once it is running. The NVML module is a parameter, so tests
pass ``orchestrator.testing.fake_nvml.FakeNvml`` instead of the real library.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pynvml

from orchestrator.errors import OrchError
from orchestrator.telemetry.sample import GpuSample, ProcessMemory

__all__ = ["THROTTLE_BITS", "NvmlSource", "NvmlUnavailable", "error_reason"]

SIMULATE_HINT = "use --simulate for a simulated GPU source"

# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits (nvml.h), named as the exporter's `reason` label.
THROTTLE_BITS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# ECC counter (error type, counter type) pairs, by the key they get in GpuSample.ecc_errors.
_ECC_KINDS = (
    ("volatile_uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_VOLATILE_ECC"),
    ("volatile_corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC"),
    ("aggregate_uncorrected", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", "NVML_AGGREGATE_ECC"),
    ("aggregate_corrected", "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_AGGREGATE_ECC"),
)
_NO_DRIVER = frozenset({"NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"})


class NvmlUnavailable(OrchError):
    """NVML could not be initialised on this node (no driver, no library, no permission)."""


def error_reason(error: BaseException) -> str:
    """``NVMLError_GpuIsLost`` -> ``gpu_is_lost``: a short, bounded label value for an NVML error."""
    name = type(error).__name__
    if name.startswith("NVMLError_"):
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("NVMLError_")).lower()
    return f"nvml_error_{getattr(error, 'value', 'unknown')}"


def _utilization(nvml: Any, handle: Any) -> dict[str, Any]:
    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
    return {"utilization_ratio": rates.gpu / 100.0, "memory_utilization_ratio": rates.memory / 100.0}


def _memory(nvml: Any, handle: Any) -> dict[str, Any]:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return {"memory_used_bytes": int(info.used), "memory_total_bytes": int(info.total)}


def _power(nvml: Any, handle: Any) -> dict[str, Any]:
    return {"power_watts": nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0}


def _power_limit(nvml: Any, handle: Any) -> dict[str, Any]:
    return {"power_limit_watts": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0}


def _temperature(nvml: Any, handle: Any) -> dict[str, Any]:
    return {"temperature_celsius": float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))}


def _sm_clock(nvml: Any, handle: Any) -> dict[str, Any]:
    return {"sm_clock_hertz": nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM) * 1e6}


def _throttle(nvml: Any, handle: Any) -> dict[str, Any]:
    # Renamed "clocks event reasons" in newer drivers; older bindings only have the throttle name.
    read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or (
        nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    mask = int(read(handle))
    return {"throttle_reasons": tuple(name for bit, name in THROTTLE_BITS.items() if mask & bit)}


def _ecc(nvml: Any, handle: Any) -> dict[str, Any]:
    counts = {
        key: int(nvml.nvmlDeviceGetTotalEccErrors(handle, getattr(nvml, kind), getattr(nvml, counter)))
        for key, kind, counter in _ECC_KINDS
    }
    return {"ecc_errors": counts}


def _mig(nvml: Any, handle: Any) -> dict[str, Any]:
    current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    return {"mig_enabled": current == nvml.NVML_DEVICE_MIG_ENABLE}


def _processes(nvml: Any, handle: Any) -> dict[str, Any]:
    found = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    # usedGpuMemory is None where NVML cannot attribute memory (e.g. no access to other PID namespaces).
    rows = (ProcessMemory(int(p.pid), int(p.usedGpuMemory)) for p in found if p.usedGpuMemory is not None)
    return {"processes": tuple(rows)}


# Each reader fills the listed GpuSample fields; when it fails, those fields keep their defaults
# (None, or empty for the collection fields) and each gets the reason in `errors`.
_READERS: tuple[tuple[tuple[str, ...], Callable[[Any, Any], dict[str, Any]]], ...] = (
    (("utilization_ratio", "memory_utilization_ratio"), _utilization),
    (("memory_used_bytes", "memory_total_bytes"), _memory),
    (("power_watts",), _power),
    (("power_limit_watts",), _power_limit),
    (("temperature_celsius",), _temperature),
    (("sm_clock_hertz",), _sm_clock),
    (("throttle_reasons",), _throttle),
    (("ecc_errors",), _ecc),
    (("mig_enabled",), _mig),
    (("processes",), _processes),
)


@dataclass
class _Device:
    handle: Any = None
    uuid: str = ""
    name: str = ""


class NvmlSource:
    """Reads every GPU of this node through NVML (a ``TelemetrySource``)."""

    def __init__(self, node: str, nvml: Any = None, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self._nvml = pynvml if nvml is None else nvml
        self._clock = clock
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            raise NvmlUnavailable(_init_message(error)) from error
        self._open = True
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as error:
            self.close()
            raise NvmlUnavailable(
                f"NVML cannot count the GPUs on this node ({error}); {SIMULATE_HINT}"
            ) from error
        self._devices = [_Device() for _ in range(count)]

    def samples(self) -> list[GpuSample]:
        """One sample per GPU; never raises for a failed read."""
        at = self._clock()
        return [self._sample(index, at) for index in range(len(self._devices))]

    def close(self) -> None:
        if self._open:
            self._open = False
            with contextlib.suppress(self._nvml.NVMLError):  # a lost driver has nothing left to release
                self._nvml.nvmlShutdown()

    def _sample(self, index: int, at: float) -> GpuSample:
        errors: dict[str, str] = {}
        device = self._device(index, errors)
        fields: dict[str, Any] = {}
        if device.handle is not None:
            fields = self._read_fields(device.handle, errors)
        return GpuSample(
            node=self.node, index=index, uuid=device.uuid, name=device.name, errors=errors, at=at, **fields
        )

    def _device(self, index: int, errors: dict[str, str]) -> _Device:
        """The GPU's handle, UUID and name: read once, retried on the next sample if they failed."""
        device = self._devices[index]
        if device.handle is None:
            nvml = self._nvml
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                device.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                device.name = _text(nvml.nvmlDeviceGetName(handle))
                device.handle = handle
            except nvml.NVMLError as error:
                errors["device"] = error_reason(error)
        return device

    def _read_fields(self, handle: Any, errors: dict[str, str]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        lost: str | None = None
        for names, reader in _READERS:
            if lost is not None:  # a lost GPU answers nothing more this sample: do not wait on each call
                errors.update(dict.fromkeys(names, lost))
                continue
            try:
                fields.update(reader(self._nvml, handle))
            except self._nvml.NVMLError as error:
                reason = error_reason(error)
                errors.update(dict.fromkeys(names, reason))
                if reason == "gpu_is_lost":
                    lost = reason
        return fields


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _init_message(error: BaseException) -> str:
    if type(error).__name__ in _NO_DRIVER:
        return f"no NVIDIA driver on this node ({error}); {SIMULATE_HINT}"
    return f"NVML could not initialise on this node ({error}); {SIMULATE_HINT}"

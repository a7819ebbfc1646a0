"""The per-GPU gauge series and the ``GpuSample`` fields they carry: one table, read both ways.

The exporter (``exporter.GpuCollector``) writes a sample's fields as these series; the controller's scraper
(``scrape.parse_agent_metrics``) reads the series of an ``orch agent`` back into samples.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.records import GpuSample

__all__ = ["GAUGE_FIELDS", "gauge_value", "sample_field"]

# Plain gauges: metric name -> GpuSample attribute (names from orchestrator.telemetry.names).
GAUGE_FIELDS: dict[str, str] = {
    "orch_gpu_utilization_ratio": "utilization_ratio",
    "orch_gpu_memory_utilization_ratio": "memory_utilization_ratio",
    "orch_gpu_memory_used_bytes": "memory_used_bytes",
    "orch_gpu_memory_total_bytes": "memory_total_bytes",
    "orch_gpu_power_watts": "power_watts",
    "orch_gpu_power_limit_watts": "power_limit_watts",
    "orch_gpu_temperature_celsius": "temperature_celsius",
    "orch_gpu_sm_clock_hertz": "sm_clock_hertz",
    "orch_gpu_mig_enabled": "mig_enabled",
}
# The type of each field that is not a float; a series value is always a float.
_FIELD_TYPES: dict[str, Callable[[float], object]] = {
    "memory_used_bytes": int,
    "memory_total_bytes": int,
    "mig_enabled": bool,
}


def gauge_value(sample: GpuSample, metric: str) -> float | None:
    """The value of the gauge ``metric`` for ``sample``; None when the field could not be read."""
    value = getattr(sample, GAUGE_FIELDS[metric])
    return None if value is None else float(value)


def sample_field(metric: str, value: float) -> tuple[str, object]:
    """The ``GpuSample`` field and typed value that a series of the gauge ``metric`` carries."""
    field = GAUGE_FIELDS[metric]
    return field, _FIELD_TYPES.get(field, float)(value)

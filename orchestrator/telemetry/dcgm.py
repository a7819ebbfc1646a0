"""GPU samples read from an NVIDIA dcgm-exporter already running on the node (its Prometheus ``/metrics``).

dcgm-exporter writes one series per GPU (per GPU instance under MIG) with the labels of its template in
NVIDIA/dcgm-exporter ``internal/pkg/rendermetrics/render_metrics.go``::

    FIELD{gpu="<index>",UUID="<GPU uuid>",pci_bus_id="...",device="nvidia<index>",modelName="<name>"
          [,GPU_I_PROFILE="<profile>",GPU_I_ID="<instance>"][,Hostname="<host>"], ...} VALUE

(``UUID`` is spelt ``uuid`` with ``--use-old-namespace``; both are accepted.) Units, from its
``etc/default-counters.csv`` and the DCGM field reference: ``DCGM_FI_DEV_GPU_UTIL`` and
``DCGM_FI_DEV_MEM_COPY_UTIL`` in percent, ``DCGM_FI_DEV_FB_USED`` / ``_FB_FREE`` in MiB,
``DCGM_FI_DEV_POWER_USAGE`` in W, ``DCGM_FI_DEV_GPU_TEMP`` in °C, ``DCGM_FI_DEV_SM_CLOCK`` in MHz and
``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` as a 0–1 ratio. Under MIG, GPU_UTIL is not reported; the GPU's
utilisation is then its instances' GR_ENGINE_ACTIVE weighted by their compute slices (``3g.40gb`` -> 3),
and its memory the sum over its instances.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.errors import OrchError
from orchestrator.telemetry.sample import GpuSample

__all__ = ["DcgmSource", "DcgmUnavailable", "parse_dcgm"]

MIB = 2**20
# DCGM's "blank" values (no reading): DCGM_INT64_BLANK = 0x7ffffffffffffff0 and up, DCGM_FP64_BLANK = 2**47.
_INT64_BLANK = 0x7FFFFFFFFFFFFFF0
_FP64_BLANK = 140737488355328.0

# Device-level fields: DCGM field -> (GpuSample field, scale).
_DEVICE_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_ratio", 0.01),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("memory_utilization_ratio", 0.01),
    "DCGM_FI_DEV_POWER_USAGE": ("power_watts", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_celsius", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_hertz", 1e6),
}
_MEMORY_FIELDS = {"DCGM_FI_DEV_FB_USED": "used", "DCGM_FI_DEV_FB_FREE": "free"}
_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"


class DcgmUnavailable(OrchError):
    """The dcgm-exporter endpoint could not be read."""


@dataclass
class _Gpu:
    """What one scrape says about one physical GPU, gathered over its series (and MIG instances)."""

    index: int
    uuid: str
    name: str = ""
    values: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # instance -> used/free
    engine: dict[str, tuple[float, float]] = field(default_factory=dict)  # instance -> (active ratio, slices)
    mig: bool = False
    errors: dict[str, str] = field(default_factory=dict)


def parse_dcgm(text: str, node: str, at: float = 0.0) -> list[GpuSample]:
    """dcgm-exporter's exposition text -> one GpuSample per physical GPU, ordered by index."""
    gpus: dict[str, _Gpu] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            _absorb(gpus, sample.name, sample.labels, sample.value)
    return [_to_sample(gpu, node, at) for gpu in sorted(gpus.values(), key=lambda g: g.index)]


class DcgmSource:
    """Reads ``url`` (e.g. ``http://localhost:9400/metrics``) on each ``samples()`` call."""

    def __init__(
        self, url: str, node: str, timeout_s: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.url = url if "://" in url else f"http://{url}"
        self.node = node
        self.timeout_s = timeout_s
        self._clock = clock
        self.samples()  # fail now, with one clear line, rather than on the first scrape

    def samples(self) -> list[GpuSample]:
        at = self._clock()
        return parse_dcgm(self._fetch(), self.node, at)

    def close(self) -> None:
        """Nothing held between reads."""

    def _fetch(self) -> str:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                return response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            raise DcgmUnavailable(f"cannot read dcgm-exporter at {self.url} ({reason})") from error


def _absorb(gpus: dict[str, _Gpu], name: str, labels: dict[str, str], value: float) -> None:
    known = name in _DEVICE_FIELDS or name in _MEMORY_FIELDS or name == _ENGINE_ACTIVE
    if not known or "gpu" not in labels:
        return
    uuid = labels.get("UUID", labels.get("uuid", ""))
    gpu = gpus.get(uuid or labels["gpu"])
    if gpu is None:
        gpu = gpus[uuid or labels["gpu"]] = _Gpu(_index(labels["gpu"]), uuid, labels.get("modelName", ""))
    instance = labels.get("GPU_I_ID", "")
    gpu.mig = gpu.mig or bool(instance)
    if _blank(value):
        gpu.errors[_DEVICE_FIELDS.get(name, ("memory_used_bytes",))[0]] = "blank"
    elif name in _DEVICE_FIELDS:
        gpu.values.setdefault(name, value)  # device fields repeat on each MIG instance's series
    elif name in _MEMORY_FIELDS:
        gpu.memory[instance][_MEMORY_FIELDS[name]] = value
    else:
        gpu.engine[instance] = (value, _slices(labels.get("GPU_I_PROFILE", "")))


def _to_sample(gpu: _Gpu, node: str, at: float) -> GpuSample:
    fields: dict[str, Any] = {
        target: gpu.values[source] * scale
        for source, (target, scale) in _DEVICE_FIELDS.items()
        if source in gpu.values
    }
    if "utilization_ratio" not in fields and gpu.engine:
        fields["utilization_ratio"] = _weighted(gpu.engine.values())
    used, free = _memory_totals(gpu.memory.values())
    if used is not None:
        fields["memory_used_bytes"] = int(used * MIB)
        if free is not None:
            fields["memory_total_bytes"] = int((used + free) * MIB)
    return GpuSample(
        node=node,
        index=gpu.index,
        uuid=gpu.uuid,
        name=gpu.name,
        mig_enabled=gpu.mig,
        errors=dict(gpu.errors),
        at=at,
        **fields,
    )


def _memory_totals(instances: Iterable[dict[str, float]]) -> tuple[float | None, float | None]:
    rows = list(instances)
    used = [row["used"] for row in rows if "used" in row]
    free = [row["free"] for row in rows if "free" in row]
    return (sum(used) if used else None, sum(free) if len(free) == len(used) and free else None)


def _weighted(engine: Iterable[tuple[float, float]]) -> float:
    rows = list(engine)
    weight = sum(slices for _, slices in rows)
    return sum(active * slices for active, slices in rows) / weight if weight else 0.0


def _slices(profile: str) -> float:
    """``3g.40gb`` -> 3 compute slices; an unknown or absent profile counts as 1."""
    match = re.match(r"(\d+)g\.", profile)
    return float(match.group(1)) if match else 1.0


def _index(gpu_label: str) -> int:
    try:
        return int(gpu_label)
    except ValueError:
        return -1


def _blank(value: float) -> bool:
    return value >= _INT64_BLANK or value == _FP64_BLANK

"""GPU samples -> Prometheus: the collector, the HTTP endpoint and the sampling agent behind ``orch agent``.

``GpuCollector`` turns the latest samples into the families of ``names.GPU_METRICS`` on each scrape. Its
two counters are accumulated here, once per distinct sample (a GPU's sample is new when its ``at`` is):
``orch_gpu_telemetry_errors_total`` counts failed reads by field and error, and
``orch_gpu_idle_seconds_total`` the seconds a GPU held by a run spent below ``idle_threshold``.
``Agent`` samples a source every ``interval`` seconds in a thread and feeds every sample to its collector,
so the counters see reads between scrapes too.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.errors import PortUnavailable
from orchestrator.httpguard import GuardConfig, guard_config
from orchestrator.httpserver import Headers, HttpServer, Reply
from orchestrator.telemetry.gpu_series import GAUGE_FIELDS, gauge_value
from orchestrator.telemetry.names import GPU_LABELS, GPU_METRICS
from orchestrator.telemetry.sample import GpuSample, TelemetrySource

__all__ = [
    "THROTTLE_REASONS",
    "TOKEN_ENV",
    "Agent",
    "GpuCollector",
    "MetricsPortUnavailable",
    "MetricsServer",
    "labels_of",
    "parse_interval",
    "serve_metrics",
]

log = logging.getLogger(__name__)

# Every `reason` of orch_gpu_clock_throttle_active (NVML's clocks-event reasons); each is exported as 0 or 1
# on every scrape, so a reason that clears drops to 0 rather than going stale.
THROTTLE_REASONS = (
    "gpu_idle",
    "applications_clocks_setting",
    "sw_power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
    "hw_power_brake_slowdown",
    "display_clock_setting",
)

Labels = tuple[str, ...]

TOKEN_ENV = "ORCH_AGENT_TOKEN"


def labels_of(sample: GpuSample) -> Labels:
    """The values of ``names.GPU_LABELS`` for one sample."""
    values = {"node": sample.node, "gpu": str(sample.index), "uuid": sample.uuid}
    values |= {"pool": sample.pool, "run": sample.run, "role": sample.role}
    return tuple(values[name] for name in GPU_LABELS)


def _family(name: str, extra: Sequence[str] = ()) -> GaugeMetricFamily | CounterMetricFamily:
    kind, help_text = GPU_METRICS[name]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(name, help_text, labels=[*GPU_LABELS, *extra])


class GpuCollector(Collector):
    """A prometheus-client collector over ``source_fn()`` (the latest samples) with accumulated counters."""

    def __init__(
        self,
        source_fn: Callable[[], Sequence[GpuSample]],
        idle_threshold: float = 0.05,
        max_gap_s: float = 60.0,
    ) -> None:
        self._source_fn = source_fn
        self.idle_threshold = idle_threshold
        # A longer gap between two samples (a stalled agent) is not counted as idle time.
        self.max_gap_s = max_gap_s
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, int], GpuSample] = {}
        self._errors: dict[tuple[Labels, str, str], int] = {}
        self._idle: dict[Labels, float] = {}

    def observe(self, samples: Sequence[GpuSample]) -> None:
        """Count the errors and idle time of samples not seen before (idempotent per sample)."""
        with self._lock:
            for sample in samples:
                key = (sample.node, sample.uuid, sample.index)
                previous = self._last.get(key)
                if previous is not None and sample.at <= previous.at:
                    continue
                self._last[key] = sample
                self._count(previous, sample)

    def _count(self, previous: GpuSample | None, sample: GpuSample) -> None:
        labels = labels_of(sample)
        for name, reason in sample.errors.items():
            self._errors[(labels, name, reason)] = self._errors.get((labels, name, reason), 0) + 1
        if previous is None or not previous.run:
            return
        gap = sample.at - previous.at
        util = previous.utilization_ratio
        if util is not None and util < self.idle_threshold and gap <= self.max_gap_s:
            held = labels_of(previous)  # the state since the previous sample: its run, role and pool
            self._idle[held] = self._idle.get(held, 0.0) + gap
        else:
            self._idle.setdefault(labels_of(previous), 0.0)

    def describe(self) -> list[Metric]:
        return []  # no fixed series: do not let the registry call collect() at registration

    def collect(self) -> Iterator[Metric]:
        samples = list(self._source_fn())
        self.observe(samples)
        yield from self._gauges(samples)
        yield self._throttle(samples)
        yield self._ecc(samples)
        yield self._processes(samples)
        with self._lock:
            errors, idle = dict(self._errors), dict(self._idle)
        family = _family("orch_gpu_telemetry_errors_total", ("field", "error"))
        for (labels, name, reason), count in sorted(errors.items()):
            family.add_metric([*labels, name, reason], count)
        yield family
        family = _family("orch_gpu_idle_seconds_total")
        for labels, seconds in sorted(idle.items()):
            family.add_metric(list(labels), seconds)
        yield family

    def _gauges(self, samples: Sequence[GpuSample]) -> Iterator[Metric]:
        for name in GAUGE_FIELDS:
            family = _family(name)
            for sample in samples:
                value = gauge_value(sample, name)
                if value is not None:
                    family.add_metric(list(labels_of(sample)), value)
            yield family

    def _throttle(self, samples: Sequence[GpuSample]) -> Metric:
        family = _family("orch_gpu_clock_throttle_active", ("reason",))
        for sample in samples:
            if "throttle_reasons" in sample.errors or "device" in sample.errors:
                continue  # unknown, not "no reason"
            labels = list(labels_of(sample))
            active = set(sample.throttle_reasons)
            for reason in (*THROTTLE_REASONS, *sorted(active - set(THROTTLE_REASONS))):
                family.add_metric([*labels, reason], 1.0 if reason in active else 0.0)
        return family

    def _ecc(self, samples: Sequence[GpuSample]) -> Metric:
        family = _family("orch_gpu_ecc_errors_total", ("type",))
        for sample in samples:
            labels = list(labels_of(sample))
            for kind, count in sorted(sample.ecc_errors.items()):
                family.add_metric([*labels, kind], count)
        return family

    def _processes(self, samples: Sequence[GpuSample]) -> Metric:
        family = _family("orch_gpu_process_memory_used_bytes", ("pid",))
        for sample in samples:
            labels = list(labels_of(sample))
            for process in sample.processes:
                family.add_metric([*labels, str(process.pid)], process.used_bytes)
        return family


# ---- HTTP ---------------------------------------------------------------------------------------------


class MetricsPortUnavailable(PortUnavailable):
    """The metrics port cannot be bound (in use, or not permitted)."""


class MetricsServer:
    """``registry`` on ``/metrics`` and an open ``/healthz`` (``ok``, for kubelet probes) with a clean
    ``close()``; ``/metrics`` needs the guard's token when one is set."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = "127.0.0.1",
        guard: GuardConfig | None = None,
    ) -> None:
        guard = guard or guard_config(host, None, env_name=TOKEN_ENV)
        guard = replace(guard, open_paths=guard.open_paths | {"/healthz"})

        def answer(path: str, headers: Headers) -> Reply:
            if path == "/metrics":
                return Reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            if path == "/healthz":
                return Reply(200, b"ok\n")
            return Reply(404, b"not found: /metrics or /healthz\n")

        self._server = HttpServer("metrics", host, port, answer, guard, unavailable=MetricsPortUnavailable)
        self._server.start()
        self.host = host
        self.port: int = self._server.port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.stop()


def serve_metrics(
    registry: CollectorRegistry, port: int, host: str = "127.0.0.1", guard: GuardConfig | None = None
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` (port 0: any free port, see ``.port``) until ``.close()``."""
    return MetricsServer(registry, port, host, guard)


# ---- the agent -----------------------------------------------------------------------------------------


class Agent:
    """Samples ``source`` every ``interval`` seconds in a thread; ``stop()`` also closes the source."""

    def __init__(self, source: TelemetrySource, interval: float = 1.0, idle_threshold: float = 0.05) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.source = source
        self.interval = interval
        self.collector = GpuCollector(self.latest, idle_threshold=idle_threshold)
        self.registry = CollectorRegistry()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # the agent's own CPU and memory, next to the GPUs'
        self.last_error: str | None = None
        self._latest: list[GpuSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._servers: list[MetricsServer] = []

    def sample_once(self) -> list[GpuSample]:
        """Read the source now; a source that fails leaves no samples (its GPUs vanish, not go stale)."""
        try:
            samples = list(self.source.samples())
            self.last_error = None
        except Exception as error:  # a sampler thread must outlive a flaky source
            log.warning("telemetry source failed: %s", error)
            samples, self.last_error = [], str(error)
        self.collector.observe(samples)
        with self._lock:
            self._latest = samples
        return samples

    def latest(self) -> list[GpuSample]:
        with self._lock:
            return list(self._latest)

    def start(self) -> Agent:
        """Take one sample now, then keep sampling in a thread."""
        self.sample_once()
        self._thread = threading.Thread(target=self._loop, name="orch-gpu-agent", daemon=True)
        self._thread.start()
        return self

    def serve(self, port: int, host: str = "127.0.0.1", guard: GuardConfig | None = None) -> MetricsServer:
        server = serve_metrics(self.registry, port, host, guard)
        self._servers.append(server)
        return server

    def stop(self) -> None:
        """Stop sampling and serving, and close the source."""
        self._stop.set()
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._thread is not None:
            self._thread.join(timeout=5 + self.interval)
            self._thread = None
        self.source.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample_once()


_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_interval(text: str | float) -> float:
    """``"1s"``, ``"500ms"``, ``"2m"`` or ``"0.1"`` (seconds) -> seconds, which must be positive."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|s|m)?\s*", str(text))
    if match is None:
        raise ValueError(f"not an interval: {text!r} (examples: 1s, 500ms, 0.1)")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError(f"interval must be positive, got {text!r}")
    return seconds

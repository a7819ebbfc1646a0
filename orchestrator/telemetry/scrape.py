"""The controller's side of the agents: scrape their ``/metrics`` and turn the series back into samples."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.records import GpuSample
from orchestrator.telemetry.gpu_series import GAUGE_FIELDS, sample_field

__all__ = ["AgentScrapeFeed", "parse_agent_metrics"]

log = logging.getLogger("orch.telemetry")


def parse_agent_metrics(text: str, at: float, period_s: float) -> list[GpuSample]:
    """One sample per GPU found in an ``orch agent`` exposition."""
    gpus: dict[tuple[str, int], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in GAUGE_FIELDS:
            continue
        for series in family.samples:
            labels = series.labels
            key = (labels.get("node", ""), int(labels.get("gpu", "0")))
            values = gpus.setdefault(
                key,
                {
                    "uuid": labels.get("uuid", ""),
                    "pool": labels.get("pool", ""),
                    "run": labels.get("run", ""),
                    "role": labels.get("role", ""),
                },
            )
            field, value = sample_field(family.name, series.value)
            values[field] = value
    return [
        GpuSample(node=node, index=index, at=at, period_s=period_s, **values)
        for (node, index), values in sorted(gpus.items())
    ]


class AgentScrapeFeed:
    """``TelemetryFeed`` over a list of agent URLs; an unreachable agent is logged and skipped."""

    def __init__(
        self, urls: Sequence[str], *, timeout_s: float = 2.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.urls = [url if url.endswith("/metrics") else url.rstrip("/") + "/metrics" for url in urls]
        self.timeout_s = timeout_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self.failures = 0

    def drain(self) -> list[GpuSample]:
        samples: list[GpuSample] = []
        for url in self.urls:
            now = self.clock()
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                    text = response.read().decode()
            except OSError as error:
                self.failures += 1
                log.warning("cannot scrape agent %s (%s)", url, error)
                continue
            period = now - self._last[url] if url in self._last else 0.0
            self._last[url] = now
            samples.extend(parse_agent_metrics(text, now, period))
        return samples

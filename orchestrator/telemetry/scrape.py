"""The controller's side of the agents: scrape their ``/metrics`` and turn the series back into samples.

An agent with a token wants ``Authorization: Bearer TOKEN``: ``AgentScrapeFeed(token=...)``, which the kube
backend reads from ``$ORCH_AGENT_TOKEN`` or the file ``$ORCH_AGENT_TOKEN_FILE`` names. An agent answering
401 is logged once as an error naming that variable, then skipped like an unreachable one.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from orchestrator.httpguard import bearer, unauthorized
from orchestrator.records import GpuSample
from orchestrator.telemetry.exporter import TOKEN_ENV as AGENT_TOKEN_ENV
from orchestrator.telemetry.gpu_series import GAUGE_FIELDS, sample_field

__all__ = ["AGENT_TOKEN_ENV", "AgentScrapeFeed", "parse_agent_metrics"]

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
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        token: str | None = None,
    ) -> None:
        self.urls = [url if url.endswith("/metrics") else url.rstrip("/") + "/metrics" for url in urls]
        self.timeout_s = timeout_s
        self.clock = clock
        self.token = token
        self._last: dict[str, float] = {}
        self._refused: set[str] = set()  # agents that answered 401 (logged once each)
        self.failures = 0

    def drain(self) -> list[GpuSample]:
        samples: list[GpuSample] = []
        for url in self.urls:
            now = self.clock()
            request = urllib.request.Request(url, headers=bearer(self.token))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    text = response.read().decode()
            except urllib.error.HTTPError as error:
                self.failures += 1
                if error.code != 401:
                    log.warning("cannot scrape agent %s (HTTP %d)", url, error.code)
                elif url not in self._refused:
                    self._refused.add(url)
                    log.error("%s", unauthorized(url, AGENT_TOKEN_ENV, self.token))
                continue
            except OSError as error:
                self.failures += 1
                log.warning("cannot scrape agent %s (%s)", url, error)
                continue
            period = now - self._last[url] if url in self._last else 0.0
            self._last[url] = now
            samples.extend(parse_agent_metrics(text, now, period))
        return samples

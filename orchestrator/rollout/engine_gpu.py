"""The GPU an inference engine runs on, read from an ``orch agent``'s /metrics (NVML figures).

The router uses it where an engine reports nothing about its own load (no /metrics, or one it cannot
read): the GPU's utilization is then the only load figure there is (``core.dispatch`` breaks ties in
in-flight requests with it), and it also shows work the router did not send. NVML's memory figures are
not used: vLLM (``gpu_memory_utilization``) and SGLang (``mem_fraction_static``) allocate their whole KV-cache
pool when they start, so the memory a GPU reports in use stays flat whatever the cache holds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from orchestrator.telemetry.scrape import parse_agent_metrics

__all__ = ["EngineGpu", "parse_engine_gpu"]


@dataclass(frozen=True)
class EngineGpu:
    """An agent's /metrics URL and the GPU on it, by index or UUID."""

    metrics_url: str
    gpu: str

    async def utilization(self, session: aiohttp.ClientSession, timeout_s: float) -> float | None:
        """The GPU's utilization in [0, 1]; None when the agent does not answer or lacks that GPU."""
        try:
            async with session.get(self.metrics_url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as got:
                if got.status != 200:
                    return None
                text = await got.text()
            samples = parse_agent_metrics(text, at=time.time(), period_s=0.0)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        for sample in samples:
            if self.gpu in (str(sample.index), sample.uuid):
                ratio = sample.utilization_ratio
                return None if ratio is None else min(1.0, max(0.0, ratio))
        return None


def parse_engine_gpu(text: str) -> EngineGpu:
    """``URL#GPU`` (e.g. ``http://node-3:9400/metrics#0`` or ``...#GPU-5d1c…``) → EngineGpu."""
    url, sep, gpu = text.rpartition("#")
    if not sep or not url or not gpu:
        raise ValueError(f"--gpu {text!r}: write AGENT_METRICS_URL#GPU, e.g. http://node-3:9400/metrics#0")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--gpu {text!r}: the agent URL must start with http:// or https://")
    return EngineGpu(url, gpu)

"""The GPU an inference engine runs on, read from an ``orch agent``'s /metrics (NVML figures).

The router uses it where an engine reports nothing about its own load (no /metrics, or one it cannot
read): the GPU's utilization is then the only load figure there is (``core.dispatch`` breaks ties in
in-flight requests with it), and it also shows work the router did not send. NVML's memory figures are
not used: vLLM (``gpu_memory_utilization``) and SGLang (``mem_fraction_static``) allocate their whole KV-cache
pool when they start, so the memory a GPU reports in use stays flat whatever the cache holds.

An agent with a token wants ``Authorization: Bearer TOKEN`` on /metrics: ``token`` (``orch router`` passes
``$ORCH_AGENT_TOKEN`` or the file ``$ORCH_AGENT_TOKEN_FILE`` names); a 401 is ``httpguard.Unauthorized``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp

from orchestrator.httpguard import bearer, unauthorized
from orchestrator.telemetry.scrape import AGENT_TOKEN_ENV, parse_agent_metrics

__all__ = ["EngineGpu", "parse_engine_gpu"]


@dataclass(frozen=True)
class EngineGpu:
    """An agent's /metrics URL and the GPU on it, by index or UUID; the agent's token, if it has one."""

    metrics_url: str
    gpu: str
    token: str | None = field(default=None, repr=False)

    async def utilization(self, session: aiohttp.ClientSession, timeout_s: float) -> float | None:
        """The GPU's utilization in [0, 1]; None when the agent does not answer or lacks that GPU;
        ``Unauthorized`` when it refuses the token."""
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with session.get(self.metrics_url, timeout=timeout, headers=bearer(self.token)) as got:
                if got.status == 401:
                    raise unauthorized(self.metrics_url, AGENT_TOKEN_ENV, self.token)
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


def parse_engine_gpu(text: str, token: str | None = None) -> EngineGpu:
    """``URL#GPU`` (e.g. ``http://node-3:9400/metrics#0`` or ``...#GPU-5d1c…``) → EngineGpu; it sends
    ``token`` to the agent."""
    url, sep, gpu = text.rpartition("#")
    if not sep or not url or not gpu:
        raise ValueError(f"--gpu {text!r}: write AGENT_METRICS_URL#GPU, e.g. http://node-3:9400/metrics#0")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--gpu {text!r}: the agent URL must start with http:// or https://")
    return EngineGpu(url, gpu, token)

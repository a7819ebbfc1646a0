"""An OpenAI-compatible inference engine (vLLM or SGLang) over HTTP, and the parsing of its ``/metrics``.

The metric names below were checked in each engine's own source:

vLLM V0 engine, ``vllm-project/vllm: vllm/engine/metrics.py`` (class ``Metrics``):
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` (gauges), ``vllm:gpu_cache_usage_perc``
  (gauge, fraction of KV blocks in use, 1 = 100 %), ``vllm:generation_tokens_total`` (counter), and the
  Info ``vllm:cache_config`` (exposed as ``vllm:cache_config_info``, labels = ``CacheConfig.metrics_info()``:
  every field of ``CacheConfig`` as a string, ``block_size`` and ``num_gpu_blocks`` among them).
vLLM V1 engine, ``vllm-project/vllm: vllm/v1/metrics/loggers.py`` (class ``PrometheusStatLogger``):
  ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc`` (the V1
  name; ``vllm:gpu_cache_usage_perc`` is still exported but "DEPRECATED: Use vllm:kv_cache_usage_perc"),
  ``vllm:generation_tokens`` (counter, exposed as ``vllm:generation_tokens_total``), and the gauge
  ``vllm:cache_config_info`` (set to 1, labels from ``CacheConfig.metrics_info()``). Series carry the labels
  ``model_name`` and ``engine`` (one per data-parallel engine core), so values are summed over series.
  vLLM exports only a usage *fraction*: the KV total comes from ``num_gpu_blocks × block_size`` when
  ``cache_config_info`` carries both, else from the configured total.
SGLang, ``sgl-project/sglang: python/sglang/srt/metrics/collector.py`` (class ``SchedulerMetricsCollector``),
  exported only with ``--enable-metrics``: ``sglang:num_running_reqs``, ``sglang:num_queue_reqs``,
  ``sglang:num_used_tokens``, ``sglang:token_usage`` (fraction), ``sglang:max_total_num_tokens`` ("Maximum
  total number of tokens in the KV cache pool") and ``sglang:gen_throughput`` (tokens/s).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from orchestrator.rollout.engine import COMPLETIONS, EngineLoad, EngineRejected, EngineUnavailable

__all__ = ["WEIGHTS_VERSION_HEADER", "EngineKind", "HttpEngine", "parse_engine_metrics"]

EngineKind = Literal["vllm", "sglang", "auto"]
KINDS: tuple[str, ...] = ("vllm", "sglang", "auto")

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # V1 name first, then V0's
VLLM_CACHE_CONFIG = "vllm:cache_config_info"
VLLM_GENERATED = "vllm:generation_tokens_total"

SGLANG_RUNNING = "sglang:num_running_reqs"
SGLANG_WAITING = "sglang:num_queue_reqs"
SGLANG_USED = "sglang:num_used_tokens"
SGLANG_USAGE = "sglang:token_usage"
SGLANG_TOTAL = "sglang:max_total_num_tokens"
SGLANG_THROUGHPUT = "sglang:gen_throughput"
# The weights version an engine answered with, when it says so in a header rather than in the body
# (orch's fake engine sends both; a real engine behind a proxy may add the header).
WEIGHTS_VERSION_HEADER = "X-Weights-Version"


@dataclass(frozen=True)
class _Scrape:
    load: EngineLoad
    generated_tokens: float | None  # the counter, for a rate between two scrapes; None when not exported


def _samples(text: str) -> list[Sample]:
    try:
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    except ValueError as error:
        raise EngineUnavailable(f"its /metrics is not Prometheus text: {error}") from error


def _sums(samples: list[Sample]) -> dict[str, float]:
    """Every sample name → the sum of its values over all label sets."""
    sums: dict[str, float] = {}
    for sample in samples:
        sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def _labels(samples: list[Sample], name: str) -> dict[str, str]:
    return next((dict(sample.labels) for sample in samples if sample.name == name), {})


def detect_kind(names: Iterable[str]) -> str:
    """``vllm`` or ``sglang`` from the metric names an engine exports."""
    names = list(names)
    if any(name.startswith("sglang:") for name in names):
        return "sglang"
    if any(name.startswith("vllm:") for name in names):
        return "vllm"
    raise EngineUnavailable("its /metrics has no vllm: or sglang: metrics (SGLang needs --enable-metrics)")


def _need(sums: dict[str, float], name: str) -> float:
    if name not in sums:
        raise EngineUnavailable(f"its /metrics lacks {name}")
    return sums[name]


def _vllm_total(samples: list[Sample], configured: int) -> int:
    labels = _labels(samples, VLLM_CACHE_CONFIG)
    try:
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):  # absent, or "None" before the engine has profiled its memory
        return configured


def _parse_vllm(samples: list[Sample], sums: dict[str, float], kv_total_tokens: int) -> _Scrape:
    usage_name = next((name for name in VLLM_KV_USAGE if name in sums), VLLM_KV_USAGE[0])
    series = max(1, sum(1 for sample in samples if sample.name == usage_name))
    usage = _need(sums, usage_name) / series  # the mean over data-parallel engine cores
    total = _vllm_total(samples, kv_total_tokens)
    load = EngineLoad(
        running=int(_need(sums, VLLM_RUNNING)),
        waiting=int(_need(sums, VLLM_WAITING)),
        kv_used_tokens=round(usage * total),
        kv_total_tokens=total,
        tokens_per_s=0.0,
    )
    return _Scrape(load, sums.get(VLLM_GENERATED))


def _parse_sglang(sums: dict[str, float], kv_total_tokens: int) -> _Scrape:
    total = int(sums.get(SGLANG_TOTAL) or kv_total_tokens)
    used = sums[SGLANG_USED] if SGLANG_USED in sums else _need(sums, SGLANG_USAGE) * total
    load = EngineLoad(
        running=int(_need(sums, SGLANG_RUNNING)),
        waiting=int(_need(sums, SGLANG_WAITING)),
        kv_used_tokens=round(used),
        kv_total_tokens=total,
        tokens_per_s=float(sums.get(SGLANG_THROUGHPUT, 0.0)),
    )
    return _Scrape(load, None)


def _scrape(text: str, kind: str, kv_total_tokens: int) -> _Scrape:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    samples = _samples(text)
    sums = _sums(samples)
    if kind == "auto":
        kind = detect_kind(sums)
    if kind == "sglang":
        return _parse_sglang(sums, kv_total_tokens)
    return _parse_vllm(samples, sums, kv_total_tokens)


def parse_engine_metrics(text: str, kind: str, kv_total_tokens: int) -> EngineLoad:
    """An engine's Prometheus text → ``EngineLoad``. ``kv_total_tokens`` is used where the engine does not
    say its KV capacity (vLLM without ``cache_config_info``); ``tokens_per_s`` is 0 where it is not exported
    as a gauge (vLLM: ``HttpEngine.load`` derives it from the counter between two scrapes)."""
    return _scrape(text, kind, kv_total_tokens).load


class HttpEngine:
    """One OpenAI-compatible engine (an ``InferenceEngine``): ``complete`` forwards a request, ``load`` reads
    its ``/metrics``."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        kind: EngineKind = "auto",
        *,
        kv_total_tokens: int = 0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.kind: str = kind
        self.kv_total_tokens = kv_total_tokens
        self._last_generated: tuple[float, float] | None = None  # (monotonic time, counter)

    def __repr__(self) -> str:
        return f"HttpEngine({self.base_url!r}, kind={self.kind!r})"

    async def complete(self, payload: dict[str, Any], path: str = COMPLETIONS) -> dict[str, Any]:
        """POST ``payload``; the JSON answer, or ``EngineUnavailable`` / ``EngineRejected``."""
        try:
            async with self.session.post(self.base_url + path, json=payload) as response:
                if response.status >= 500:
                    raise EngineUnavailable(f"{self.base_url} answered HTTP {response.status}")
                body = await _json_or_text(response)
                if response.status >= 400:
                    raise EngineRejected(response.status, body)
                if not isinstance(body, dict):
                    raise EngineUnavailable(f"{self.base_url} answered something other than a JSON object")
                version = response.headers.get(WEIGHTS_VERSION_HEADER, "")
                if "weights_version" not in body and version.isdigit():
                    body["weights_version"] = int(version)  # the balancer reads it from the body
                return body
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise EngineUnavailable(f"{self.base_url}: {type(error).__name__}: {error}") from error

    async def alive(self) -> bool:
        """Whether ``GET /health`` answers 200 (vLLM and SGLang both serve it)."""
        try:
            async with self.session.get(self.base_url + "/health") as response:
                return response.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def load(self) -> EngineLoad:
        """Scrape ``/metrics``; ``EngineUnavailable`` when the engine is silent or exports too little."""
        try:
            async with self.session.get(self.base_url + "/metrics") as response:
                if response.status != 200:
                    raise EngineUnavailable(f"{self.base_url}/metrics answered HTTP {response.status}")
                text = await response.text()
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise EngineUnavailable(f"{self.base_url}/metrics: {type(error).__name__}: {error}") from error
        try:
            scrape = _scrape(text, self.kind, self.kv_total_tokens)
        except (ValueError, EngineUnavailable) as error:
            raise EngineUnavailable(f"{self.base_url}/metrics: {error}") from error
        return self._with_rate(scrape)

    def _with_rate(self, scrape: _Scrape) -> EngineLoad:
        """Fill ``tokens_per_s`` from the generated-tokens counter when the engine exports no rate gauge."""
        if scrape.generated_tokens is None:
            return scrape.load
        now, previous = time.monotonic(), self._last_generated
        self._last_generated = (now, scrape.generated_tokens)
        if previous is None or now <= previous[0] or scrape.generated_tokens < previous[1]:
            return scrape.load
        rate = (scrape.generated_tokens - previous[1]) / (now - previous[0])
        load = scrape.load
        return EngineLoad(load.running, load.waiting, load.kv_used_tokens, load.kv_total_tokens, rate)


async def _json_or_text(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text)
    except ValueError:
        return text

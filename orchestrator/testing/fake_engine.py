"""A small fake OpenAI-compatible inference engine (vLLM- or SGLang-flavoured) for router tests.

It serves ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /health`` and ``GET /metrics``
on 127.0.0.1 with an ephemeral port. A request takes ``latency + seconds_per_token × max_tokens`` seconds;
at most ``max_running`` run at once, the rest wait. ``/metrics`` uses the real metric names of the engine
it imitates (see ``orchestrator.rollout.http_engine`` for where each name is defined upstream).

``die()`` makes it fail like a crashed engine: requests in flight and new ones lose their connection
(``mode="close"``) or get HTTP 500 (``mode="500"``), and ``/metrics`` stops answering; ``revive()`` undoes it.
``die_on_request(k)`` dies shortly after the k-th completion request arrives, i.e. mid-request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["FakeEngine"]

Style = Literal["vllm", "sglang"]
DeathMode = Literal["close", "500"]


class _Collector:
    """Renders the fake's live state with the metric names of the engine it imitates."""

    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine
        yield from (_vllm if engine.style == "vllm" else _sglang)(engine)


def _gauge(name: str, value: float, labels: dict[str, str]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, name, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _vllm(engine: FakeEngine) -> Iterator[Metric]:
    labels = {"model_name": engine.name, "engine": "0"}
    yield _gauge("vllm:num_requests_running", engine.running, labels)
    yield _gauge("vllm:num_requests_waiting", engine.waiting, labels)
    yield _gauge("vllm:kv_cache_usage_perc", engine.kv_usage, labels)
    yield _gauge("vllm:gpu_cache_usage_perc", engine.kv_usage, labels)  # V1 still exports the V0 name
    generated = CounterMetricFamily(
        "vllm:generation_tokens", "Number of generation tokens processed.", labels=list(labels)
    )
    generated.add_metric(list(labels.values()), engine.generated_tokens)
    yield generated
    blocks = engine.kv_total_tokens // engine.block_size
    yield _gauge(
        "vllm:cache_config_info",
        1,
        {"block_size": str(engine.block_size), "num_gpu_blocks": str(blocks), "engine": "0"},
    )


def _sglang(engine: FakeEngine) -> Iterator[Metric]:
    labels = {"model_name": engine.name}
    yield _gauge("sglang:num_running_reqs", engine.running, labels)
    yield _gauge("sglang:num_queue_reqs", engine.waiting, labels)
    yield _gauge("sglang:num_used_tokens", engine.kv_used_tokens, labels)
    yield _gauge("sglang:token_usage", engine.kv_usage, labels)
    yield _gauge("sglang:max_total_num_tokens", engine.kv_total_tokens, labels)
    yield _gauge("sglang:gen_throughput", 0.0, labels)


class FakeEngine:
    """An aiohttp fake engine; ``await start()`` inside a running loop, ``await stop()`` when done."""

    def __init__(
        self,
        name: str = "fake",
        *,
        style: Style = "vllm",
        latency: float = 0.0,
        seconds_per_token: float = 0.0,
        max_running: int = 64,
        kv_total_tokens: int = 65536,
        block_size: int = 16,
        metrics: bool = True,
    ) -> None:
        if style not in ("vllm", "sglang"):
            raise ValueError(f"style must be vllm or sglang, not {style!r}")
        self.name, self.style = name, style
        self.latency, self.seconds_per_token = latency, seconds_per_token
        self.max_running, self.kv_total_tokens, self.block_size = max_running, kv_total_tokens, block_size
        self.metrics = metrics  # False: /metrics answers 404, like an engine that exports nothing
        self.received = 0  # completion requests that arrived
        self.completed = 0  # answered with 200
        self.running = 0
        self.peak_running = 0
        self.waiting = 0
        self.kv_used_tokens = 0
        self.generated_tokens = 0
        self.death_mode: DeathMode | None = None
        self._die_on: tuple[int, DeathMode, float] | None = None
        self._ids = itertools.count()
        self._slots: asyncio.Semaphore | None = None
        self._dead: asyncio.Event | None = None
        self._timers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @property
    def kv_usage(self) -> float:
        return self.kv_used_tokens / self.kv_total_tokens if self.kv_total_tokens else 0.0

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on an ephemeral port; the base URL."""
        self._slots = asyncio.Semaphore(self.max_running)
        self._dead = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # like vLLM, abort a request whose client went away
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)
        if self._dead is not None:
            self._dead.set()  # wake requests in flight so shutdown does not wait on them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def die(self, mode: DeathMode = "close") -> None:
        """Fail every request in flight and every later one, like a crashed engine."""
        self.death_mode = mode
        assert self._dead is not None, "start() first"
        self._dead.set()

    def revive(self) -> None:
        self.death_mode = None
        self._dead = asyncio.Event()

    def die_on_request(self, k: int, mode: DeathMode = "close", after: float = 0.05) -> None:
        """Die ``after`` seconds once the k-th (1-based) completion request has arrived."""
        self._die_on = (k, mode, after)

    # ---- handlers ---------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return self._refuse(request) if self.death_mode else web.Response(text="")

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if self.death_mode:
            return self._refuse(request)
        if not self.metrics:
            raise web.HTTPNotFound()
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        self.received += 1
        self._maybe_schedule_death()
        if self.death_mode:
            return self._refuse(request)
        body = await request.json()
        tokens = int(body.get("max_tokens") or 16)
        prompt = _prompt_text(body, chat)
        reserved = len(prompt) // 4 + tokens
        if not await self._run(tokens, reserved):
            return self._refuse(request)
        self.completed += 1
        return web.json_response(_answer(self.name, next(self._ids), prompt, tokens, chat))

    async def _run(self, tokens: int, reserved: int) -> bool:
        """Hold a slot for the request's duration; False when the engine died meanwhile."""
        assert self._slots is not None and self._dead is not None
        dead = self._dead
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        self.kv_used_tokens += reserved
        try:
            duration = self.latency + self.seconds_per_token * tokens
            try:
                await asyncio.wait_for(dead.wait(), timeout=duration)
                return False
            except asyncio.TimeoutError:
                self.generated_tokens += tokens
                return not self.death_mode
        finally:
            self.running -= 1
            self.kv_used_tokens -= reserved
            self._slots.release()

    def _maybe_schedule_death(self) -> None:
        if self._die_on is None or self.received < self._die_on[0]:
            return
        _, mode, after = self._die_on
        self._die_on = None
        timer = asyncio.get_running_loop().create_task(self._die_later(mode, after))
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    async def _die_later(self, mode: DeathMode, after: float) -> None:
        await asyncio.sleep(after)
        self.die(mode)

    def _refuse(self, request: web.Request) -> web.StreamResponse:
        """A crashed engine: drop the connection, or answer 500."""
        if self.death_mode == "close" and request.transport is not None:
            request.transport.close()
        return web.json_response({"error": {"message": f"{self.name} is dead"}}, status=500)


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        return " ".join(str(message.get("content", "")) for message in body.get("messages", []))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt)


def _answer(name: str, index: int, prompt: str, tokens: int, chat: bool) -> dict[str, Any]:
    """An OpenAI-shaped answer whose text echoes the prompt, so a client can check it got its own."""
    text = f"{name} echo: {prompt}"
    usage = {
        "prompt_tokens": len(prompt) // 4,
        "completion_tokens": tokens,
        "total_tokens": len(prompt) // 4 + tokens,
    }
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "length",
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": "length", "logprobs": None}
        kind = "text_completion"
    return {
        "id": f"{name}-{index}",
        "object": kind,
        "created": 0,
        "model": name,
        "system_fingerprint": name,
        "choices": [choice],
        "usage": usage,
    }

"""A small fake OpenAI-compatible inference engine (vLLM- or SGLang-flavoured) for tests and benches.

In-process: ``await FakeEngine(...).start()``. As a process with vLLM's CLI shape (what a
``rollout.engine.kind: command`` spec launches): ``python -m orchestrator.testing.fake_engine serve MODEL
--port P ...`` (see ``orchestrator.testing.fake_engine_cli`` for the flags and where vLLM defines them).

It serves ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health`` and
``GET /metrics`` on 127.0.0.1 (an ephemeral port unless told). A request takes ``latency +
seconds_per_token × tokens`` seconds; at most ``max_running`` run at once, the rest wait. ``/metrics`` uses
the real metric names of the engine it imitates (see ``orchestrator.rollout.http_engine`` for where each
name is defined upstream), plus ``fake_engine_weights_version`` and ``fake_engine_sleeping``.

Weights: the engine serves weights *version* N, read from the file ``version`` in its weights directory
(``weights_path``, the model path; no file: 0). Every completion reports it: header ``X-Weights-Version``
and field ``weights_version``. It reloads through the engines' own endpoints (same paths and bodies):

- vLLM ``POST /collective_rpc`` ``{"method": "reload_weights", "kwargs": {"weights_path": DIR}}`` →
  ``{"results": [null, ...]}`` (one per tensor-parallel worker); without ``weights_path`` it re-reads the
  current directory. vLLM 0.16.0 serves it only with ``VLLM_SERVER_DEV_MODE=1``
  (``vllm/entrypoints/serve/rpc/api_router.py``; ``Worker.reload_weights(*args, **kwargs)`` passes
  ``weights_path`` to ``GPUModelRunner.reload_weights``, ``vllm/v1/worker/gpu_worker.py``; 0.15.1 and
  earlier take no ``weights_path``).
- SGLang 0.5.5 ``POST /update_weights_from_disk`` ``{"model_path": DIR}`` → ``{"success", "message",
  "num_paused_requests"}``, 400 on failure (``python/sglang/srt/entrypoints/http_server.py``).

Sleep: vLLM 0.16.0 ``POST /sleep?level=N``, ``POST /wake_up``, ``GET /is_sleeping`` → ``{"is_sleeping":
bool}`` (``vllm/entrypoints/serve/sleep/api_router.py``, dev mode only); SGLang 0.5.5
``/release_memory_occupation`` and ``/resume_memory_occupation`` (GET or POST). Asleep, completions get
503; ``/health`` still answers. A real engine frees memory only when started with ``--enable-sleep-mode``
(vLLM) or ``--enable-memory-saver`` (SGLang), and otherwise still answers 200; the fake always "frees".

Answers: with a ``FakeModel`` (``orchestrator.testing.fake_model``; the process always has one) the text is
a deterministic model's answer whose share of correct answers grows with the weights version; without
one (the default in-process) it echoes the prompt, so a router test can check it got its own answer.
With ``max_model_len`` set, a request whose prompt + ``max_tokens`` exceed it gets 400, like vLLM.

``request_log``: a file that gets one JSON line per completion answered (``engine``, ``seed``,
``prompt_sha``: the SHA-256 of the prompt text, ``version``), written once the answer is sent, so a
test can see which engine answered which request, and that none was answered twice.

``die()`` makes it fail like a crashed engine: requests in flight and new ones lose their connection
(``mode="close"``) or get HTTP 500 (``mode="500"``), and ``/metrics`` stops answering; ``revive()`` undoes it.
``die_on_request(k)`` dies shortly after the k-th completion request arrives, i.e. mid-request.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from orchestrator.testing.fake_model import FakeModel, read_version

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
        labels = {"model_name": engine.name}
        yield _gauge("fake_engine_weights_version", engine.weights_version, labels)
        yield _gauge("fake_engine_sleeping", engine.sleep_level, labels)


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
        model: FakeModel | None = None,
        weights_path: str | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        request_log: str | None = None,
    ) -> None:
        """``weights_path``: the weights directory whose ``version`` file says the version (None: 0)."""
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
        self.model, self.max_model_len, self.tensor_parallel_size = model, max_model_len, tensor_parallel_size
        self.weights_path = weights_path
        self.request_log = request_log
        self.weights_version = read_version(weights_path) if weights_path else 0
        self.sleep_level = 0  # 0: awake
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

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``port`` (0: an ephemeral one); the base URL."""
        self._slots = asyncio.Semaphore(self.max_running)
        self._dead = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/collective_rpc", self._collective_rpc)
        app.router.add_post("/update_weights_from_disk", self._update_weights_from_disk)
        app.router.add_post("/sleep", self._sleep)
        app.router.add_post("/wake_up", self._wake_up)
        app.router.add_get("/is_sleeping", self._is_sleeping)
        for method in ("GET", "POST"):
            app.router.add_route(method, "/release_memory_occupation", self._release_memory)
            app.router.add_route(method, "/resume_memory_occupation", self._resume_memory)
        # like vLLM, abort a request whose client went away
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
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
        if self.sleep_level:
            return _error(503, f"{self.name} is sleeping (level {self.sleep_level})", "ServiceUnavailable")
        body = await request.json()
        limit = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
        prompt = _prompt_text(body, chat)
        prompt_tokens = len(prompt) // 4
        if self.max_model_len is not None and prompt_tokens + limit > self.max_model_len:
            return _error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                f"requested {prompt_tokens + limit} tokens ({prompt_tokens} in the messages, {limit} in "
                "the completion). Please reduce the length of the messages or completion.",
                "BadRequestError",
            )
        version = (
            self.weights_version
        )  # the version this request is answered with, even if reloaded meanwhile
        text, tokens, reason = self._generate(body, prompt, chat, limit, version)
        if not await self._run(tokens, prompt_tokens + limit):
            return self._refuse(request)
        self.completed += 1
        answer = _answer(self.name, next(self._ids), text, prompt_tokens, tokens, reason, chat)
        answer["weights_version"] = version
        response = web.json_response(answer, headers={"X-Weights-Version": str(version)})
        if self.request_log is not None:
            # Logged once the whole answer is sent: an engine killed before that answered nothing.
            await response.prepare(request)
            await response.write_eof()
            self._log_answer(body.get("seed"), prompt, version)
        return response

    def _log_answer(self, seed: object, prompt: str, version: int) -> None:
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        line = {"engine": self.name, "seed": seed, "prompt_sha": digest, "version": version}
        assert self.request_log is not None
        with open(self.request_log, "a") as log:
            log.write(json.dumps(line) + "\n")

    def _generate(
        self, body: dict[str, Any], prompt: str, chat: bool, limit: int, version: int
    ) -> tuple[str, int, str]:
        """(text, completion tokens, finish reason): an echo, or the model's answer cut at ``limit``."""
        if self.model is None:
            return f"{self.name} echo: {prompt}", limit, "length"
        seed = body.get("seed")
        reply = self.model.reply(prompt, seed=seed if isinstance(seed, int) else 0, version=version)
        needed = max(1, len(reply.text) // 4)
        if needed <= limit:
            return reply.text, needed, "stop"
        return reply.text[: limit * 4], limit, "length"

    # ---- weights and sleep (the engines' own endpoints; see the module docstring) -------------------

    def load_weights(self, path: str | None) -> int:
        """Serve the weights in ``path`` (None: re-read the current directory); the new version."""
        path = path or self.weights_path
        if not path:
            raise ValueError("no weights directory to reload from")
        self.weights_version = read_version(path, missing_ok=False)
        self.weights_path = path
        return self.weights_version

    async def _collective_rpc(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        method = body.get("method") if isinstance(body, dict) else None
        if method is None:
            return web.json_response({"detail": "Missing 'method' in request body"}, status=400)
        if method != "reload_weights":
            return _error(
                500, f"the fake engine implements only reload_weights, not {method!r}", "RuntimeError"
            )
        kwargs = body.get("kwargs") or {}
        try:
            self.load_weights(kwargs.get("weights_path") if isinstance(kwargs, dict) else None)
        except (OSError, ValueError) as error:
            return _error(500, str(error), "RuntimeError")
        return web.json_response({"results": [None] * self.tensor_parallel_size})

    async def _update_weights_from_disk(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        path = body.get("model_path") if isinstance(body, dict) else None
        try:
            if not isinstance(path, str) or not path:
                raise ValueError("model_path is required")
            version = self.load_weights(path)
        except (OSError, ValueError) as error:
            content = {
                "success": False,
                "message": f"Failed to update weights: {error}",
                "num_paused_requests": 0,
            }
            return web.json_response(content, status=400)
        message = f"Succeeded to update model weights. Weight version {version}."
        return web.json_response({"success": True, "message": message, "num_paused_requests": 0})

    async def _sleep(self, request: web.Request) -> web.StreamResponse:
        try:
            level = int(request.query.get("level", "1"))
        except ValueError:
            return web.json_response({"detail": "level must be an integer"}, status=400)
        self.sleep_level = max(level, 1)
        return web.Response(status=200)

    async def _wake_up(self, request: web.Request) -> web.StreamResponse:
        self.sleep_level = 0
        return web.Response(status=200)

    async def _is_sleeping(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"is_sleeping": bool(self.sleep_level)})

    async def _release_memory(self, request: web.Request) -> web.StreamResponse:
        self.sleep_level = 1
        return web.json_response(None)

    async def _resume_memory(self, request: web.Request) -> web.StreamResponse:
        self.sleep_level = 0
        return web.json_response(None)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        card = {
            "id": self.name,
            "object": "model",
            "created": 0,
            "owned_by": "fake",
            "max_model_len": self.max_model_len,
        }
        return web.json_response({"object": "list", "data": [card]})

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


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body; {} when it has none or it is not JSON."""
    try:
        return await request.json() if request.can_read_body else {}
    except ValueError:
        return {}


def _error(status: int, message: str, kind: str) -> web.Response:
    """An error in the OpenAI shape vLLM answers with."""
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _answer(
    name: str, index: int, text: str, prompt_tokens: int, tokens: int, reason: str, chat: bool
) -> dict[str, Any]:
    """An OpenAI-shaped answer."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": tokens,
        "total_tokens": prompt_tokens + tokens,
    }
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
        }
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
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


if __name__ == "__main__":
    from orchestrator.testing.fake_engine_cli import main

    raise SystemExit(main())

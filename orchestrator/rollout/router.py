"""The router service: one OpenAI-compatible endpoint in front of n inference engines.

Each request becomes a ``core.dispatch.Request`` (its prompt tokens estimated, its ``max_tokens`` the most it
may generate) and waits in the dispatcher's central queue until the policy places it on an engine; then it
is forwarded there. Placement, retries on another engine when one is lost, and the release of every
request exactly once are the flight ledger's (``orchestrator.rollout.flights``), shared with the balancer;
every client gets exactly one answer. A background task scrapes each engine's
``/metrics`` into ``dispatcher.update``. An engine whose scrape fails but whose ``/health`` answers reports
nothing about its load: it keeps serving, placed by the dispatcher's own ledger and, where its GPU is
given (``gpus``: an ``orch agent``'s /metrics and the GPU there), by that GPU's NVML utilization. An engine
that answers neither is unhealthy until it does.

Optional request headers ``X-Rollout-Id`` and ``X-Rollout-Turn`` name the rollout a turn belongs to, so
``prefix_affinity`` can send a rollout's next turn to the engine that served its last one. Every answer
carries ``X-Orch-Engine``: the index of the engine that produced it.

Who may call (``orchestrator.httpguard``): no browser (``Origin``: 403), no foreign ``Host`` (403), and with a
token (``ORCH_ROUTER_TOKEN`` or ``--token-file``) ``Authorization: Bearer TOKEN`` on every path but /health
(401; without it /health answers only ``{"ok"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from orchestrator.core.dispatch import Dispatcher, EngineState, Request, make_dispatcher
from orchestrator.errors import PortUnavailable
from orchestrator.httpguard import GuardConfig, Unauthorized, guard_config
from orchestrator.rollout.engine import COMPLETIONS, EngineRejected, EngineUnavailable
from orchestrator.rollout.engine_gpu import EngineGpu
from orchestrator.rollout.flights import AttemptsExhausted, FlightLedger
from orchestrator.rollout.http_engine import EngineKind, HttpEngine
from orchestrator.telemetry.names import ROUTER_METRICS
from orchestrator.telemetry.rollout_metrics import RolloutMetrics
from orchestrator.webguard import guard_middleware

__all__ = [
    "OPEN_PATHS",
    "ROUTER_METRICS",
    "TOKEN_ENV",
    "BadRequest",
    "Router",
    "estimate_tokens",
    "serve_router",
]

TOKEN_ENV = "ORCH_ROUTER_TOKEN"
OPEN_PATHS = ("/health",)  # kubelet probes send no token: without it /health says only {"ok"}


log = logging.getLogger(__name__)

CHAT = "/v1/chat/completions"
CHARS_PER_TOKEN = 4  # a rough English average; the estimate only sizes KV reservations
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators a chat template adds per message
AFFINITY_MEMORY = 100_000  # rollouts whose last engine the router remembers


class BadRequest(ValueError):
    """A malformed client request; ``param`` names the offending field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


# ---- reading a request ------------------------------------------------------------------------


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(name, f"must be a positive integer, got {value!r}")
    return value


def _text_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def _prompt_tokens(prompt: Any) -> int:
    if isinstance(prompt, str) and prompt:
        return _text_tokens(prompt)
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            return len(prompt)  # already token ids
        if all(isinstance(item, (str, list)) and item for item in prompt):
            return sum(_prompt_tokens(item) for item in prompt)  # a batch of prompts
    raise BadRequest("prompt", "must be a non-empty string, list of token ids, or list of those")


def _content_tokens(content: Any, index: int) -> int:
    if content is None or isinstance(content, str):
        return _text_tokens(content or "")
    if isinstance(content, list):  # content parts: only text parts count
        texts = (part.get("text", "") for part in content if isinstance(part, dict))
        return _text_tokens("".join(str(text) for text in texts))
    raise BadRequest(f"messages[{index}].content", "must be a string or a list of content parts")


def _messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "must be a non-empty list of {role, content} objects")
    total = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}]", "must be an object with a string role")
        total += _content_tokens(message.get("content"), index) + MESSAGE_OVERHEAD_TOKENS
    return total


def estimate_tokens(body: dict[str, Any], path: str) -> int:
    """Prompt tokens of a completions or chat request, estimated from its text (≈4 characters a token)."""
    if path == CHAT:
        if "messages" not in body:
            raise BadRequest("messages", "is required")
        return _messages_tokens(body["messages"])
    if "prompt" not in body:
        raise BadRequest("prompt", "is required")
    return _prompt_tokens(body["prompt"])


def _max_new_tokens(body: dict[str, Any], path: str, default: int) -> tuple[str, int]:
    """The field that bounds the answer's length, and its value (``default`` when the body has none)."""
    name = "max_completion_tokens" if path == CHAT and "max_completion_tokens" in body else "max_tokens"
    value = _positive_int(body, name)
    return name, default if value is None else value


def _check_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    if body.get("stream"):
        raise BadRequest("stream", "streaming is not supported by the orch router; send stream: false")
    _positive_int(body, "n")
    return body


def _header_int(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(name, f"must be an integer, got {raw!r}") from None
    if value < 0:
        raise BadRequest(name, f"must be >= 0, got {value}")
    return value


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    """An OpenAI-shaped error body."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status=status
    )


class _Metrics:
    def __init__(self, registry: CollectorRegistry, run: str) -> None:
        shared = RolloutMetrics(registry)
        self.decision_seconds = shared.dispatch_seconds
        self.kv_free = shared.kv_cache_free
        self.run = run

        def helptext(name: str) -> str:
            return ROUTER_METRICS[name][1]

        self.requests = Counter(
            "orch_router_requests",
            helptext("orch_router_requests_total"),
            ["endpoint", "code"],
            registry=registry,
        )
        self.retries = Counter(
            "orch_router_retries", helptext("orch_router_retries_total"), registry=registry
        )
        self.queued = Gauge(
            "orch_router_queued_requests", helptext("orch_router_queued_requests"), registry=registry
        )
        self.healthy = Gauge(
            "orch_router_engine_healthy",
            helptext("orch_router_engine_healthy"),
            ["engine"],
            registry=registry,
        )
        self.outstanding = Gauge(
            "orch_router_engine_outstanding_requests",
            helptext("orch_router_engine_outstanding_requests"),
            ["engine"],
            registry=registry,
        )


class Router:
    """An aiohttp app that queues, places, forwards and retries OpenAI-compatible requests."""

    def __init__(
        self,
        engines: list[HttpEngine],
        policy: str,
        kv_total_tokens: int,
        max_new_tokens_default: int,
        poll_interval: float = 0.5,
        *,
        seed: int = 0,
        request_timeout: float = 600.0,
        max_attempts: int | None = None,
        registry: CollectorRegistry | None = None,
        run: str = "",
        gpus: Sequence[EngineGpu | None] | None = None,
        guard: GuardConfig | None = None,
    ) -> None:
        if not engines:
            raise ValueError("a router needs at least one engine")
        if gpus is not None and len(gpus) != len(engines):
            raise ValueError(f"gpus: {len(gpus)} given for {len(engines)} engines; give one per engine")
        self.gpus: list[EngineGpu | None] = list(gpus) if gpus is not None else [None] * len(engines)
        if max_new_tokens_default < 1:
            raise ValueError(f"max_new_tokens_default must be >= 1, got {max_new_tokens_default}")
        self.engines = engines
        self.kv_total_tokens = kv_total_tokens
        self.max_new_tokens_default = max_new_tokens_default
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        states = [EngineState(engine=i, kv_total_tokens=kv_total_tokens) for i in range(len(engines))]
        self.dispatcher: Dispatcher = make_dispatcher(policy, states, seed=seed)
        self._kv_totals = [kv_total_tokens] * len(engines)  # as last reported, else as configured
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics = _Metrics(self.registry, run)
        self.flights = FlightLedger(
            self.dispatcher,
            engines,
            max_attempts=max_attempts,
            observe_decision=self._metrics.decision_seconds.observe,
            on_lost=lambda engine: self._metrics.healthy.labels(str(engine)).set(0),
            on_requeue=self._metrics.retries.inc,
        )
        self._metrics.queued.set_function(self.dispatcher.queued)
        for index in range(len(engines)):
            self._metrics.healthy.labels(str(index)).set(1)
            self._metrics.outstanding.labels(str(index)).set_function(
                lambda index=index: self.dispatcher.outstanding(index)
            )
        self._last_engine: OrderedDict[int, int] = OrderedDict()  # rollout -> engine of its last turn
        self._gpu_refused: set[int] = set()  # engines whose agent answered 401 (logged once)
        self._runner: web.AppRunner | None = None
        self.guard = replace(guard or GuardConfig(), open_paths=frozenset(OPEN_PATHS))
        self.app = self._make_app()

    @property
    def healthy(self) -> list[bool]:
        """Per engine, whether it is healthy as last seen (the flight ledger's view)."""
        return self.flights.healthy

    # ---- lifecycle ----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[guard_middleware(self.guard)])
        app.router.add_post(COMPLETIONS, self._completions)
        app.router.add_post(CHAT, self._chat)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        app.cleanup_ctx.append(self._poller)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port); the base URL. Beyond loopback the guard needs a
        token (``InsecureEndpoint`` otherwise)."""
        guard_config(host, self.guard.token, env_name=TOKEN_ENV)
        # Bound before the app starts, so a taken port fails before any engine is polled.
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family)
        except OSError as error:
            raise PortUnavailable("the router", host, port, error) from error
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        bound = self._runner.addresses[0][1]
        return f"http://{host}:{bound}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _poller(self, app: web.Application) -> AsyncIterator[None]:
        await self.poll_once()
        task = asyncio.get_running_loop().create_task(self._poll_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # ---- engine telemetry ---------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Scrape every engine's /metrics once and feed the dispatcher."""
        await asyncio.gather(*(self._poll(index) for index in range(len(self.engines))))
        self.flights.pump()

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self.poll_once()

    async def _poll(self, index: int) -> None:
        engine, gpu = self.engines[index], self.gpus[index]
        timeout = max(2.0, 4 * self.poll_interval)
        utilization = None if gpu is None else await self._utilization(index, gpu, timeout)
        try:
            load = await asyncio.wait_for(engine.load(), timeout=timeout)
        except (EngineUnavailable, asyncio.TimeoutError) as error:  # asyncio's: distinct on 3.10
            alive = await asyncio.wait_for(engine.alive(), timeout=timeout)
            if alive:  # it serves but reports nothing: the ledger and the GPU's utilization must do
                if self.healthy[index]:
                    log.info("engine %d (%s) reports no load (%s); using NVML", index, engine.base_url, error)
                total = self._kv_totals[index]
                self.dispatcher.update(EngineState(index, total, healthy=True, utilization_ratio=utilization))
                self._set_health(index, True, update=False)
                return
            if self.healthy[index]:
                log.warning("engine %d (%s) is unhealthy: %s", index, engine.base_url, error)
            self._set_health(index, False)
            return
        total = load.kv_total_tokens or self.kv_total_tokens
        self._kv_totals[index] = total
        state = EngineState(
            engine=index,
            kv_total_tokens=total,
            kv_free_tokens=max(0, total - load.kv_used_tokens),
            running=load.running,
            waiting=load.waiting,
            healthy=True,
            utilization_ratio=utilization,
        )
        if not self.healthy[index]:
            log.warning("engine %d (%s) answers again", index, engine.base_url)
        self.dispatcher.update(state)
        self._set_health(index, True, update=False)
        if total:
            self._metrics.kv_free.labels(self._metrics.run, str(index)).set(state.kv_free_tokens / total)

    async def _utilization(self, index: int, gpu: EngineGpu, timeout: float) -> float | None:
        """The GPU's utilization; an agent refusing the token is logged once (it stays refused until the
        router restarts with the right one) and counts as no figure."""
        try:
            return await gpu.utilization(self.engines[index].session, timeout)
        except Unauthorized as error:
            if index not in self._gpu_refused:
                self._gpu_refused.add(index)
                log.error("engine %d's GPU: %s", index, error)
            return None

    def _set_health(self, index: int, healthy: bool, *, update: bool = True) -> None:
        if update and self.healthy[index] != healthy:
            self.dispatcher.update(
                EngineState(engine=index, kv_total_tokens=self._kv_totals[index], healthy=healthy)
            )
        self.healthy[index] = healthy
        self._metrics.healthy.labels(str(index)).set(1 if healthy else 0)

    # ---- HTTP handlers ------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.Response:
        return await self._handle(request, COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.Response:
        return await self._handle(request, CHAT)

    async def _handle(self, request: web.Request, path: str) -> web.Response:
        try:
            response = await self._answer(request, path)
        except asyncio.CancelledError:
            self._metrics.requests.labels(path, "499").inc()  # the client went away (nginx's code for it)
            raise
        self._metrics.requests.labels(path, str(response.status)).inc()
        return response

    async def _answer(self, request: web.Request, path: str) -> web.Response:
        try:
            body, turn = await self._read(request, path)
        except BadRequest as error:
            return _error(400, str(error), error.param)
        try:
            flight = self.flights.submit(turn)
        except ValueError as error:  # larger than any engine's KV cache
            name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
            return _error(400, f"{name}: {error}", name)
        try:
            engine, answer = await self.flights.fly(flight, body, path=path, timeout_s=self.request_timeout)
        except asyncio.TimeoutError:
            return _error(504, f"no answer within {self.request_timeout:g}s")
        except AttemptsExhausted as error:
            return _error(502, str(error))
        except EngineUnavailable as error:
            return _error(503, str(error))
        except EngineRejected as error:
            return web.json_response(error.body, status=error.status)
        self._remember(turn.rollout_id, engine)
        return web.json_response(answer, headers={"X-Orch-Engine": str(engine)})

    async def _read(self, request: web.Request, path: str) -> tuple[dict[str, Any], Request]:
        try:
            body = _check_body(await request.json())
        except RecursionError:
            raise BadRequest("body", "JSON nested too deeply; send a flatter body") from None
        except ValueError as error:
            if isinstance(error, BadRequest):
                raise
            raise BadRequest("body", "is not valid JSON") from None
        prompt_tokens = estimate_tokens(body, path)
        field_name, max_new = _max_new_tokens(body, path, self.max_new_tokens_default)
        n = body.get("n") or 1
        rid = self.flights.next_id()
        rollout = _header_int(request, "X-Rollout-Id")
        turn = _header_int(request, "X-Rollout-Turn") or 0
        previous = self._last_engine.get(rollout) if rollout is not None else None
        body = {**body, field_name: max_new}  # the engine must honour the bound the reservation assumes
        return body, Request(
            request_id=rid,
            rollout_id=rid if rollout is None else rollout,
            turn=turn,
            prompt_tokens=prompt_tokens,
            max_new_tokens=max_new * n,
            previous_engine=previous,
        )

    def _remember(self, rollout: int, engine: int) -> None:
        self._last_engine[rollout] = engine
        self._last_engine.move_to_end(rollout)
        if len(self._last_engine) > AFFINITY_MEMORY:
            self._last_engine.popitem(last=False)

    async def _health(self, request: web.Request) -> web.Response:
        engines = [
            {
                "url": engine.base_url,
                "healthy": self.healthy[i],
                "outstanding": self.dispatcher.outstanding(i),
                "reserved_tokens": self.dispatcher.reserved_tokens(i),
            }
            for i, engine in enumerate(self.engines)
        ]
        status = 200 if any(self.healthy) else 503
        body = {
            "status": "ok" if status == 200 else "no healthy engine",
            "queued": self.dispatcher.queued(),
            "policy": self.dispatcher.name,
            "engines": engines,
        }
        return web.json_response(body, status=status)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), content_type="text/plain")


def _stop_on_sigterm() -> asyncio.Event:
    """An event set by SIGTERM (a pod's stop), where this loop can take signals."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def serve_router(
    engine_urls: Sequence[str],
    *,
    policy: str,
    host: str,
    port: int,
    kv_total_tokens: int,
    max_new_tokens_default: int,
    kind: EngineKind = "auto",
    poll_interval: float = 0.5,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    gpus: Sequence[EngineGpu | None] | None = None,
    guard: GuardConfig | None = None,
) -> None:
    """Run a router until ``stop`` is set (or forever); ``ready`` gets its URL once it listens.

    ``guard``: who may call (default: no token, so ``host`` must be loopback; ``InsecureEndpoint`` else)."""
    guard = guard or guard_config(host, None, env_name=TOKEN_ENV)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        engines = [HttpEngine(url, session, kind, kv_total_tokens=kv_total_tokens) for url in engine_urls]
        router = Router(
            engines, policy, kv_total_tokens, max_new_tokens_default, poll_interval, gpus=gpus, guard=guard
        )
        url = await router.start(host, port)
        try:
            if ready is not None:
                ready(url)
            await (stop or _stop_on_sigterm()).wait()
        finally:
            await router.stop()

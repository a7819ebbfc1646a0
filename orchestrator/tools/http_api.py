"""The tool service over HTTP (aiohttp): what ``orch tools serve`` listens with.

    POST /v1/exec          {"code": str, "limits": {...}?, "wait": bool = true}
                           200 {"id", "result"}; "wait": false → 202 {"id"}, answer at /v1/results/{id}
    POST /v1/exec/batch    {"requests": [{"code", "limits"?}, ...], "wait": bool = true}
                           200 {"ids", "results"} in request order; admitted all or none
    GET  /v1/results/{id}  200 {"id", "status": "done", "result"} | 202 {"status": "running"} | 404
    POST /v1/verify        {"response": str, "reference": str}
                           200 {"result": {"correct", "extracted", "reason"}}
    POST /v1/verify/batch  {"pairs": [{"response", "reference"}, ...]} → 200 {"results": [...]}
    GET  /metrics, /healthz   both say the sandbox's isolation ("strong" | "namespaces" | "weak") and its
                              call cgroups ("v2" | "v1" | "none"); null: not a local pool

Who may call (``orchestrator.httpguard``): no browser (``Origin``: 403), no foreign ``Host`` (403), and with a
token (``ORCH_TOOLS_TOKEN`` or ``--token-file``) ``Authorization: Bearer TOKEN`` on every path but /healthz
(401). A bad request gets 400 with {"error": "<field>: <what is wrong>"}: also limits above the service's
maxima, which are refused, never lowered. 413 for code over the size limit or a body over ``BodyLimits``'
``max_body_bytes`` (``max_verify_bytes`` for /v1/verify*, whose work grows with its input). A full service
(admission, or ``in_flight_bytes`` of bodies being read and checked at once) gets 429 with a
``Retry-After`` header and {"error", "retry_after_s"}. An id of a ``"wait": false`` call is 128 random
bits; its answer is given once, to the first GET that finds it done. Reward checks run in a small thread
pool (``verify_threads``), and bodies over a MiB are parsed there too, so neither stalls the event loop.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.httpguard import GuardConfig
from orchestrator.tools.admission import Busy, ToolService
from orchestrator.tools.api import MAX_CODE_BYTES
from orchestrator.tools.grading import check_answers
from orchestrator.webguard import guard_middleware

__all__ = ["MAX_BODY_BYTES", "OPEN_PATHS", "TOKEN_ENV", "BodyLimits", "make_app"]

TOKEN_ENV = "ORCH_TOOLS_TOKEN"
OPEN_PATHS = ("/healthz",)  # kubelet probes send no token: without it /healthz says only {"ok"}

MAX_BODY_BYTES = 64 * 2**20  # a batch of many snippets
MAX_BATCH = 4096
_PARSE_INLINE_BYTES = 2**20  # larger bodies are parsed off the event loop


@dataclass(frozen=True)
class BodyLimits:
    """How much request body the HTTP API reads: per request, per reward-check request, and at once."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_verify_bytes: int = 8 * 2**20  # the checks take up to ~0.2 s per MB of adversarial text
    in_flight_bytes: int = 256 * 2**20  # bodies being read, parsed or checked at once, all requests
    verify_threads: int = 2

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_verify_bytes", "in_flight_bytes", "verify_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a whole number >= 1, got {value!r}")
        largest = max(self.max_body_bytes, self.max_verify_bytes)
        if self.in_flight_bytes < largest:
            raise ValueError(
                f"in_flight_bytes: {self.in_flight_bytes} is below one largest body ({largest}); raise it"
            )


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _BodyBudget:
    """Bytes of request bodies held at once; a request reserves its body's size before reading it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def reserve(self, size: int) -> _Reservation:
        if self.used + size > self.total:
            raise Busy(
                -1,
                1.0,
                f"busy: {self.used} bytes of request bodies are being read or checked (the "
                f"maximum is {self.total}); retry after 1s",
            )
        self.used += size
        return _Reservation(self, size)


class _Reservation:
    def __init__(self, budget: _BodyBudget, size: int) -> None:
        self.budget, self.size = budget, size

    def release(self, *_: object) -> None:
        self.budget.used -= self.size
        self.size = 0


def make_app(
    service: ToolService, guard: GuardConfig | None = None, *, body_limits: BodyLimits | None = None
) -> web.Application:
    """An aiohttp application serving ``service`` (started and closed by the caller) to the callers
    ``guard`` admits (default: loopback, no token); ``/healthz`` is open to probes."""
    guard = replace(guard or GuardConfig(), open_paths=frozenset(OPEN_PATHS))
    limits = body_limits or BodyLimits()
    app = web.Application(
        client_max_size=max(limits.max_body_bytes, limits.max_verify_bytes),
        middlewares=[guard_middleware(guard)],
    )
    handlers = _Handlers(service, limits)
    app.router.add_post("/v1/exec", handlers.exec_one)
    app.router.add_post("/v1/exec/batch", handlers.exec_batch)
    app.router.add_get("/v1/results/{id}", handlers.result)
    app.router.add_post("/v1/verify", handlers.verify_one)
    app.router.add_post("/v1/verify/batch", handlers.verify_batch)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)

    async def stop_pool(_: web.Application) -> None:
        handlers.pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_pool)
    return app


class _Handlers:
    def __init__(self, service: ToolService, limits: BodyLimits) -> None:
        self.service = service
        self.limits = limits
        self.bodies = _BodyBudget(limits.in_flight_bytes)
        self.pool = ThreadPoolExecutor(limits.verify_threads, thread_name_prefix="orch-verify")
        self.verifying = 0  # reward-check requests running in the pool

    async def _object(self, request: web.Request, limit: int) -> tuple[dict[str, Any], _Reservation]:
        """The JSON object of the body and its reservation in the body budget (the caller releases it).
        413 above ``limit``, 429 while the budget is spent; nothing is read before both are checked."""
        length = request.content_length
        try:
            if length is not None and length > limit:
                raise _BadRequest(
                    f"body: {length} bytes is above this endpoint's maximum of {limit}; send less", 413
                )
            reservation = self.bodies.reserve(length if length is not None else limit)
        except (_BadRequest, Busy) as error:
            error.unread = True  # type: ignore[attr-defined]
            raise
        try:
            data = bytearray()
            async for chunk in request.content.iter_any():
                if len(data) + len(chunk) > limit:
                    raise _BadRequest(f"body: above this endpoint's maximum of {limit} bytes; send less", 413)
                data += chunk
            if len(data) > _PARSE_INLINE_BYTES:
                body = await asyncio.get_running_loop().run_in_executor(None, _parse, bytes(data))
            else:
                body = _parse(data)
        except BaseException:
            reservation.release()
            raise
        return body, reservation

    async def _exec_body(self, request: web.Request) -> dict[str, Any]:
        # The code, once parsed, is counted by admission (max_pending_bytes): the body's bytes are free.
        body, reservation = await self._object(request, self.limits.max_body_bytes)
        reservation.release()
        return body

    async def exec_one(self, request: web.Request) -> web.StreamResponse:
        async def run() -> web.Response:
            body = await self._exec_body(request)
            pair = (_field(body, "code"), body.get("limits"))
            if not _flag(body, "wait"):
                return web.json_response({"id": self.service.accept(*pair)}, status=202)
            [(call_id, answer)] = self.service.submit_batch([pair])
            result = await asyncio.shield(answer)
            return web.json_response({"id": call_id, "result": result.to_json()})

        return await _answering(run, request)

    async def exec_batch(self, request: web.Request) -> web.StreamResponse:
        async def run() -> web.Response:
            body = await self._exec_body(request)
            wait = _flag(body, "wait")
            items = _list(body, "requests")
            pairs = []
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise _BadRequest(f"requests[{index}]: must be an object with code and limits")
                pairs.append((_field(item, "code", f"requests[{index}]."), item.get("limits")))
            if not wait:
                return web.json_response({"ids": self.service.accept_batch(pairs)}, status=202)
            admitted = self.service.submit_batch(pairs)
            results = await asyncio.gather(*(asyncio.shield(answer) for _, answer in admitted))
            ids = [call_id for call_id, _ in admitted]
            return web.json_response({"ids": ids, "results": [result.to_json() for result in results]})

        return await _answering(run, request)

    async def result(self, request: web.Request) -> web.Response:
        call_id = request.match_info["id"]
        try:
            result = self.service.result(call_id)
        except KeyError:
            return _error(404, f"id: no request {call_id!r} (never accepted, or its answer expired)")
        if result is None:
            return web.json_response({"id": call_id, "status": "running"}, status=202)
        return web.json_response({"id": call_id, "status": "done", "result": result.to_json()})

    async def verify_one(self, request: web.Request) -> web.StreamResponse:
        async def run() -> web.Response:
            body, reservation = await self._object(request, self.limits.max_verify_bytes)
            try:
                pair = (_field(body, "response"), _field(body, "reference"))
            except BaseException:
                reservation.release()
                raise
            return web.json_response({"result": (await self._verify([pair], reservation))[0]})

        return await _answering(run, request)

    async def verify_batch(self, request: web.Request) -> web.StreamResponse:
        async def run() -> web.Response:
            body, reservation = await self._object(request, self.limits.max_verify_bytes)
            try:
                pairs = []
                for index, item in enumerate(_list(body, "pairs")):
                    if not isinstance(item, dict):
                        raise _BadRequest(f"pairs[{index}]: must be an object with response and reference")
                    prefix = f"pairs[{index}]."
                    pairs.append((_field(item, "response", prefix), _field(item, "reference", prefix)))
            except BaseException:
                reservation.release()
                raise
            return web.json_response({"results": await self._verify(pairs, reservation)})

        return await _answering(run, request)

    async def _verify(self, pairs: list[tuple[str, str]], reservation: _Reservation) -> list[dict[str, Any]]:
        """The checks, run in the pool; the body's bytes stay reserved until the pool lets go of them
        (also when the caller disconnects first)."""
        started = time.monotonic()
        self.verifying += 1
        try:
            checking = asyncio.get_running_loop().run_in_executor(self.pool, check_answers, pairs)
        except BaseException:
            self.verifying -= 1
            reservation.release()
            raise
        checking.add_done_callback(reservation.release)
        checking.add_done_callback(self._verified)
        checks = await asyncio.shield(checking)
        self.service.count_verified([check.correct for check in checks], started)
        return [asdict(check) for check in checks]

    def _verified(self, _: object) -> None:
        self.verifying -= 1

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.service.registry)
        isolation = _isolation(self.service)
        if isolation is not None:
            body += (
                "# HELP orch_tools_isolation The sandbox's isolation level in effect (1 for the level).\n"
                f'# TYPE orch_tools_isolation gauge\norch_tools_isolation{{level="{isolation}"}} 1.0\n'
            ).encode()
        cgroup = _sandbox_stat(self.service, "cgroup")
        if cgroup is not None:
            body += (
                "# HELP orch_tools_cgroup The cgroup kind limiting each sandbox call as a whole (1 for it).\n"
                f'# TYPE orch_tools_cgroup gauge\norch_tools_cgroup{{kind="{cgroup}"}} 1.0\n'
            ).encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        stats = asdict(self.service.stats())
        bodies = {"verifying": self.verifying, "body_bytes_in_flight": self.bodies.used}
        isolation = {
            "isolation": _isolation(self.service),
            "cgroup": _sandbox_stat(self.service, "cgroup"),
            "cgroup_because": _sandbox_stat(self.service, "cgroup_because"),
        }
        return web.json_response({"ok": True, **stats, **bodies, **isolation})


def _isolation(service: ToolService) -> str | None:
    """The isolation level of a local sandbox pool behind ``service`` (None for other executors)."""
    return _sandbox_stat(service, "isolation")


def _sandbox_stat(service: ToolService, name: str) -> str | None:
    """The string stat ``name`` of a local sandbox pool behind ``service`` (None for other executors)."""
    value = getattr(getattr(service.executor, "stats", None), name, None)
    return value if isinstance(value, str) else None


async def _answering(handler: Any, request: web.Request) -> web.StreamResponse:
    """Run ``handler``, turning bad input into 400/413 and a full service into 429."""
    try:
        response: web.Response = await handler()
        return response
    except _BadRequest as error:
        return await _refused(request, error, _error(error.status, str(error)))
    except Busy as error:
        response = _error(429, str(error), retry_after_s=round(error.retry_after_s, 3))
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        return await _refused(request, error, response)
    except ValueError as error:
        message = str(error)
        status = 413 if "code:" in message and "above the maximum" in message else 400
        return _error(status, message)


async def _refused(request: web.Request, error: Exception, response: web.Response) -> web.StreamResponse:
    """``response``; where the body was refused unread, sent at once and the connection closed after it
    (aiohttp would otherwise keep reading and discarding the body for up to 10 s)."""
    if not getattr(error, "unread", False):
        return response
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _parse(data: bytes | bytearray) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError as error:
        raise _BadRequest(f"body: not JSON ({error}); send a JSON object") from None
    except RecursionError:
        raise _BadRequest("body: JSON nested too deeply; send a flatter JSON object") from None
    if not isinstance(body, dict):
        raise _BadRequest(f"body: must be a JSON object, got {type(body).__name__}")
    return body


def _field(body: dict[str, Any], name: str, prefix: str = "") -> Any:
    if name not in body:
        raise _BadRequest(f"{prefix}{name}: missing; it is required")
    value = body[name]
    if not isinstance(value, str):
        raise _BadRequest(f"{prefix}{name}: must be a string, got {type(value).__name__}")
    if name == "code" and len(value.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise _BadRequest(f"{prefix}code: above the maximum of {MAX_CODE_BYTES} bytes; send less code", 413)
    return value


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name)
    if not isinstance(value, list) or not value:
        raise _BadRequest(f"{name}: must be a non-empty list")
    if len(value) > MAX_BATCH:
        raise _BadRequest(f"{name}: {len(value)} items is above the maximum of {MAX_BATCH}; split the batch")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, True)
    if not isinstance(value, bool):
        raise _BadRequest(f"{name}: must be true or false, got {value!r}")
    return value

"""The tool service over HTTP (aiohttp): what ``orch tools serve`` listens with.

    POST /v1/exec          {"code": str, "limits": {...}?, "wait": bool = true}
                           200 {"id", "result"}; "wait": false → 202 {"id"}, answer at /v1/results/{id}
    POST /v1/exec/batch    {"requests": [{"code", "limits"?}, ...], "wait": bool = true}
                           200 {"ids", "results"} in request order; admitted all or none
    GET  /v1/results/{id}  200 {"id", "status": "done", "result"} | 202 {"status": "running"} | 404
    POST /v1/verify        {"response": str, "reference": str}
                           200 {"result": {"correct", "extracted", "reason"}}
    POST /v1/verify/batch  {"pairs": [{"response", "reference"}, ...]} → 200 {"results": [...]}
    GET  /metrics, /healthz   both say the sandbox's isolation ("namespaces" | "weak"; null: not a local pool)

A bad request gets 400 (413 for code over the size limit) with {"error": "<field>: <what is wrong>"}; a full
service gets 429 with a ``Retry-After`` header and {"error", "retry_after_s"}.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import asdict
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.tools.admission import Busy, ToolService
from orchestrator.tools.api import MAX_CODE_BYTES
from orchestrator.tools.grading import check_answers

__all__ = ["MAX_BODY_BYTES", "make_app"]

MAX_BODY_BYTES = 64 * 2**20  # a batch of many snippets; larger bodies get 413 from aiohttp
MAX_BATCH = 4096


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def make_app(service: ToolService) -> web.Application:
    """An aiohttp application serving ``service`` (started and closed by the caller)."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    handlers = _Handlers(service)
    app.router.add_post("/v1/exec", handlers.exec_one)
    app.router.add_post("/v1/exec/batch", handlers.exec_batch)
    app.router.add_get("/v1/results/{id}", handlers.result)
    app.router.add_post("/v1/verify", handlers.verify_one)
    app.router.add_post("/v1/verify/batch", handlers.verify_batch)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)
    return app


class _Handlers:
    def __init__(self, service: ToolService) -> None:
        self.service = service

    async def exec_one(self, request: web.Request) -> web.Response:
        async def run() -> web.Response:
            body = await _object(request)
            pair = (_field(body, "code"), body.get("limits"))
            if not _flag(body, "wait"):
                return web.json_response({"id": self.service.accept(*pair)}, status=202)
            [(call_id, answer)] = self.service.submit_batch([pair])
            result = await asyncio.shield(answer)
            return web.json_response({"id": call_id, "result": result.to_json()})

        return await _answering(run)

    async def exec_batch(self, request: web.Request) -> web.Response:
        async def run() -> web.Response:
            body = await _object(request)
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

        return await _answering(run)

    async def result(self, request: web.Request) -> web.Response:
        call_id = request.match_info["id"]
        try:
            result = self.service.result(call_id)
        except KeyError:
            return _error(404, f"id: no request {call_id!r} (never accepted, or its answer expired)")
        if result is None:
            return web.json_response({"id": call_id, "status": "running"}, status=202)
        return web.json_response({"id": call_id, "status": "done", "result": result.to_json()})

    async def verify_one(self, request: web.Request) -> web.Response:
        async def run() -> web.Response:
            body = await _object(request)
            pair = (_field(body, "response"), _field(body, "reference"))
            return web.json_response({"result": self._verify([pair])[0]})

        return await _answering(run)

    async def verify_batch(self, request: web.Request) -> web.Response:
        async def run() -> web.Response:
            body = await _object(request)
            pairs = []
            for index, item in enumerate(_list(body, "pairs")):
                if not isinstance(item, dict):
                    raise _BadRequest(f"pairs[{index}]: must be an object with response and reference")
                prefix = f"pairs[{index}]."
                pairs.append((_field(item, "response", prefix), _field(item, "reference", prefix)))
            return web.json_response({"results": self._verify(pairs)})

        return await _answering(run)

    def _verify(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        started = asyncio.get_running_loop().time()
        checks = check_answers(pairs)
        self.service.count_verified([check.correct for check in checks], started)
        return [asdict(check) for check in checks]

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.service.registry)
        isolation = _isolation(self.service)
        if isolation is not None:
            body += (
                "# HELP orch_tools_isolation The sandbox's isolation level in effect (1 for the level).\n"
                f'# TYPE orch_tools_isolation gauge\norch_tools_isolation{{level="{isolation}"}} 1.0\n'
            ).encode()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True, **asdict(self.service.stats()), "isolation": _isolation(self.service)}
        )


def _isolation(service: ToolService) -> str | None:
    """The isolation level of a local sandbox pool behind ``service`` (None for other executors)."""
    stats = getattr(service.executor, "stats", None)
    level = getattr(stats, "isolation", None)
    return level if isinstance(level, str) else None


async def _answering(handler: Any) -> web.Response:
    """Run ``handler``, turning bad input into 400/413 and a full service into 429."""
    try:
        response: web.Response = await handler()
        return response
    except _BadRequest as error:
        return _error(error.status, str(error))
    except Busy as error:
        response = _error(429, str(error), retry_after_s=round(error.retry_after_s, 3))
        response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        return response
    except ValueError as error:
        message = str(error)
        status = 413 if "code:" in message and "above the maximum" in message else 400
        return _error(status, message)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
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

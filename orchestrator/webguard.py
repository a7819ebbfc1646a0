"""``orchestrator.httpguard`` as an aiohttp middleware, for the tool service and the router."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from orchestrator.httpguard import GuardConfig, authenticated, check_request

__all__ = ["guard_middleware"]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard_middleware(config: GuardConfig) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    """Refuses what ``check_request`` refuses (JSON ``{"error"}``); an open path asked without the token
    answers only ``{"ok": bool}`` with the handler's status, so probes reveal nothing else."""

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        refusal = check_request(request.path, request.headers, config)
        if refusal is not None:
            return web.json_response(
                {"error": refusal.reason}, status=refusal.status, headers=refusal.headers
            )
        if config.token is not None and not authenticated(request.headers, config):
            response = await handler(request)  # an open path: say only whether it is healthy
            return web.json_response({"ok": response.status < 400}, status=response.status)
        return await handler(request)

    return guard

"""``orch tools serve``: a sandbox executor behind bounded admission, served over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from aiohttp import web

from orchestrator.errors import PortUnavailable
from orchestrator.httpguard import GuardConfig, guard_config
from orchestrator.tools.admission import ToolService
from orchestrator.tools.api import SERVICE_MAX_LIMITS, CodeExecutor, Limits
from orchestrator.tools.executors import ray_pool_class
from orchestrator.tools.http_api import TOKEN_ENV, BodyLimits, make_app

__all__ = ["serve_tools"]


async def serve_tools(
    *,
    host: str,
    port: int,
    workers: int,
    ray_address: str | None = None,
    max_pending: int = 65_536,
    max_limits: Limits = SERVICE_MAX_LIMITS,
    keep_results_s: float = 300.0,
    body_limits: BodyLimits | None = None,
    allow_weak_isolation: bool = False,
    ready: Callable[[str, ToolService], None] | None = None,
    stop: asyncio.Event | None = None,
    guard: GuardConfig | None = None,
) -> None:
    """Serve the HTTP API until ``stop`` is set (or SIGTERM); ``ready`` gets the URL once it listens.

    ``guard``: who may call (default: no token, so ``host`` must be loopback; ``InsecureEndpoint`` else)."""
    guard = guard or guard_config(host, None, env_name=TOKEN_ENV)
    executor: CodeExecutor
    if ray_address:
        executor = ray_pool_class("--ray")(ray_address, allow_weak_isolation=allow_weak_isolation)
    else:
        from orchestrator.tools.sandbox import SandboxPool

        executor = SandboxPool(workers, allow_weak_isolation=allow_weak_isolation)
    async with executor:  # type: ignore[attr-defined]
        concurrency = max(workers, int(getattr(executor, "capacity", workers)))
        service = ToolService(
            executor,
            concurrency=concurrency,
            max_pending=max_pending,
            max_limits=max_limits,
            # An operator who lowers a maximum lowers the default with it (a caller's ask is refused).
            default_limits=getattr(executor, "default_limits", Limits()).capped(max_limits),
            keep_results_s=keep_results_s,
        )
        async with service:
            runner = web.AppRunner(make_app(service, guard, body_limits=body_limits), access_log=None)
            await runner.setup()
            try:
                try:
                    await web.TCPSite(runner, host, port).start()
                except OSError as error:
                    raise PortUnavailable("tool calls", host, port, error) from error
                bound = runner.addresses[0][1] if runner.addresses else port
                if ready is not None:
                    ready(f"http://{host}:{bound}", service)
                await (stop or _stop_on_sigterm()).wait()
            finally:
                await runner.cleanup()


def _stop_on_sigterm() -> asyncio.Event:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop

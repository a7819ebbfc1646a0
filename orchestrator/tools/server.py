"""``orch tools serve``: a sandbox executor behind bounded admission, served over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

from aiohttp import web

from orchestrator.errors import PortUnavailable
from orchestrator.tools.admission import ToolService
from orchestrator.tools.api import CodeExecutor
from orchestrator.tools.executors import ray_pool_class
from orchestrator.tools.http_api import make_app

__all__ = ["serve_tools"]


async def serve_tools(
    *,
    host: str,
    port: int,
    workers: int,
    ray_address: str | None = None,
    max_pending: int = 65_536,
    allow_weak_isolation: bool = False,
    ready: Callable[[str, ToolService], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the HTTP API until ``stop`` is set (or SIGTERM); ``ready`` gets the URL once it listens."""
    executor: CodeExecutor
    if ray_address:
        executor = ray_pool_class("--ray")(ray_address, allow_weak_isolation=allow_weak_isolation)
    else:
        from orchestrator.tools.sandbox import SandboxPool

        executor = SandboxPool(workers, allow_weak_isolation=allow_weak_isolation)
    async with executor:  # type: ignore[attr-defined]
        concurrency = max(workers, int(getattr(executor, "capacity", workers)))
        async with ToolService(executor, concurrency=concurrency, max_pending=max_pending) as service:
            runner = web.AppRunner(make_app(service), access_log=None)
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

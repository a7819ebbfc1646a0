"""Where tool calls run: ``orch tools serve``, and the executor a run's ``tools`` section asks for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from orchestrator.errors import OrchError, PortUnavailable
from orchestrator.spec import ToolsSpec
from orchestrator.tools.api import CodeExecutor, Limits
from orchestrator.tools.client import ToolClient
from orchestrator.tools.http_api import make_app
from orchestrator.tools.service import ToolService

if TYPE_CHECKING:
    from orchestrator.tools.ray_pool import RayPool

__all__ = ["RAY_EXTRA", "limits_of", "open_executor", "ray_pool_class", "serve_tools"]

RAY_EXTRA = "pip install 'orch[ray]'"  # Ray is an optional extra: only sandbox pools on Ray need it


def ray_pool_class(needed_by: str) -> type[RayPool]:
    """``RayPool``, or one clear error naming the extra when Ray is not installed."""
    try:
        from orchestrator.tools.ray_pool import RayPool
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "ray":
            raise
        raise OrchError(f"{needed_by} needs Ray, which is not installed: {RAY_EXTRA}") from error
    return RayPool


def limits_of(tools: ToolsSpec) -> Limits:
    """The per-call limits a run spec's ``tools`` section sets."""
    return Limits(
        wall_seconds=tools.call_timeout_s,
        cpu_seconds=tools.cpu_seconds,
        memory_bytes=tools.memory_mb * 2**20,
        output_bytes=tools.output_bytes,
        disk_bytes=tools.disk_mb * 2**20,
    )


@contextlib.asynccontextmanager
async def open_executor(tools: ToolsSpec, *, workers: int | None = None) -> AsyncIterator[CodeExecutor]:
    """The executor ``tools.service`` names, started: an in-process sandbox pool (``embedded``), a client
    of ``orch tools serve`` (``http://…``), or sandbox pools on Ray (``ray:ADDRESS``)."""
    limits = limits_of(tools)
    if tools.service.startswith(("http://", "https://")):
        async with aiohttp.ClientSession() as session:
            yield ToolClient(tools.service, session)
        return
    if tools.service.startswith("ray:"):
        pool_class = ray_pool_class(f"tools.service {tools.service!r}")
        async with pool_class(tools.service.removeprefix("ray:"), default_limits=limits) as pool:
            yield pool
        return
    from orchestrator.tools.sandbox import SandboxPool

    async with SandboxPool(workers or os.cpu_count() or 1, default_limits=limits) as pool:
        yield pool


async def serve_tools(
    *,
    host: str,
    port: int,
    workers: int,
    ray_address: str | None = None,
    max_pending: int = 65_536,
    ready: Callable[[str, ToolService], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the HTTP API until ``stop`` is set (or SIGTERM); ``ready`` gets the URL once it listens."""
    executor: CodeExecutor
    if ray_address:
        executor = ray_pool_class("--ray")(ray_address)
    else:
        from orchestrator.tools.sandbox import SandboxPool

        executor = SandboxPool(workers)
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

"""The executor a run's ``tools`` section asks for: an in-process sandbox pool, a tool server, or Ray."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp

from orchestrator.errors import OrchError
from orchestrator.httpguard import client_token
from orchestrator.spec import ToolsSpec
from orchestrator.tools.api import CodeExecutor, Limits
from orchestrator.tools.client import TOKEN_ENV, ToolClient

if TYPE_CHECKING:
    from orchestrator.tools.ray_pool import RayPool

__all__ = ["RAY_EXTRA", "limits_of", "open_executor", "ray_pool_class"]

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
    of ``orch tools serve`` (``http://…``), or sandbox pools on Ray (``ray:ADDRESS``).

    A tool service's client sends the token from ``$ORCH_TOOLS_TOKEN`` (or the file ``$ORCH_TOOLS_TOKEN_FILE``
    names) and checks it once here: a refused token is one ``Unauthorized`` before any rollout starts."""
    limits = limits_of(tools)
    if tools.service.startswith(("http://", "https://")):
        token = client_token(TOKEN_ENV)
        async with aiohttp.ClientSession() as session:
            client = ToolClient(tools.service, session, token=token)
            await client.check_token()
            yield client
        return
    if tools.service.startswith("ray:"):
        pool_class = ray_pool_class(f"tools.service {tools.service!r}")
        address = tools.service.removeprefix("ray:")
        weak = tools.allow_weak_isolation
        async with pool_class(address, default_limits=limits, allow_weak_isolation=weak) as pool:
            yield pool
        return
    from orchestrator.tools.sandbox import SandboxPool

    count = workers or os.cpu_count() or 1
    async with SandboxPool(
        count, default_limits=limits, allow_weak_isolation=tools.allow_weak_isolation
    ) as pool:
        yield pool

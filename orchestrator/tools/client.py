"""A client of ``orch tools serve`` that is a ``CodeExecutor``: the balancer uses it like a local pool.

It sends ``Authorization: Bearer TOKEN`` when given a token (``open_executor``: ``$ORCH_TOOLS_TOKEN`` or the
file ``$ORCH_TOOLS_TOKEN_FILE`` names); a 401 is ``httpguard.Unauthorized`` naming that variable, at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import aiohttp

from orchestrator.httpguard import bearer, unauthorized
from orchestrator.tools.api import ExecResult, Limits

__all__ = ["TOKEN_ENV", "ToolClient", "ToolServiceError"]

TOKEN_ENV = "ORCH_TOOLS_TOKEN"  # the service's (``http_api.TOKEN_ENV``); a client reads it or ``..._FILE``


class ToolServiceError(Exception):
    """The service refused a request (4xx other than busy) or could not be reached in time."""


class ToolClient:
    """Sends code to a tool service over HTTP; waits and retries while it answers busy (429)."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        *,
        busy_deadline_s: float = 300.0,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.busy_deadline_s = busy_deadline_s
        self.busy_retries = 0
        self.token = token
        self._headers = bearer(token)

    async def check_token(self) -> None:
        """``Unauthorized`` when the service refuses this client's token (or its lack of one); an
        unreachable service passes: the calls themselves report it."""
        try:
            async with self.session.get(self.base_url + "/metrics", headers=self._headers) as response:
                if response.status == 401:
                    raise unauthorized(self.base_url, TOKEN_ENV, self.token)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        body: dict[str, Any] = {"code": code}
        if limits is not None:
            body["limits"] = asdict(limits)
        answer = await self._post("/v1/exec", body)
        return ExecResult.from_json(answer["result"])

    async def execute_batch(self, codes: Sequence[str], limits: Limits | None = None) -> list[ExecResult]:
        requests = [{"code": code, **({"limits": asdict(limits)} if limits else {})} for code in codes]
        answer = await self._post("/v1/exec/batch", {"requests": requests})
        return [ExecResult.from_json(result) for result in answer["results"]]

    async def verify(self, pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Reward checks: one {"correct", "extracted", "reason"} per (response, reference)."""
        body = {"pairs": [{"response": response, "reference": reference} for response, reference in pairs]}
        answer = await self._post("/v1/verify/batch", body)
        return list(answer["results"])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.busy_deadline_s
        while True:
            try:
                post = self.session.post(self.base_url + path, json=body, headers=self._headers)
                async with post as response:
                    if response.status == 401:
                        raise unauthorized(self.base_url + path, TOKEN_ENV, self.token)
                    answer = await response.json(content_type=None)
                    if response.status == 429 and time.monotonic() < deadline:
                        self.busy_retries += 1
                        wait = float(answer.get("retry_after_s") or response.headers.get("Retry-After") or 1)
                        await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                        continue
                    if response.status != 200:
                        error = answer.get("error")
                        raise ToolServiceError(f"{path} answered HTTP {response.status}: {error}")
                    return dict(answer)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                raise ToolServiceError(f"{self.base_url}{path}: {type(error).__name__}: {error}") from error

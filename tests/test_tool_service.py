"""The tool service: admission, back-pressure, one answer per request, and its HTTP API.

The admission and exactly-once logic is driven here by a gated executor (so a test decides when calls
finish); tests/test_tool_service_e2e.py runs the same service over the real sandbox.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.tools.admission import Busy, ToolService
from orchestrator.tools.api import MAX_CODE_BYTES, ExecResult, Limits
from orchestrator.tools.client import ToolClient, ToolServiceError
from orchestrator.tools.http_api import BodyLimits, make_app
from tests.conftest import run_async as run


class GatedExecutor:
    """Answers ``ok`` with the code as stdout once ``gate`` opens; code "boom" makes it raise."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[str] = []

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        self.started.append(code)
        await self.gate.wait()
        if code == "boom":
            raise RuntimeError("worker vanished")
        return ExecResult("ok", code, "", 0, 0.001, 0.001)


def test_admission_is_bounded_and_a_full_service_says_busy_with_a_retry_after() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        async with ToolService(executor, concurrency=2, max_pending=5) as service:
            ids = [service.accept(f"print({i})") for i in range(5)]
            with pytest.raises(Busy) as busy:
                service.accept("one too many")
            assert busy.value.pending == 5 and busy.value.retry_after_s > 0
            await asyncio.sleep(0.01)
            assert len(executor.started) == 2  # concurrency 2: the rest wait in the queue
            assert service.stats().queued == 3
            executor.gate.set()
            results = [await service.wait(call_id) for call_id in ids]
            assert [r.stdout for r in results] == [f"print({i})" for i in range(5)]
            assert service.stats().pending == 0 and service.stats().rejected == 1
            assert (await service.execute("again")).verdict == "ok"  # room again

    run(body)


def test_requests_without_limits_run_under_the_executors_defaults_unless_the_service_has_its_own() -> None:
    class Recording(GatedExecutor):
        default_limits = Limits(wall_seconds=3, cpu_seconds=2)

        def __init__(self) -> None:
            super().__init__()
            self.gate.set()
            self.limits: list[Limits | None] = []

        async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
            self.limits.append(limits)
            return await super().execute(code, limits)

    async def body() -> None:
        executor = Recording()
        async with ToolService(executor, concurrency=1) as service:
            await service.execute("a")
            await service.execute("b", {"cpu_seconds": 1})
        own = Limits(wall_seconds=1)
        async with ToolService(executor, concurrency=1, default_limits=own) as service:
            await service.execute("c")
        assert executor.limits == [Recording.default_limits, Limits(wall_seconds=3, cpu_seconds=1), own]

    run(body)


def test_every_accepted_request_gets_exactly_one_answer_even_when_the_executor_fails() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        async with ToolService(executor, concurrency=3) as service:
            codes = ["a", "boom", "b", "boom", "c"]
            ids = [service.accept(code) for code in codes]
            executor.gate.set()
            results = await asyncio.gather(*(service.wait(call_id) for call_id in ids))
            assert [r.verdict for r in results] == ["ok", "killed", "ok", "killed", "ok"]
            assert "executor failed: RuntimeError: worker vanished" in results[1].stderr
            assert results[1].exit_status is None
            for call_id in ids:  # each answer is given once: a second fetch finds nothing
                with pytest.raises(KeyError):
                    service.result(call_id)
            assert service.stats().answered == 5 and service.stats().unfetched == 0

    run(body)


def test_closing_answers_everything_still_pending() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        service = ToolService(executor, concurrency=1)
        await service.start()
        ids = [service.accept(f"x{i}") for i in range(3)]
        waits = [asyncio.ensure_future(service.wait(call_id)) for call_id in ids]
        await asyncio.sleep(0.01)
        await service.close()
        results = await asyncio.gather(*waits)
        assert {r.verdict for r in results} == {"killed"}
        assert "shut down" in results[0].stderr
        assert service.stats().pending == 0

    run(body)


def test_a_batch_is_admitted_whole_or_not_at_all() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        async with ToolService(executor, concurrency=1, max_pending=3) as service:
            with pytest.raises(Busy):
                service.accept_batch([("a", None)] * 4)
            assert service.stats().pending == 0
            with pytest.raises(ValueError, match=r"requests\[1\]\.limits\.cpu_seconds"):
                service.accept_batch([("a", None), ("b", {"cpu_seconds": 0})])
            assert service.stats().pending == 0
            executor.gate.set()
            results = await service.execute_batch([("a", None), ("b", {"cpu_seconds": 1})])
            assert [r.stdout for r in results] == ["a", "b"]

    run(body)


@pytest.mark.parametrize(
    ("code", "limits", "message"),
    [
        (3, None, "code: must be a string"),
        ("x" * (MAX_CODE_BYTES + 1), None, "code: 262145 bytes is above the maximum"),
        ("x", {"cpu_seconds": -1}, "limits.cpu_seconds: must be > 0"),
        ("x", {"wall": 3}, "limits.wall: unknown limit"),
        ("x", {"wall_seconds": 10_000}, "limits.wall_seconds: 10000 is above the service's maximum"),
        ("x", {"memory_bytes": "lots"}, "limits.memory_bytes: must be a number"),
        ("x", [1], "limits: must be an object"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(code: Any, limits: Any, message: str) -> None:
    async def body() -> None:
        async with ToolService(GatedExecutor(), concurrency=1) as service:
            with pytest.raises(ValueError, match=message.replace(".", r"\.")):
                service.accept(code, limits)
            assert service.stats().pending == 0

    run(body)


def test_kept_answers_expire_and_unknown_ids_are_key_errors() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        async with ToolService(executor, concurrency=1, keep_results_s=0.05) as service:
            call_id = service.accept("a")
            assert service.result(call_id) is None  # running
            executor.gate.set()
            await asyncio.sleep(0.01)
            assert service.stats().unfetched == 1
            await asyncio.sleep(0.1)
            with pytest.raises(KeyError):
                service.result(call_id)
            with pytest.raises(KeyError):
                service.result("t999")

    run(body)


# ---- HTTP -------------------------------------------------------------------------------------------


@asynccontextmanager
async def served(service: ToolService, body_limits: BodyLimits | None = None) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(service, body_limits=body_limits), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("path", "data", "status", "message"),
    [
        ("/v1/exec", b"not json", 400, "body: not JSON"),
        ("/v1/exec", b"[1, 2]", 400, "body: must be a JSON object"),
        ("/v1/exec", b'{"limits": {}}', 400, "code: missing"),
        ("/v1/exec", b'{"code": 5}', 400, "code: must be a string"),
        ("/v1/exec", b'{"code": "' + b"x" * (MAX_CODE_BYTES + 1) + b'"}', 413, "code: above the maximum"),
        ("/v1/exec", b'{"code": "1", "limits": {"cpu_seconds": 0}}', 400, "limits.cpu_seconds: must be > 0"),
        ("/v1/exec", b'{"code": "1", "wait": "yes"}', 400, "wait: must be true or false"),
        ("/v1/exec/batch", b'{"requests": []}', 400, "requests: must be a non-empty list"),
        ("/v1/exec/batch", b'{"requests": [{"code": "1"}, {}]}', 400, "requests[1].code: missing"),
        ("/v1/verify", b'{"response": "1"}', 400, "reference: missing"),
        ("/v1/verify/batch", b'{"pairs": [7]}', 400, "pairs[0]: must be an object"),
    ],
)
def test_malformed_http_requests_get_a_4xx_naming_the_field(
    path: str, data: bytes, status: int, message: str
) -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        async with ToolService(executor, concurrency=1) as service, served(service) as url:
            async with aiohttp.ClientSession() as http, http.post(url + path, data=data) as response:
                assert response.status == status
                assert message in (await response.json())["error"]
            assert service.stats().pending == 0 and executor.started == []

    run(body)


def test_http_exec_async_results_busy_and_metrics() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        service = ToolService(executor, concurrency=1, max_pending=2)
        async with service, served(service) as url, aiohttp.ClientSession() as http:
            async with http.post(url + "/v1/exec", json={"code": "a", "wait": False}) as response:
                assert response.status == 202
                call_id = (await response.json())["id"]
            async with http.get(f"{url}/v1/results/{call_id}") as response:
                assert response.status == 202 and (await response.json())["status"] == "running"
            two = {"requests": [{"code": "b"}] * 2}
            async with http.post(url + "/v1/exec/batch", json=two) as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["retry_after_s"] > 0
            executor.gate.set()
            await asyncio.sleep(0.01)
            async with http.get(f"{url}/v1/results/{call_id}") as response:
                answer = await response.json()
                assert response.status == 200 and answer["status"] == "done"
                assert answer["result"]["verdict"] == "ok" and answer["result"]["stdout"] == "a"
            async with http.get(url + "/v1/results/nope") as response:
                assert response.status == 404 and "id: no request" in (await response.json())["error"]
            async with http.get(url + "/metrics") as response:
                families = {f.name: f for f in text_string_to_metric_families(await response.text())}
            done = families["orch_tools_completed"].samples
            assert any(s.labels == {"kind": "exec", "verdict": "ok"} and s.value == 1 for s in done)
            assert families["orch_tools_rejected"].samples[0].value == 2
            assert "orch_tools_latency_seconds" in families and "orch_tools_in_flight" in families

    run(body)


def test_the_client_waits_out_busy_answers_and_every_call_is_answered_once() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        service = ToolService(executor, concurrency=2, max_pending=4)
        async with service, served(service) as url, aiohttp.ClientSession() as http:
            client = ToolClient(url, http)
            results = await asyncio.gather(*(client.execute(f"c{i}") for i in range(40)))
            assert sorted(r.stdout for r in results) == sorted(f"c{i}" for i in range(40))
            assert client.busy_retries > 0 and service.stats().answered == 40
            batch = await client.execute_batch(["x", "y"], Limits(cpu_seconds=1))
            assert [r.stdout for r in batch] == ["x", "y"]
            with pytest.raises(ToolServiceError, match=r"limits\.wall_seconds"):
                await client.execute("z", Limits(wall_seconds=1000))

    run(body)

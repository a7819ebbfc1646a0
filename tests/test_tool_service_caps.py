"""The tool service bounds what an unauthenticated caller can make it spend (issue 15, point 5).

Each test is one probe finding: limits above the service's maxima, guessable result ids, unfetched answers
that never expire, many big bodies read at once, and a big reward check that stalled every other request.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import aiohttp
import pytest
from click.testing import CliRunner

from orchestrator.tools.admission import Busy, ToolService
from orchestrator.tools.api import SERVICE_MAX_LIMITS, Limits
from orchestrator.tools.http_api import BodyLimits
from tests.conftest import run_async as run
from tests.test_tool_service import GatedExecutor, served

GiB = 2**30


def test_limits_above_the_services_maxima_are_refused_naming_the_field_and_the_cap() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        service = ToolService(executor, concurrency=1)
        async with service, served(service) as url, aiohttp.ClientSession() as http:
            probe = {"code": "1", "limits": {"processes": 64, "memory_bytes": 8 * GiB}}  # the probe's ask
            async with http.post(url + "/v1/exec", json=probe) as response:
                error = (await response.json())["error"]
                assert response.status == 400
                assert f"limits.memory_bytes: {8 * GiB} is above the service's maximum {2 * GiB}" in error
                assert "\n" not in error and "--max-limit" in error
            async with http.post(
                url + "/v1/exec", json={"code": "1", "limits": {"processes": 9}}
            ) as response:
                assert response.status == 400
                assert (
                    "limits.processes: 9 is above the service's maximum 8" in (await response.json())["error"]
                )
            at_cap = {"code": "2", "limits": {"processes": 8, "memory_bytes": 2 * GiB}}
            async with http.post(url + "/v1/exec", json=at_cap) as response:
                assert response.status == 200
            assert executor.started == ["2"]  # nothing above a cap reached the executor

    run(body)


def test_the_operator_sets_the_maxima_with_max_limit() -> None:
    from orchestrator.commands.servers import _max_limits, tools_serve

    def parse(*items: str) -> object:
        return _max_limits(None, None, items)  # type: ignore[arg-type]

    assert parse() == SERVICE_MAX_LIMITS
    assert parse("processes=2", "wall_seconds=5.5") == SERVICE_MAX_LIMITS.merged(
        {"processes": 2, "wall_seconds": 5.5}
    )
    for bad, message in [
        ("processes", "use NAME=VALUE"),
        ("threads=3", "use NAME=VALUE"),
        ("processes=2.5", "processes must be a int"),
        ("processes=0", "limits.processes: must be > 0"),
        ("processes=65", "limits.processes: 65 is above the service's maximum 64"),  # the sandbox's ceiling
    ]:
        result = CliRunner().invoke(tools_serve, ["--port", "0", "--max-limit", bad])
        assert result.exit_code == 2 and message in result.output, (bad, result.output)

    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        low = SERVICE_MAX_LIMITS.merged({"processes": 8, "memory_bytes": 512 * 2**20})
        async with ToolService(executor, concurrency=1, max_limits=low) as service:
            with pytest.raises(ValueError, match=r"limits\.memory_bytes: 536870913 is above .* 536870912"):
                service.accept("x", {"memory_bytes": 512 * 2**20 + 1})
        with pytest.raises(ValueError, match=r"limits\.processes"):  # the executor's defaults exceed it
            ToolService(executor, concurrency=1, max_limits=low.merged({"processes": 2}))

    run(body)


def test_result_ids_are_unguessable_and_an_answer_is_given_once() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        service = ToolService(executor, concurrency=1)
        async with service, served(service) as url, aiohttp.ClientSession() as http:
            ids = []
            for code in ("secret = 1", "secret = 2"):
                async with http.post(url + "/v1/exec", json={"code": code, "wait": False}) as response:
                    ids.append((await response.json())["id"])
            await asyncio.sleep(0.02)
            assert ids[0] != ids[1] and all(len(call_id) >= 22 for call_id in ids)  # 128 bits, url-safe
            # A second caller guesses: sequential ids (what the service used to hand out), small numbers,
            # the first id with one character changed: none of them reads an answer.
            flipped = ids[0][:-1] + ("A" if ids[0][-1] != "A" else "B")
            for guess in ["t1", "t2", "t3", "1", "2", "0", flipped]:
                async with http.get(f"{url}/v1/results/{guess}") as response:
                    assert response.status == 404, guess
            async with http.get(f"{url}/v1/results/{ids[1]}") as response:
                assert response.status == 200 and (await response.json())["result"]["stdout"] == "secret = 2"
            async with http.get(f"{url}/v1/results/{ids[1]}") as response:
                assert response.status == 404  # taken: a later reader of a leaked id gets nothing

    run(body)


def test_unfetched_answers_count_toward_max_pending_and_expire_after_their_ttl() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        service = ToolService(executor, concurrency=1, max_pending=2, keep_results_s=0.5)
        async with service, served(service) as url, aiohttp.ClientSession() as http:

            async def submit(code: str) -> aiohttp.ClientResponse:
                async with http.post(url + "/v1/exec", json={"code": code, "wait": False}) as response:
                    await response.read()
                    return response

            first, _ = await submit("a"), await submit("b")
            await asyncio.sleep(0.02)
            assert service.stats().pending == 0 and service.stats().unfetched == 2
            full = await submit("c")  # both answered, neither fetched: still full
            assert full.status == 429 and 1 <= int(full.headers["Retry-After"]) <= 1
            first_id = (await first.json())["id"]
            async with http.get(f"{url}/v1/results/{first_id}") as response:
                assert response.status == 200
            assert (await submit("d")).status == 202  # fetching made room
            assert (await submit("e")).status == 429
            await asyncio.sleep(0.6)  # the TTL: unfetched answers are dropped, their room given back
            assert (await submit("f")).status == 202
            assert service.stats().unfetched == 1

        # Kept answers are also charged at their output limit against the byte budget.
        async with ToolService(executor, concurrency=1, max_pending_bytes=2**20) as small:
            small.accept("x", {"output_bytes": 600 * 1024})
            with pytest.raises(Busy):
                small.accept("y", {"output_bytes": 600 * 1024})
            assert (
                await small.execute("z", {"output_bytes": 600 * 1024})
            ).verdict == "ok"  # waited: no charge

    run(body)


def test_request_bodies_are_capped_per_request_and_in_flight_across_requests() -> None:
    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        limits = BodyLimits(max_body_bytes=2**20, max_verify_bytes=2**20, in_flight_bytes=2**20 + 2**19)
        service = ToolService(executor, concurrency=1)
        async with service, served(service, limits) as url, aiohttp.ClientSession() as http:
            big = json.dumps({"code": "#" * 2**20}).encode()
            async with http.post(url + "/v1/exec", data=io.BytesIO(big)) as response:
                assert response.status == 413 and "body: " in (await response.json())["error"]

            # A slow client announces a MiB and sends a little: its MiB is reserved while it trickles.
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            prefix = b'{"code": "' + b"#" * 1000
            headers = f"POST /v1/exec HTTP/1.1\r\nHost: {host}\r\nContent-Length: {2**20}\r\n\r\n"
            writer.write(headers.encode() + prefix)
            await writer.drain()
            while (await _health(http, url))["body_bytes_in_flight"] < 2**20:
                await asyncio.sleep(0.01)
            second = json.dumps({"code": "#" * (2**20 - 100)}).encode()
            async with http.post(url + "/v1/exec", data=io.BytesIO(second)) as response:
                assert response.status == 429 and response.headers["Retry-After"] == "1"
                assert "bytes of request bodies" in (await response.json())["error"]
            async with http.post(url + "/v1/exec", json={"code": "small"}) as response:
                assert response.status == 200  # what still fits the budget is served
            writer.write(b"#" * (2**20 - len(prefix) - 2) + b'"}')  # the slow one finishes
            await writer.drain()
            assert b" 413 " in await reader.readline()  # code above 256 KiB: read whole, then refused
            writer.close()
            assert (await _health(http, url))["body_bytes_in_flight"] == 0
            async with http.post(url + "/v1/exec", data=io.BytesIO(second)) as response:
                assert response.status == 413  # now read, and refused for its code size, not busy

            async def chunks() -> object:  # no Content-Length: counted while read
                for _ in range(20):
                    yield b" " * 2**16

            async with http.post(url + "/v1/verify", data=chunks()) as response:
                assert (
                    response.status == 413
                    and "above this endpoint's maximum" in (await response.json())["error"]
                )

    run(body)


def _json(**body: str) -> io.BytesIO:
    return io.BytesIO(json.dumps(body).encode())  # a big bytes body makes aiohttp warn


async def _health(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url + "/healthz") as response:
        return dict(await response.json())


def test_a_big_verify_runs_off_the_event_loop_and_an_oversized_one_is_refused() -> None:
    # "nswer" without a marker is the checks' slow path (every occurrence is looked at): ~0.3 s per MB here.
    slow = "xnswer" * (3 * 2**20 // 6)

    async def body() -> None:
        executor = GatedExecutor()
        executor.gate.set()
        service = ToolService(executor, concurrency=1)
        async with service, served(service) as url, aiohttp.ClientSession() as http:
            baseline = []
            for _ in range(5):
                started = time.monotonic()
                await _health(http, url)
                baseline.append(time.monotonic() - started)

            async def big() -> float:
                started = time.monotonic()
                async with http.post(
                    url + "/v1/verify", data=_json(response=slow, reference="1")
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["result"]["reason"] == "no answer"
                return time.monotonic() - started

            verifying = asyncio.ensure_future(big())
            during: list[float] = []  # latencies of small requests answered while the big check ran
            while not verifying.done():
                started = time.monotonic()
                health = await _health(http, url)
                if health["verifying"]:
                    during.append(time.monotonic() - started)
            took = await verifying
            # Inline, the loop answered nothing while the check ran (one request waited all of it).
            assert len(during) >= 3, (took, during)
            assert max(during) < took / 3, (f"baseline {max(baseline):.4f}s", took, max(during))

            over = {"response": "x" * (8 * 2**20), "reference": "1"}
            async with http.post(
                url + "/v1/verify", data=_json(**over), headers={"Connection": "close"}
            ) as response:
                assert response.status == 413
                assert f"above this endpoint's maximum of {8 * 2**20}" in (await response.json())["error"]
            assert (await _health(http, url))["body_bytes_in_flight"] == 0

    run(body)


def test_body_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="in_flight_bytes: 10 is below one largest body"):
        BodyLimits(max_body_bytes=100, max_verify_bytes=10, in_flight_bytes=10)
    with pytest.raises(ValueError, match="verify_threads: must be a whole number"):
        BodyLimits(verify_threads=0)
    assert Limits().processes <= SERVICE_MAX_LIMITS.processes


def test_orch_tools_serve_applies_a_lowered_maximum_to_callers_and_to_its_defaults() -> None:
    from orchestrator.tools.server import serve_tools

    async def body() -> None:
        stop, urls = asyncio.Event(), asyncio.Queue[str](maxsize=1)
        low = SERVICE_MAX_LIMITS.merged({"processes": 2})
        serving = asyncio.ensure_future(
            serve_tools(
                host="127.0.0.1",
                port=0,
                workers=1,
                max_limits=low,
                ready=lambda url, _: urls.put_nowait(url),
                stop=stop,
            )
        )
        try:
            url = await asyncio.wait_for(urls.get(), 60)
            async with aiohttp.ClientSession() as http:
                ask = {"code": "print(1)", "limits": {"processes": 3}}
                async with http.post(url + "/v1/exec", json=ask) as response:
                    assert response.status == 400 and "maximum 2" in (await response.json())["error"]
                async with http.post(url + "/v1/exec", json={"code": "print(1)"}) as response:
                    assert response.status == 200  # the default (8 processes) was lowered to 2, not refused
        finally:
            stop.set()
            await serving

    run(body)
    assert Limits(processes=8, wall_seconds=1).capped(Limits(processes=2)) == Limits(
        processes=2, wall_seconds=1
    )

"""The tool service end to end over the real sandbox: HTTP in front, hostile snippets, workers killed
mid-burst, the run spec's wiring (open_executor) and the balancer's SandboxTools."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from typing import Any

import aiohttp
import pytest

from orchestrator.core.dispatch import EngineState, make_dispatcher
from orchestrator.rollout.balancer import Balancer
from orchestrator.rollout.http_engine import HttpEngine
from orchestrator.rollout.tools import SandboxTools, ToolCall, open_tools
from orchestrator.spec import ToolsSpec
from orchestrator.tools.admission import ToolService
from orchestrator.tools.api import ExecResult, Limits
from orchestrator.tools.client import ToolClient
from orchestrator.tools.executors import limits_of, open_executor
from orchestrator.tools.sandbox import SandboxPool
from tests.conftest import run_async as run
from tests.test_balancer import engines, prompts
from tests.test_sandbox import zygote_pid
from tests.test_tool_service import served

SECRET = "ORCH_E2E_SECRET"

HOSTILE: dict[str, str] = {
    "infinite loop": "while True: pass",
    "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "memory bomb": "blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))",
    "a gigabyte of output": "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024): sys.stdout.write(chunk)",
    "socket to 127.0.0.1": (
        "import socket\ns = socket.socket()\ns.settimeout(1)\n"
        "s.connect(('127.0.0.1', {port}))\nprint('connected')"
    ),
    "write outside the scratch dir": "open('/usr/orch-e2e-escape', 'w').write('x')\nprint('wrote')",
    "kill its own worker": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('alive')",
    "os._exit": "import os\nos._exit(7)",
    "read the service's secrets": (
        "import os\nprint(os.environ.get('{secret}'))\nprint(open('/proc/1/environ', 'rb').read())"
    ),
}
LIMITS = {"wall_seconds": 2.0, "cpu_seconds": 1.0, "memory_bytes": 256 * 2**20}


def test_hostile_snippets_over_http_are_contained_answered_and_the_service_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv(SECRET, secret)

    async def body() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            port = listener.getsockname()[1]
            codes = {name: code.format(port=port, secret=SECRET) for name, code in HOSTILE.items()}
            async with SandboxPool(2) as pool, ToolService(pool, concurrency=2) as service:
                async with served(service) as url, aiohttp.ClientSession() as http:
                    requests = [{"code": code, "limits": LIMITS} for code in codes.values()]
                    async with http.post(url + "/v1/exec/batch", json={"requests": requests}) as response:
                        assert response.status == 200
                        answers = (await response.json())["results"]
                    results = dict(zip(codes, (ExecResult.from_json(a) for a in answers), strict=True))
                    after = await ToolClient(url, http).execute("print(6 * 7)")
                with pytest.raises(BlockingIOError):
                    listener.accept()  # nobody connected
            stats = service.stats()
        verdicts = {name: result.verdict for name, result in results.items()}
        assert verdicts["infinite loop"] == "timeout"
        assert verdicts["memory bomb"] == "memory"
        assert verdicts["a gigabyte of output"] == "output_truncated"
        assert len(results["a gigabyte of output"].stdout) <= 64 * 1024
        assert verdicts["socket to 127.0.0.1"] == "error"
        assert "connected" not in results["socket to 127.0.0.1"].stdout
        assert verdicts["write outside the scratch dir"] == "error"
        assert not os.path.exists("/usr/orch-e2e-escape")
        assert (verdicts["os._exit"], results["os._exit"].exit_status) == ("error", 7)
        assert secret not in results["read the service's secrets"].stdout
        assert verdicts["fork bomb"] in ("timeout", "killed")
        if os.geteuid() == 0:  # another uid, and PID 1 of its namespace: it cannot kill its worker
            assert verdicts["kill its own worker"] in ("ok", "error")
        else:  # it can, and the worker is replaced
            assert verdicts["kill its own worker"] in ("error", "killed")
        assert (after.verdict, after.stdout) == ("ok", "42\n")
        assert stats.answered == len(HOSTILE) + 1 and stats.pending == 0

    run(body)


BURST_CODE = "import time\ntime.sleep({sleep})\nprint({index})"


def test_a_worker_killed_during_a_burst_leaves_every_accepted_request_exactly_one_answer() -> None:
    async def body() -> None:
        async with SandboxPool(2) as pool, ToolService(pool, concurrency=2) as service:
            zygote = zygote_pid(pool)
            calls = 240
            ids = [service.accept(BURST_CODE.format(sleep=0.002 * (i % 3), index=i)) for i in range(calls)]
            while service.stats().answered < 40:
                await asyncio.sleep(0.01)
            os.kill(zygote, signal.SIGKILL)
            results = await asyncio.gather(*(service.wait(call_id) for call_id in ids))
            stats = service.stats()
            assert stats.answered == calls and stats.pending == 0
            assert stats.unfetched == 0  # each answer was given once, to its wait
            killed = [i for i, result in enumerate(results) if result.verdict == "killed"]
            assert len(killed) <= 1  # at most the call that was running on the killed worker
            for index, result in enumerate(results):
                if index not in killed:
                    assert (result.verdict, result.stdout) == ("ok", f"{index}\n")
            assert pool.stats.worker_restarts >= 1 and pool.stats.workers_alive == 2
            assert (await service.execute("print('still here')")).stdout == "still here\n"

    run(body)


def test_open_executor_runs_calls_within_the_specs_limits_embedded_and_over_http() -> None:
    spec = ToolsSpec(call_timeout_s=1.5, cpu_seconds=1, output_bytes=100, disk_mb=1)

    async def check(executor: Any) -> None:
        limits = limits_of(spec)
        assert (await executor.execute("print(6 * 7)", limits)).stdout == "42\n"
        flood = await executor.execute("print('x' * 1000)", limits)
        assert flood.verdict == "output_truncated" and len(flood.stdout) == 100
        loop = await executor.execute("while True: pass", limits)
        assert loop.verdict == "timeout" and loop.wall_seconds < 3
        roomy = limits.merged({"output_bytes": 4096})  # for the traceback
        big = await executor.execute("open('f', 'wb').write(b'x' * 2**21)", roomy)
        assert big.verdict == "error" and "File too large" in big.stderr

    async def body() -> None:
        async with open_executor(spec, workers=1) as embedded:
            assert isinstance(embedded, SandboxPool)
            assert embedded.default_limits == limits_of(spec)
            await check(embedded)
        async with (
            SandboxPool(1) as pool,
            ToolService(pool, concurrency=1) as service,
            served(service) as url,
            open_executor(spec.model_copy(update={"service": url})) as remote,
        ):
            assert isinstance(remote, ToolClient)
            await check(remote)

    run(body)


def test_sandbox_tools_show_the_model_what_its_code_printed() -> None:
    async def body() -> None:
        async with SandboxPool(1) as pool:
            tools = SandboxTools(pool, Limits(wall_seconds=1, cpu_seconds=1), max_output_chars=200)
            ok = await tools.run(ToolCall(1, 0, "print(sum(range(10)))"))
            assert (ok.verdict, ok.output) == ("ok", "45\n")
            failed = await tools.run(ToolCall(1, 1, "1 / 0"))
            assert failed.verdict == "error" and "ZeroDivisionError" in failed.output
            slow = await tools.run(ToolCall(1, 2, "while True: pass"))
            assert slow.verdict == "timeout" and "timed out after 1s" in slow.output
            long = await tools.run(ToolCall(1, 3, "print('y' * 1000)"))
            assert long.output.endswith("[output truncated]") and len(long.output) < 250

    run(body)


class _CountingExecutor:
    """Answers every snippet after a short wait and records the most calls it ever had at once."""

    def __init__(self) -> None:
        self.running = self.most = 0

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.01)
        self.running -= 1
        return ExecResult("ok", "", "", 0, wall_seconds=0.01, cpu_seconds=0.0)


def test_sandbox_tools_keep_at_most_max_concurrent_calls_in_flight() -> None:
    async def body() -> None:
        executor = _CountingExecutor()
        tools = SandboxTools(executor, Limits(), max_concurrent_calls=3)
        results = await asyncio.gather(*(tools.run(ToolCall(i, 0, "pass")) for i in range(20)))
        assert len(results) == 20 and executor.most == 3
        uncapped = _CountingExecutor()
        free = SandboxTools(uncapped, Limits())
        await asyncio.gather(*(free.run(ToolCall(i, 0, "pass")) for i in range(20)))
        assert uncapped.most == 20

    run(body)


def test_a_runs_tools_follow_its_spec_limits_and_concurrency_cap() -> None:
    spec = ToolsSpec(max_concurrent_calls=2, call_timeout_s=1.5, output_bytes=100)

    async def body() -> None:
        async with open_tools(spec, workers=1) as tools:
            assert (tools.max_concurrent_calls, tools.limits) == (2, limits_of(spec))
            assert isinstance(tools.executor, SandboxPool)
            assert (await tools.run(ToolCall(1, 0, "print(6 * 7)"))).output == "42\n"

    run(body)


def test_the_balancer_runs_its_tool_calls_in_the_sandbox() -> None:
    async def body() -> None:
        fakes = engines(2)
        urls = [await fake.start() for fake in fakes]
        try:
            async with SandboxPool(2) as pool, aiohttp.ClientSession() as session:
                balancer = Balancer(
                    [HttpEngine(url, session, kv_total_tokens=65536) for url in urls],
                    make_dispatcher("kv_aware", [EngineState(i, 65536) for i in range(2)]),
                    SandboxTools(pool, Limits(wall_seconds=2)),
                    max_response_tokens=1000,
                    max_turns=8,
                )
                trajectories = await balancer.run_step(prompts(6, tools=2))
        finally:
            for fake in fakes:
                await fake.stop()
        for t in trajectories:  # the fake model runs print(0), then print(1): the sandbox's answers
            assert t.verdict == "answer" and t.tool_calls == 2, t
            assert "```output\n0\n\n```" in t.text and "```output\n1\n\n```" in t.text

    run(body)

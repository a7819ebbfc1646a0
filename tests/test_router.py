"""The router end to end: real HTTP on 127.0.0.1 between a client, the router and fake engines."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest

from orchestrator.records import GpuSample
from orchestrator.rollout.engine import EngineLoad, EngineUnavailable
from orchestrator.rollout.engine_gpu import EngineGpu, parse_engine_gpu
from orchestrator.rollout.http_engine import HttpEngine, parse_engine_metrics
from orchestrator.rollout.router import Router, estimate_tokens, serve_router
from orchestrator.telemetry.exporter import GpuCollector
from orchestrator.testing.fake_engine import FakeEngine
from tests.conftest import run_async as run


@dataclass
class Cluster:
    router: Router
    url: str
    fakes: list[FakeEngine]
    client: aiohttp.ClientSession

    async def complete(self, prompt: str, max_tokens: int = 16, **extra: Any) -> tuple[int, dict, str | None]:
        body = {"model": "m", "prompt": prompt, "max_tokens": max_tokens, **extra}
        async with self.client.post(self.url + "/v1/completions", json=body) as response:
            return response.status, await response.json(), response.headers.get("X-Orch-Engine")

    def assert_released(self) -> None:
        dispatcher = self.router.dispatcher
        for engine in range(len(self.fakes)):
            assert dispatcher.reserved_tokens(engine) == 0
            assert dispatcher.outstanding(engine) == 0
        assert dispatcher.queued() == 0


@asynccontextmanager
async def cluster(
    fakes: list[FakeEngine], policy: str, *, kv_total: int = 65536, **router_options: Any
) -> AsyncIterator[Cluster]:
    urls = [await fake.start() for fake in fakes]
    try:
        async with aiohttp.ClientSession() as session, aiohttp.ClientSession() as client:
            engines = [HttpEngine(url, session, kv_total_tokens=kv_total) for url in urls]
            router = Router(engines, policy, kv_total, 16, poll_interval=0.05, **router_options)
            url = await router.start()
            try:
                yield Cluster(router, url, fakes, client)
            finally:
                await router.stop()
    finally:
        for fake in fakes:
            await fake.stop()


def three_engines(slow_latency: float = 0.15) -> list[FakeEngine]:
    return [
        FakeEngine("fast-a", latency=0.01),
        FakeEngine("fast-b", style="sglang", latency=0.01),
        FakeEngine("slow", latency=slow_latency),
    ]


async def closed_loop(c: Cluster, workers: int, each: int) -> list[tuple[str, int, dict, str | None]]:
    """``workers`` clients, each sending ``each`` requests one after another."""

    async def worker(w: int) -> list[tuple[str, int, dict, str | None]]:
        results = []
        for i in range(each):
            prompt = f"worker {w} request {i}"
            results.append((prompt, *await c.complete(prompt)))
        return results

    batches = await asyncio.gather(*(worker(w) for w in range(workers)))
    return [result for batch in batches for result in batch]


def assert_each_answered_once(results: list[tuple[str, int, dict, str | None]]) -> None:
    prompts = [prompt for prompt, *_ in results]
    assert len(set(prompts)) == len(prompts)
    for prompt, status, body, _ in results:
        assert status == 200, body
        assert body["choices"][0]["text"].endswith(f"echo: {prompt}")


# ---- balancing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["least_outstanding", "kv_aware"])
def test_the_slow_engine_gets_fewer_requests_and_every_reservation_is_released(policy: str) -> None:
    async def body() -> None:
        async with cluster(three_engines(), policy) as c:
            results = await closed_loop(c, workers=12, each=8)
            assert_each_answered_once(results)
            served = Counter(engine for *_, engine in results)
            fast_a, fast_b, slow = c.fakes
            assert served["2"] == slow.completed
            assert slow.completed < min(fast_a.completed, fast_b.completed), served
            assert sum(fake.completed for fake in c.fakes) == len(results)
            c.assert_released()

    run(body)


def test_kv_aware_holds_requests_in_the_central_queue_within_each_engines_kv_cache() -> None:
    # Each request reserves 10 prompt + 90 new tokens; a 400-token engine holds 4 of them.
    fakes = [FakeEngine(f"e{i}", latency=0.05, kv_total_tokens=400) for i in range(3)]

    async def body() -> None:
        async with cluster(fakes, "kv_aware", kv_total=400) as c:
            queued: list[int] = []

            async def watch() -> None:
                while True:
                    queued.append(c.router.dispatcher.queued())
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            prompts = [f"request number {i:03d} padded to 40 chars."[:40] for i in range(30)]
            results = await asyncio.gather(*(c.complete(p, max_tokens=90) for p in prompts))
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            assert_each_answered_once([(p, *r) for p, r in zip(prompts, results, strict=True)])
            assert max(queued) > 0
            assert all(fake.peak_running <= 4 for fake in fakes), [f.peak_running for f in fakes]
            c.assert_released()

    run(body)


def test_prefix_affinity_keeps_a_rollouts_turns_on_one_engine() -> None:
    async def body() -> None:
        async with cluster([FakeEngine(f"e{i}", latency=0.005) for i in range(3)], "prefix_affinity") as c:
            engines = set()
            for turn in range(4):
                headers = {"X-Rollout-Id": "7", "X-Rollout-Turn": str(turn)}
                body = {"prompt": f"turn {turn}", "max_tokens": 4}
                async with c.client.post(c.url + "/v1/completions", json=body, headers=headers) as response:
                    assert response.status == 200
                    engines.add(response.headers["X-Orch-Engine"])
            assert len(engines) == 1
            c.assert_released()

    run(body)


def test_chat_completions_are_forwarded() -> None:
    async def body() -> None:
        async with cluster([FakeEngine("chat", style="sglang")], "kv_aware") as c:
            payload = {"messages": [{"role": "user", "content": "hello there"}], "max_completion_tokens": 8}
            async with c.client.post(c.url + "/v1/chat/completions", json=payload) as response:
                assert response.status == 200
                answer = await response.json()
            assert answer["object"] == "chat.completion"
            assert answer["choices"][0]["message"]["content"] == "chat echo: hello there"
            c.assert_released()

    run(body)


# ---- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["close", "500"])
def test_an_engine_dying_mid_request_has_its_requests_retried_elsewhere(mode: str) -> None:
    fakes = [FakeEngine(f"e{i}", latency=0.08) for i in range(3)]
    fakes[2].die_on_request(3, mode, after=0.02)  # while its first requests are still generating

    async def body() -> None:
        async with cluster(fakes, "least_outstanding") as c:
            prompts = [f"prompt {i}" for i in range(30)]
            results = await asyncio.gather(*(c.complete(p) for p in prompts))
            assert_each_answered_once([(p, *r) for p, r in zip(prompts, results, strict=True)])
            assert fakes[2].received >= 3 and fakes[2].completed == 0
            assert all(engine != "2" for *_, engine in results)
            assert sum(fake.completed for fake in fakes) == len(prompts)  # none generated twice
            assert c.router.registry.get_sample_value("orch_router_retries_total") >= 3
            async with c.client.get(c.url + "/health") as response:
                health = await response.json()
            assert [e["healthy"] for e in health["engines"]] == [True, True, False]
            c.assert_released()

    run(body)


def test_a_request_whose_every_engine_is_lost_fails_at_once_naming_the_loss_and_is_released() -> None:
    fakes = [FakeEngine("only", latency=0.01)]
    fakes[0].die_on_request(1, "500", after=0.0)

    async def body() -> None:
        async with cluster(fakes, "kv_aware", request_timeout=30) as c:
            status, answer, _ = await asyncio.wait_for(c.complete("anyone there?"), timeout=5)
            assert status == 503, answer
            assert answer["error"]["message"].startswith("every engine is lost (last: "), answer
            assert c.router.healthy == [False]
            c.assert_released()

    run(body)


def test_every_waiting_request_fails_when_the_last_engine_is_lost() -> None:
    fakes = [FakeEngine(f"e{i}", latency=0.2, kv_total_tokens=120) for i in range(2)]
    for fake in fakes:
        fake.die_on_request(1, "close", after=0.05)

    async def body() -> None:
        # one request at a time per engine: the others wait in the central queue when both die
        async with cluster(fakes, "kv_aware", kv_total=120, request_timeout=30) as c:
            results = await asyncio.wait_for(
                asyncio.gather(*(c.complete(f"prompt {i}", max_tokens=60) for i in range(6))), timeout=10
            )
            assert {status for status, *_ in results} == {503}, results
            assert all("every engine is lost" in body["error"]["message"] for _, body, _ in results)
            assert c.router.healthy == [False, False]
            c.assert_released()

    run(body)


def test_a_request_no_engine_answers_in_time_gets_a_504_and_is_released() -> None:
    fakes = [FakeEngine("slow", latency=5.0)]

    async def body() -> None:
        async with cluster(fakes, "kv_aware", request_timeout=0.3) as c:
            status, answer, _ = await c.complete("anyone there?")
            assert status == 504, answer
            assert c.router.healthy == [True]
            c.assert_released()

    run(body)


def test_every_placement_is_timed_as_a_dispatch_decision() -> None:
    async def body() -> None:
        async with cluster(three_engines(0.01), "kv_aware") as c:
            results = await asyncio.gather(*(c.complete(f"prompt {i}") for i in range(12)))
            assert all(status == 200 for status, *_ in results)
            timed = c.router.registry.get_sample_value("orch_dispatch_decision_seconds_count")
            assert timed == c.router.flights.decisions >= 12
            c.assert_released()

    run(body)


def test_a_client_that_leaves_releases_its_reservation_and_the_engine() -> None:
    fakes = [FakeEngine("slow", latency=5.0)]

    async def body() -> None:
        async with cluster(fakes, "kv_aware") as c:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.complete("I will not wait"), timeout=0.2)
            for _ in range(100):
                if fakes[0].running == 0 and c.router.dispatcher.outstanding(0) == 0:
                    break
                await asyncio.sleep(0.01)
            assert fakes[0].running == 0
            c.assert_released()

    run(body)


# ---- malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/completions", {"max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": "", "max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),  # beyond any KV cache
        ("/v1/completions", {"prompt": "hi", "stream": True}, "stream"),
        ("/v1/completions", ["not", "an", "object"], "body"),
        ("/v1/chat/completions", {"prompt": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}, "messages[0]"),
    ],
)
def test_a_malformed_request_gets_a_400_naming_the_field(path: str, payload: Any, field: str) -> None:
    async def body() -> None:
        async with cluster([FakeEngine("e")], "kv_aware") as c:
            async with c.client.post(c.url + path, json=payload) as response:
                assert response.status == 400
                error = (await response.json())["error"]
            assert error["param"] == field
            assert error["message"].startswith(f"{field}:")
            assert c.fakes[0].received == 0
            c.assert_released()

    run(body)


def test_a_body_that_is_not_json_gets_a_400() -> None:
    async def body() -> None:
        async with (
            cluster([FakeEngine("e")], "kv_aware") as c,
            c.client.post(c.url + "/v1/completions", data=b"{nope") as response,
        ):
            assert response.status == 400
            assert (await response.json())["error"]["param"] == "body"

    run(body)


def test_prompt_tokens_are_estimated_from_text_token_ids_or_messages() -> None:
    assert estimate_tokens({"prompt": "x" * 400}, "/v1/completions") == 100
    assert estimate_tokens({"prompt": [1, 2, 3]}, "/v1/completions") == 3
    assert estimate_tokens({"prompt": ["x" * 40, "y" * 80]}, "/v1/completions") == 30
    messages = [
        {"role": "system", "content": "x" * 40},
        {"role": "user", "content": [{"type": "text", "text": "y" * 8}]},
    ]
    assert estimate_tokens({"messages": messages}, "/v1/chat/completions") == 10 + 4 + 2 + 4


# ---- engine /metrics ----------------------------------------------------------------------------

VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-8B"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 1.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-8B"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.9
vllm:gpu_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-8B"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-8B"} 0.25
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="Qwen/Qwen3-8B"} 1234.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="1000"} 1.0
"""

VLLM_V0 = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 4.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 2.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
"""

SGLANG = """\
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 5.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="meta-llama/Llama-3.1-8B-Instruct"} 100000.0
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B-Instruct"} 812.5
"""


@pytest.mark.parametrize("kind", ["vllm", "auto"])
def test_vllm_v1_metrics_sum_engine_cores_and_size_the_cache_from_cache_config(kind: str) -> None:
    load = parse_engine_metrics(VLLM_V1, kind, kv_total_tokens=999)
    # running and waiting sum over DP engine cores; usage is their mean (0.375), V1's name wins over V0's
    assert load == EngineLoad(
        running=5, waiting=1, kv_used_tokens=6000, kv_total_tokens=16000, tokens_per_s=0.0
    )


def test_vllm_v0_metrics_take_the_kv_total_from_configuration() -> None:
    load = parse_engine_metrics(VLLM_V0, "auto", kv_total_tokens=8000)
    assert load == EngineLoad(
        running=4, waiting=2, kv_used_tokens=2000, kv_total_tokens=8000, tokens_per_s=0.0
    )


@pytest.mark.parametrize("kind", ["sglang", "auto"])
def test_sglang_metrics_give_the_kv_total_and_throughput(kind: str) -> None:
    load = parse_engine_metrics(SGLANG, kind, kv_total_tokens=1)
    assert load == EngineLoad(
        running=7, waiting=5, kv_used_tokens=28000, kv_total_tokens=100000, tokens_per_s=812.5
    )


@pytest.mark.parametrize(
    ("text", "kind", "missing"),
    [
        ("", "auto", "no vllm: or sglang: metrics"),
        (SGLANG.replace("sglang:num_queue_reqs", "sglang:other"), "sglang", "sglang:num_queue_reqs"),
        (VLLM_V0.replace("vllm:num_requests_running", "vllm:x"), "vllm", "vllm:num_requests_running"),
    ],
)
def test_metrics_without_the_needed_series_say_which_is_missing(text: str, kind: str, missing: str) -> None:
    with pytest.raises(EngineUnavailable, match=missing):
        parse_engine_metrics(text, kind, kv_total_tokens=100)


@pytest.mark.parametrize("style", ["vllm", "sglang"])
def test_the_fake_engines_metrics_read_back_through_http_engine(style: str) -> None:
    async def body() -> None:
        fake = FakeEngine("f", style=style, latency=0.3, kv_total_tokens=3200)
        url = await fake.start()
        try:
            async with aiohttp.ClientSession() as session:
                engine = HttpEngine(url, session)
                request = asyncio.create_task(engine.complete({"prompt": "x" * 40, "max_tokens": 90}))
                await asyncio.sleep(0.1)
                load = await engine.load()
                await request
        finally:
            await fake.stop()
        assert (load.running, load.waiting, load.kv_total_tokens) == (1, 0, 3200)
        assert load.kv_used_tokens == 100

    run(body)


# ---- the CLI and the service entry point --------------------------------------------------------


def test_serve_router_routes_until_stopped() -> None:
    async def body() -> None:
        fake = FakeEngine("e")
        engine_url = await fake.start()
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        server = asyncio.create_task(
            serve_router(
                [engine_url],
                policy="round_robin",
                host="127.0.0.1",
                port=0,
                kv_total_tokens=1000,
                max_new_tokens_default=8,
                ready=ready.set_result,
                stop=stop,
            )
        )
        try:
            url = await ready
            async with aiohttp.ClientSession() as client:
                async with client.post(url + "/v1/completions", json={"prompt": "hi"}) as response:
                    assert response.status == 200
                async with client.get(url + "/metrics") as response:
                    text = await response.text()
            assert "orch_dispatch_decision_seconds_count" in text
            assert 'orch_router_requests_total{code="200",endpoint="/v1/completions"} 1.0' in text
        finally:
            stop.set()
            await server
            await fake.stop()

    run(body)


def test_orch_router_is_a_cli_command() -> None:
    from cli import main

    result = CliRunner().invoke(main, ["router", "--help"])
    assert result.exit_code == 0
    assert "--engine" in result.output and "--kv-tokens" in result.output
    result = CliRunner().invoke(main, ["router"])
    assert result.exit_code == 2 and "--engine" in result.output
    two = ["router", "--engine", "http://a:8000", "--engine", "http://b:8000"]
    result = CliRunner().invoke(main, [*two, "--gpu", "http://n:9400/metrics#0"])
    assert result.exit_code == 2 and "--gpu" in result.output and "one per engine" in result.output
    result = CliRunner().invoke(main, [*two, "--gpu", "http://n:9400/metrics#0", "--gpu", "n:9400#1"])
    assert result.exit_code == 2 and "http://" in result.output


def test_engines_that_report_nothing_are_placed_by_their_gpus_nvml_utilization() -> None:
    samples = [
        GpuSample(node="n", index=0, uuid="GPU-a", utilization_ratio=0.95),  # busy with others' work
        GpuSample(node="n", index=1, uuid="GPU-b", utilization_ratio=0.05),
    ]
    registry = CollectorRegistry()
    registry.register(GpuCollector(lambda: samples))

    async def agent_metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain")

    async def body() -> None:
        app = web.Application()
        app.router.add_get("/metrics", agent_metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        agent = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        gpus = [EngineGpu(agent, "0"), parse_engine_gpu(agent + "#GPU-b")]
        fakes = [FakeEngine("silent-a", metrics=False), FakeEngine("silent-b", metrics=False)]
        try:
            async with cluster(fakes, "least_outstanding", gpus=gpus) as c:
                await c.router.poll_once()
                assert c.router.healthy == [True, True]  # /metrics is 404, but /health answers
                served = [(await c.complete(f"p{i}"))[2] for i in range(6)]  # one at a time: a tie each
                assert served == ["1"] * 6
                samples[1] = GpuSample(node="n", index=1, uuid="GPU-b", utilization_ratio=0.99)
                await c.router.poll_once()
                assert (await c.complete("after"))[2] == "0"
                fakes[0].die()
                await c.router.poll_once()
                assert c.router.healthy == [False, True]  # neither /metrics nor /health: unhealthy
                c.assert_released()
        finally:
            await runner.cleanup()

    run(body)


@pytest.mark.parametrize("text", ["http://agent:9400/metrics", "agent:9400/metrics#0", "#0", "http://a#"])
def test_a_gpu_reference_without_url_and_gpu_is_refused_with_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"AGENT_METRICS_URL#GPU|http://"):
        parse_engine_gpu(text)

"""Sandbox pools on Ray: one local Ray cluster for the module (a head and a worker node on this machine, one
CPU each, so each ``RayPool`` has two actors), one pool per test.

Covers verdicts through the actors, a burst answered exactly once, killing an actor mid-burst (the calls it
held are answered "killed", it is replaced, later calls succeed), losing a node mid-burst (its actor is not
replaced, the pool goes on without it), closing mid-burst, and the pool behind ``ToolService``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.tools.admission import ToolService
from orchestrator.tools.api import ExecResult, Limits
from orchestrator.tools.ray_pool import RayPool, RayPoolError, _check_reachable
from tests.conftest import run_async as run


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[Cluster]:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


def check_burst(results: list[ExecResult], allowed: set[str]) -> None:
    """Each result is its own call's: ok with that call's output, or another allowed verdict."""
    for index, result in enumerate(results):
        assert result.verdict in allowed, (index, result)
        if result.verdict == "ok":
            assert result.stdout == f"{index}\n", (index, result)


def test_verdicts_come_back_through_the_actor() -> None:
    async def body() -> None:
        async with RayPool() as pool:
            alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
            assert len(pool.nodes) == 2 and set(pool.nodes) == alive  # one actor per node
            assert pool.actors_alive == 2 and pool.capacity == 2 and pool.actor_restarts == 0
            ok = await pool.execute("print(6 * 7)")
            assert (ok.verdict, ok.stdout, ok.exit_status) == ("ok", "42\n", 0)
            error = await pool.execute("raise KeyError('nope')")
            assert error.verdict == "error" and "KeyError: 'nope'" in error.stderr
            timeout = await pool.execute("while True: pass", Limits(wall_seconds=0.5, cpu_seconds=5))
            assert timeout.verdict == "timeout"
            stats = await pool.sandbox_stats()
            assert [each.workers_alive if each else None for each in stats] == [1, 1]
            assert pool.calls_in_flight == 0
        with pytest.raises(RayPoolError):
            await pool.execute("print(1)")

    run(body)


def test_a_burst_is_answered_once_per_call() -> None:
    async def body() -> None:
        async with RayPool(workers_per_node=2) as pool:
            results = await asyncio.gather(*(pool.execute(f"print({i})") for i in range(300)))
            check_burst(results, {"ok"})
            assert pool.calls_in_flight == 0

    run(body)


def test_killing_an_actor_mid_burst_answers_every_call_and_replaces_it() -> None:
    async def body() -> None:
        async with RayPool() as pool:
            actor = pool.actors[0]
            code = "import time; time.sleep(0.02); print({})"
            calls = [asyncio.ensure_future(pool.execute(code.format(i))) for i in range(150)]
            await until(lambda: sum(call.done() for call in calls) >= 10)
            ray.kill(actor)
            results = await asyncio.gather(*calls)
            check_burst(results, {"ok", "killed"})
            killed = [result for result in results if result.verdict == "killed"]
            assert killed and len(killed) < len(results)
            for result in killed:
                assert "sandbox actor 0" in result.stderr and "its Ray actor died" in result.stderr
                assert "killed by `ray.kill`" in result.stderr and result.exit_status is None
            await until(lambda: pool.actor_restarts == 1)
            assert pool.actors_alive == 2 and pool.actors[0] not in (None, actor)
            after = await asyncio.gather(*(pool.execute(f"print({i})") for i in range(20)))
            check_burst(after, {"ok"})
            assert pool.actor_restarts == 1 and pool.calls_in_flight == 0

    run(body)


def test_losing_a_node_mid_burst_answers_every_call_and_goes_on_without_it(cluster: Cluster) -> None:
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()

    async def body() -> None:
        async with RayPool() as pool:
            assert pool.capacity == 3
            lost = pool.nodes.index(node.node_id)
            code = "import time; time.sleep(0.05); print({})"
            calls = [asyncio.ensure_future(pool.execute(code.format(i))) for i in range(100)]
            await until(lambda: sum(call.done() for call in calls) >= 10)
            await asyncio.to_thread(cluster.remove_node, node)
            results = await asyncio.gather(*calls)
            check_burst(results, {"ok", "killed"})
            killed = [result for result in results if result.verdict == "killed"]
            assert killed and all(f"sandbox actor {lost}" in result.stderr for result in killed)
            after = await asyncio.gather(*(pool.execute(f"print({i})") for i in range(20)))
            check_burst(after, {"ok"})
            assert pool.actors[lost] is None and pool.actors_alive == 2 and pool.capacity == 2
            assert pool.actor_restarts == 0

    run(body)


def test_the_pool_behind_the_tool_service_answers_everything() -> None:
    async def body() -> None:
        async with RayPool() as pool, ToolService(pool, concurrency=32) as service:
            results = await service.execute_batch([(f"print({i})", None) for i in range(200)])
            check_burst(results, {"ok"})
            assert service.stats().answered == 200 and service.stats().pending == 0

    run(body)


def test_closing_mid_burst_answers_every_call() -> None:
    async def body() -> None:
        pool = RayPool()
        await pool.start()
        code = "import time; time.sleep(0.2); print({})"
        calls = [asyncio.ensure_future(pool.execute(code.format(i))) for i in range(40)]
        while pool.calls_in_flight < len(calls):
            await asyncio.sleep(0.01)
        await pool.close()
        results = await asyncio.gather(*calls)
        check_burst(results, {"ok", "killed"})
        assert any(result.verdict == "killed" for result in results)
        assert pool.actors_alive == 0 and pool.calls_in_flight == 0

    run(body)


def test_bad_settings_and_an_unstarted_pool_are_refused() -> None:
    with pytest.raises(ValueError, match="workers_per_node"):
        RayPool(workers_per_node=0)

    async def body() -> None:
        with pytest.raises(RayPoolError, match="not running"):
            await RayPool().execute("print(1)")
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            await _check_reachable(f"127.0.0.1:{port}")
        # ray.init would retry a dead address for minutes; the pool says so at once.
        with pytest.raises(RayPoolError, match="does not answer"):
            await _check_reachable(f"ray://127.0.0.1:{port}")
        await _check_reachable("auto")

    run(body)

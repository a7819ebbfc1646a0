"""The flight ledger on in-memory engines: any ``InferenceEngine`` flies, not only the HTTP one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator.core.dispatch import EngineState, Request, make_dispatcher
from orchestrator.rollout.engine import COMPLETIONS, EngineLoad, EngineUnavailable
from orchestrator.rollout.flights import AttemptsExhausted, FlightLedger
from tests.conftest import run_async as run

KV_TOTAL = 1000


class MemoryEngine:
    """An engine in this process: answers with its name, or fails while ``down``."""

    def __init__(self, name: str, *, down: bool = False) -> None:
        self.base_url = f"memory://{name}"
        self.kv_total_tokens = KV_TOTAL
        self.name = name
        self.down = down
        self.calls = 0

    async def complete(self, payload: dict[str, Any], path: str = COMPLETIONS) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise EngineUnavailable(f"{self.name} is down")
        return {"engine": self.name, "payload": payload}

    async def load(self) -> EngineLoad:
        return EngineLoad(0, 0, 0, KV_TOTAL, 0.0)


def ledger(engines: list[MemoryEngine], policy: str = "least_outstanding", **options: Any) -> FlightLedger:
    states = [EngineState(engine=i, kv_total_tokens=KV_TOTAL) for i in range(len(engines))]
    return FlightLedger(make_dispatcher(policy, states), engines, **options)


def request(ids: FlightLedger, tokens: int = 10) -> Request:
    rid = ids.next_id()
    return Request(request_id=rid, rollout_id=rid, turn=0, prompt_tokens=tokens, max_new_tokens=10)


def assert_released(flights: FlightLedger) -> None:
    for engine in range(len(flights.engines)):
        assert flights.dispatcher.outstanding(engine) == 0
        assert flights.dispatcher.reserved_tokens(engine) == 0
    assert flights.dispatcher.queued() == 0


def test_a_flight_whose_engine_is_lost_lands_on_another_and_is_released() -> None:
    async def body() -> None:
        engines = [MemoryEngine("a", down=True), MemoryEngine("b")]
        timed: list[float] = []
        flights = ledger(engines, observe_decision=timed.append)
        retries: list[None] = []
        flight = flights.submit(request(flights))
        engine, answer = await flights.fly(
            flight, {"prompt": "hi"}, timeout_s=5, on_retry=lambda: retries.append(None)
        )
        assert (engine, answer["engine"]) == (1, "b")
        assert flights.healthy == [False, True]
        assert flights.requeued == len(retries) == 1
        assert len(timed) == flights.decisions == 2
        assert_released(flights)

    run(body)


def test_when_every_engine_is_lost_the_flight_fails_naming_the_last_loss() -> None:
    async def body() -> None:
        flights = ledger([MemoryEngine("a", down=True), MemoryEngine("b", down=True)])
        flight = flights.submit(request(flights))
        with pytest.raises(EngineUnavailable, match=r"every engine is lost \(last: . is down\)"):
            await flights.fly(flight, {"prompt": "hi"}, timeout_s=5)
        assert flights.healthy == [False, False]
        assert_released(flights)

    run(body)


def test_a_flight_stops_after_max_attempts_with_every_error() -> None:
    async def body() -> None:
        engines = [MemoryEngine("a", down=True), MemoryEngine("b", down=True), MemoryEngine("c")]
        flights = ledger(engines, max_attempts=1)
        flight = flights.submit(request(flights))
        with pytest.raises(
            AttemptsExhausted, match=r"no engine answered after 1 attempts: engine \d: . is down"
        ):
            await flights.fly(flight, {"prompt": "hi"}, timeout_s=5)
        assert_released(flights)

    run(body)


def test_a_request_that_fits_no_engine_is_refused_and_nothing_is_held() -> None:
    async def body() -> None:
        flights = ledger([MemoryEngine("a")], policy="kv_aware")
        with pytest.raises(ValueError):
            flights.submit(request(flights, tokens=KV_TOTAL * 2))
        assert_released(flights)

    run(body)

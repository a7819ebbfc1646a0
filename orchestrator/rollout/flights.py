"""The flight ledger: every engine request placed through a ``Dispatcher``, from submission to release.

The router (one flight per client request) and the balancer (one flight per turn, or per chunk of one)
both fly their requests here, so the two behave alike:

- ``submit`` hands the request to the dispatcher, whose central queue holds it until the policy places
  it; every placement is timed (``observe_decision`` gets the seconds each decision took).
- ``fly`` waits for the placement and sends the request to that engine. An engine that fails it
  (``EngineUnavailable``: no answer, connection dropped, 5xx) is *lost*: the dispatcher hands back every
  request it held, each is cancelled there and resubmitted, so it is retried on another engine, at most
  ``max_attempts`` times in all. ``EngineRejected`` (4xx) and anything else end the flight at once.
- When every engine is lost, every flight still waiting for a placement fails at once with
  ``EngineUnavailable`` naming the last loss, rather than waiting out its timeout.
- Whatever the ending (answer, engine error, timeout, cancellation), ``fly`` releases the flight exactly
  once: its attempt is cancelled and its reservation given back.

The ledger must own its dispatcher alone: ``engine_lost`` hands back every request of an engine.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.dispatch import Dispatcher, Request
from orchestrator.rollout.engine import COMPLETIONS, EngineUnavailable, InferenceEngine

__all__ = ["AttemptsExhausted", "Flight", "FlightLedger"]

log = logging.getLogger(__name__)


class AttemptsExhausted(EngineUnavailable):
    """A flight met a lost engine on each of its ``max_attempts`` attempts."""


@dataclass
class Flight:
    """One request in the ledger: its dispatcher request and where it is now."""

    request: Request
    placed: asyncio.Future[int]  # resolved with an engine index when the dispatcher places it
    known: bool = False  # whether the dispatcher holds it (queued or in flight): then it must be finished
    attempt: asyncio.Future[dict[str, Any]] | None = None
    errors: list[str] = field(default_factory=list)

    def place(self, engine: int) -> None:
        if not self.placed.done():
            self.placed.set_result(engine)

    def fail(self, error: Exception) -> None:
        """End the wait for a placement with ``error`` (no effect once placed)."""
        if not self.placed.done():
            self.placed.set_exception(error)

    def release(self, dispatcher: Dispatcher) -> None:
        """End this request everywhere: cancel its attempt and give its reservation back, exactly once."""
        if self.attempt is not None and not self.attempt.done():
            self.attempt.cancel()
        if self.placed.done() and not self.placed.cancelled():
            self.placed.exception()  # retrieved, so an unused failure is not logged as never retrieved
        if self.known:
            self.known = False
            dispatcher.finished(self.request.request_id)

    def requeue(self) -> None:
        """Cancel the attempt in flight (its engine is lost) and wait for a new placement."""
        if self.attempt is not None and not self.attempt.done():
            self.attempt.cancel()
        if self.placed.done():
            self.placed = asyncio.get_running_loop().create_future()


class FlightLedger:
    """The flights of one dispatcher over ``engines``, and which engines are healthy."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        engines: Sequence[InferenceEngine],
        *,
        max_attempts: int | None = None,
        observe_decision: Callable[[float], None] | None = None,
        on_lost: Callable[[int], None] | None = None,
        on_requeue: Callable[[], None] | None = None,
    ) -> None:
        if not engines:
            raise ValueError("a flight ledger needs at least one engine")
        self.dispatcher = dispatcher
        self.engines = list(engines)
        self.max_attempts = max_attempts or max(3, len(self.engines) + 1)
        self.healthy = [True] * len(self.engines)  # as last seen: an answer, a loss or a poll
        self.requeued = 0  # requests handed back by a lost engine and resubmitted
        self.decisions = 0  # placements made
        self._observe_decision = observe_decision
        self._on_lost = on_lost
        self._on_requeue = on_requeue
        self._flights: dict[int, Flight] = {}
        self._ids = itertools.count()

    def next_id(self) -> int:
        """A request id unique within this ledger."""
        return next(self._ids)

    def submit(self, request: Request) -> Flight:
        """Queue ``request`` in the dispatcher; ``ValueError`` (and nothing held) when it fits no engine."""
        flight = Flight(request, asyncio.get_running_loop().create_future())
        self._submit(flight)
        self._flights[request.request_id] = flight
        self.pump()
        return flight

    async def fly(
        self,
        flight: Flight,
        payload: dict[str, Any],
        *,
        path: str = COMPLETIONS,
        timeout_s: float,
        on_retry: Callable[[], None] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send ``flight`` to its engine, retried while engines are lost; the engine and its answer.

        Raises ``asyncio.TimeoutError`` past ``timeout_s``, ``AttemptsExhausted``, ``EngineUnavailable``
        (no engine left, or it no longer fits one) or ``EngineRejected``. Releases the flight, whatever
        the ending. ``on_retry`` is called for each attempt lost with its engine.
        """
        try:
            return await asyncio.wait_for(self._send(flight, payload, path, on_retry), timeout_s)
        finally:
            self._flights.pop(flight.request.request_id, None)
            flight.release(self.dispatcher)
            self.pump()

    async def _send(
        self, flight: Flight, payload: dict[str, Any], path: str, on_retry: Callable[[], None] | None
    ) -> tuple[int, dict[str, Any]]:
        attempts = 0
        while attempts < self.max_attempts:
            placed = flight.placed
            engine = await placed
            if placed is not flight.placed:  # requeued (its engine lost) before this attempt began
                continue
            attempts += 1
            attempt = asyncio.ensure_future(self.engines[engine].complete(payload, path))
            flight.attempt = attempt
            try:
                await asyncio.wait({attempt})
            finally:
                if not attempt.done():  # cancelled: the caller left or the timeout hit
                    attempt.cancel()
                    await asyncio.wait({attempt})
            if attempt.cancelled():  # its engine was lost under it; the flight is already requeued
                if on_retry is not None:
                    on_retry()
                continue
            error = attempt.exception()
            if error is None:
                return engine, attempt.result()
            if not isinstance(error, EngineUnavailable):
                raise error
            flight.errors.append(f"engine {engine}: {error}")
            if on_retry is not None:
                on_retry()
            self.lose(engine, str(error))
        raise AttemptsExhausted(
            f"no engine answered after {self.max_attempts} attempts: {'; '.join(flight.errors)}"
        )

    def _submit(self, flight: Flight) -> None:
        self.dispatcher.submit(flight.request)
        flight.known = True

    def pump(self) -> None:
        """Hand every placement the dispatcher can make now to its waiting flight, timing the decisions."""
        started = time.perf_counter()
        placed = self.dispatcher.assignments()
        if not placed:
            return
        each = (time.perf_counter() - started) / len(placed)
        self.decisions += len(placed)
        for request, engine in placed:
            if self._observe_decision is not None:
                self._observe_decision(each)
            self._flights[request.request_id].place(engine)

    def lose(self, engine: int, reason: str) -> None:
        """Mark ``engine`` lost and requeue every request it held; fail waiting ones if no engine is left."""
        if self.healthy[engine]:
            log.warning("engine %d (%s) lost: %s", engine, self.engines[engine].base_url, reason)
        self.healthy[engine] = False
        if self._on_lost is not None:
            self._on_lost(engine)
        for request in self.dispatcher.engine_lost(engine):
            flight = self._flights[request.request_id]
            flight.known = False
            flight.requeue()
            self.requeued += 1
            if self._on_requeue is not None:
                self._on_requeue()
            try:
                self._submit(flight)
            except ValueError as error:  # it no longer fits any engine: fail it rather than lose it
                flight.fail(EngineUnavailable(str(error)))
        if not any(self.healthy):
            for flight in self._flights.values():
                flight.fail(EngineUnavailable(f"every engine is lost (last: {reason})"))
        self.pump()

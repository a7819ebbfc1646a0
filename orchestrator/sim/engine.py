"""Simulated inference engines with continuous batching, on virtual time.

An engine takes turn requests (a context to prefill, then tokens to generate), decodes all running
sequences one token per step, and preempts with recompute when the running sequences outgrow its KV
cache. Its scheduling mirrors vLLM's: first come first served; prefill stalls decoding; a preempted
sequence goes back to the head of the queue and must prefill its whole context again.

``SimEngine`` advances from event to event (finishes, admissions, KV exhaustion) in closed form.
bench/token_step_reference.py's ``TokenStepEngine`` follows the same rules one decode step at a time; it
is the reference that ``SimEngine`` is checked against, and the baseline that benchmarks measure it against.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from orchestrator.rollout.engine import EngineLoad
from orchestrator.sim.engine_cost import EngineCost

__all__ = ["EngineStats", "SimEngine", "SimulatedEngine", "TurnRequest", "check_request"]


@dataclass(frozen=True)
class TurnRequest:
    """One turn of a rollout: prefill ``context_tokens``, then generate ``new_tokens``.

    ``cached_tokens`` leading context tokens are already in the engine's prefix cache (vLLM's automatic
    prefix caching, SGLang's radix cache): they hold KV cache but are not prefilled again.
    """

    key: int
    context_tokens: int
    new_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class EngineStats:
    """Totals over an engine's life; ``prefill_tokens`` includes contexts recomputed after preemption."""

    busy_seconds: float
    last_finish_seconds: float
    generated_tokens: int
    prefill_tokens: int
    preemptions: int
    peak_kv_tokens: int


class SimulatedEngine(Protocol):
    """A simulated engine driven by an event loop: it asks to be woken at ``next_event_time``."""

    @property
    def next_event_time(self) -> float:
        """When ``advance`` must next be called; ``math.inf`` when there is nothing to do."""
        ...

    @property
    def event_id(self) -> int:
        """Changes whenever ``next_event_time`` is rescheduled, so callers can drop stale wake-ups."""
        ...

    def submit(self, request: TurnRequest, now: float) -> bool:
        """Queue ``request`` arriving at ``now``; True when that moved ``next_event_time``."""
        ...

    def advance(self) -> list[int]:
        """Run the engine up to ``next_event_time``; return the keys of the requests that finished there."""
        ...

    def load(self, now: float) -> EngineLoad: ...

    def stats(self) -> EngineStats: ...


def check_request(request: TurnRequest, capacity: int) -> None:
    """Refuse a request an engine of ``capacity`` KV tokens could never hold, or that asks for nothing."""
    if request.new_tokens < 1 or request.context_tokens < 0:
        raise ValueError(f"request {request.key}: needs new_tokens >= 1 and context_tokens >= 0")
    if not 0 <= request.cached_tokens <= request.context_tokens:
        raise ValueError(
            f"request {request.key}: cached_tokens must be in [0, context_tokens], "
            f"got {request.cached_tokens}"
        )
    if request.context_tokens + request.new_tokens > capacity:
        raise ValueError(
            f"request {request.key}: {request.context_tokens} + {request.new_tokens} tokens exceed "
            f"the engine's KV cache of {capacity} tokens"
        )


class _Sequence:
    """A running sequence of ``SimEngine``, positioned on the engine's step counter."""

    __slots__ = ("admitted_at", "context", "finish_at", "key", "live")

    def __init__(self, key: int, context: int, admitted_at: int, finish_at: int) -> None:
        self.key = key
        self.context = context
        self.admitted_at = admitted_at
        self.finish_at = finish_at
        self.live = True


class SimEngine:
    """Continuous batching in closed form: O(log n) work per event, none per token.

    Every running sequence gains one token per step, so one counter (steps decoded since the engine
    started) positions them all: a sequence admitted at counter ``a`` with context ``c`` holds
    ``c + counter − a`` KV tokens and finishes at a counter value fixed on admission. The KV cache in
    use is ``Σc + n·counter − Σa``, and step time grows linearly with it, so the time of the next
    finish or of KV exhaustion is an arithmetic series.

    After a preemption, admission pauses until a sequence finishes, so that a preempted sequence does
    not thrash in and out of the cache it was just evicted from.
    """

    def __init__(self, cost: EngineCost) -> None:
        self._cost = cost
        self._capacity = cost.kv_capacity_tokens
        self._time = 0.0  # the moment ``_counter`` refers to: a step boundary, or the end of a prefill
        self._counter = 0
        self._running = 0
        self._context_sum = 0
        self._admitted_sum = 0
        self._finishes: list[tuple[int, int, _Sequence]] = []
        self._by_admission: list[_Sequence] = []  # the most recently admitted live sequence is preempted
        self._admissions = 0
        self._waiting: deque[TurnRequest] = deque()
        self._paused = False
        self._next_steps = 0
        self._next_time = math.inf
        self._event_id = 0
        self._busy = 0.0
        self._last_finish = 0.0
        self._generated = 0
        self._prefilled = 0
        self._preemptions = 0
        self._peak_kv = 0

    @property
    def next_event_time(self) -> float:
        return self._next_time

    @property
    def event_id(self) -> int:
        return self._event_id

    def _kv_used(self) -> int:
        return self._context_sum + self._running * self._counter - self._admitted_sum

    def submit(self, request: TurnRequest, now: float) -> bool:
        check_request(request, self._capacity)
        queued_before = bool(self._waiting)
        self._waiting.append(request)
        # Behind a queued request, or while paused, nothing is admitted before the next finish, which is
        # already scheduled; and KV use only grows until then, so a request that does not fit now waits too.
        if queued_before or self._paused:
            return False
        running = self._running
        if running == 0:
            steps, time = 0, max(self._time, now)
        else:
            kv = self._kv_used()
            elapsed = now - self._time
            steps = 0
            if elapsed > 0:
                steps = self._cost.decode_steps_within(running, kv, elapsed)
                if self._cost.decode_seconds(running, kv, steps) < elapsed:
                    steps += 1  # the step in flight completes first
            if steps >= self._next_steps:
                return False
            if kv + running * steps + request.context_tokens + running + 1 > self._capacity:
                return False
            time = self._time + self._cost.decode_seconds(running, kv, steps)
        if time >= self._next_time:
            return False
        self._next_steps, self._next_time = steps, time
        self._event_id += 1
        return True

    def advance(self) -> list[int]:
        now = self._next_time
        if self._running:
            self._busy += now - self._time
            self._counter += self._next_steps
        self._time = now
        self._peak_kv = max(self._peak_kv, self._kv_used())
        finished = self._finish()
        while self._running > 1 and self._kv_used() + self._running > self._capacity:
            self._preempt()
        if self._waiting and not self._paused:
            self._admit()
        self._schedule()
        return finished

    def _finish(self) -> list[int]:
        finished: list[int] = []
        heap, counter = self._finishes, self._counter
        while heap and heap[0][0] <= counter:
            seq = heapq.heappop(heap)[2]
            if not seq.live:
                continue
            seq.live = False
            self._remove(seq)
            self._generated += seq.finish_at - seq.admitted_at
            finished.append(seq.key)
        if finished:
            self._paused = False
            self._last_finish = self._time
        return finished

    def _remove(self, seq: _Sequence) -> None:
        self._running -= 1
        self._context_sum -= seq.context
        self._admitted_sum -= seq.admitted_at

    def _preempt(self) -> None:
        stack = self._by_admission
        seq = stack.pop()
        while not seq.live:
            seq = stack.pop()
        seq.live = False
        self._remove(seq)
        done = self._counter - seq.admitted_at
        self._generated += done
        self._waiting.appendleft(TurnRequest(seq.key, seq.context + done, seq.finish_at - self._counter))
        self._preemptions += 1
        self._paused = True

    def _admit(self) -> None:
        waiting, counter, capacity = self._waiting, self._counter, self._capacity
        kv = self._kv_used()
        tokens = 0
        while waiting:
            request = waiting[0]
            context = request.context_tokens
            if kv + context + self._running + 1 > capacity:
                break
            waiting.popleft()
            seq = _Sequence(request.key, context, counter, counter + request.new_tokens)
            self._admissions += 1
            heapq.heappush(self._finishes, (seq.finish_at, self._admissions, seq))
            self._by_admission.append(seq)
            self._running += 1
            self._context_sum += context
            self._admitted_sum += counter
            kv += context
            tokens += context - request.cached_tokens
        if tokens:
            seconds = self._cost.prefill_seconds(tokens)
            self._time += seconds
            self._busy += seconds
            self._prefilled += tokens
            self._peak_kv = max(self._peak_kv, kv)

    def _schedule(self) -> None:
        self._event_id += 1
        running = self._running
        if not running:
            self._next_steps, self._next_time = 0, math.inf
            return
        heap = self._finishes
        while not heap[0][2].live:
            heapq.heappop(heap)
        kv = self._kv_used()
        to_finish = heap[0][0] - self._counter
        to_exhaustion = (self._capacity - kv) // running
        steps = min(to_finish, to_exhaustion)
        self._next_steps = steps
        self._next_time = self._time + self._cost.decode_seconds(running, kv, steps)

    def load(self, now: float) -> EngineLoad:
        running, kv = self._running, self._kv_used()
        tokens_per_s = 0.0
        if running:
            if now > self._time:
                steps = self._cost.decode_steps_within(running, kv, now - self._time)
                kv += running * min(steps, self._next_steps)
            tokens_per_s = running / self._cost.decode_step_seconds(running, kv)
        return EngineLoad(running, len(self._waiting), kv, self._capacity, tokens_per_s)

    def stats(self) -> EngineStats:
        return EngineStats(
            busy_seconds=self._busy,
            last_finish_seconds=self._last_finish,
            generated_tokens=self._generated,
            prefill_tokens=self._prefilled,
            preemptions=self._preemptions,
            peak_kv_tokens=self._peak_kv,
        )

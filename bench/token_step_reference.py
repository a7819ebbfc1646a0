"""The token-by-token reference for the rollout simulator: a bench and test oracle, not shipped code.

``TokenStepEngine`` follows ``orchestrator.sim.engine.SimEngine``'s rules one decode step at a time: it is
the straightforward simulation ``SimEngine`` must match, and the baseline bench/rollout_sim_speed.py
measures it against. ``simulate_rollout_phase`` runs a step's rollouts over a pool of either engine with a
fixed dispatch (plain round robin by default): one global heap orders engine wake-ups and tool-call
returns, so with ``SimEngine`` its cost grows with the number of turns, not with the number of tokens.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence

from orchestrator.rollout.engine import EngineLoad
from orchestrator.sim.engine import EngineStats, SimEngine, SimulatedEngine, TurnRequest, check_request
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.rollout_phase import RolloutPhaseResult, phase_result
from orchestrator.sim.rollout_shapes import RolloutShape

__all__ = ["TokenStepEngine", "simulate_rollout_phase"]

_TOOL_RETURN = -1


def simulate_rollout_phase(
    rollouts: Sequence[RolloutShape],
    engines: int,
    cost: EngineCost,
    *,
    engine_factory: Callable[[EngineCost], SimulatedEngine] = SimEngine,
    dispatch: Callable[[int, int], int] | None = None,
) -> RolloutPhaseResult:
    """Run every rollout to completion from time 0; ``dispatch(rollout, turn)`` picks each turn's engine
    (default: rollout ``i`` always goes to engine ``i % engines``, plain round robin).

    Each turn prefills the rollout's whole context (no prefix caching), decodes the turn's response,
    then leaves the engine for ``tool_seconds`` before its next turn arrives.
    """
    if engines < 1:
        raise ValueError(f"engines must be at least 1, got {engines}")
    for shape in rollouts:
        if shape.context_tokens > cost.kv_capacity_tokens:
            raise ValueError(
                f"rollout {shape.rollout_id} reaches {shape.context_tokens} tokens of context, more than an "
                f"engine's KV cache of {cost.kv_capacity_tokens}"
            )
    pool = [engine_factory(cost) for _ in range(engines)]
    choose = dispatch if dispatch is not None else (lambda key, turn: key % engines)
    # (time, tie-break, engine index or _TOOL_RETURN, the engine's event id or the rollout index)
    heap: list[tuple[float, int, int, int]] = []
    pushes = 0

    def wake(index: int) -> None:
        nonlocal pushes
        engine = pool[index]
        if engine.next_event_time < math.inf:
            pushes += 1
            heapq.heappush(heap, (engine.next_event_time, pushes, index, engine.event_id))

    context = [shape.prompt_tokens for shape in rollouts]
    next_turn = [0] * len(rollouts)
    for key, shape in enumerate(rollouts):
        request = TurnRequest(key, shape.prompt_tokens, shape.turns[0].response_tokens)
        index = choose(key, 0)
        if pool[index].submit(request, 0.0):
            wake(index)

    seconds, turns, tool_calls, events = 0.0, 0, 0, 0
    while heap:
        time, _, target, payload = heapq.heappop(heap)
        if target == _TOOL_RETURN:
            events += 1
            key = payload
            index = choose(key, next_turn[key])
            request = TurnRequest(key, context[key], rollouts[key].turns[next_turn[key]].response_tokens)
            if pool[index].submit(request, time):
                wake(index)
            continue
        if payload != pool[target].event_id:
            continue  # superseded wake-up
        events += 1
        for key in pool[target].advance():
            shape_turns = rollouts[key].turns
            turn = shape_turns[next_turn[key]]
            next_turn[key] += 1
            turns += 1
            if next_turn[key] == len(shape_turns):
                seconds = max(seconds, time)
                continue
            tool_calls += 1
            context[key] += turn.response_tokens + turn.tool_output_tokens
            pushes += 1
            heapq.heappush(heap, (time + turn.tool_seconds, pushes, _TOOL_RETURN, key))
        wake(target)

    return phase_result(pool, rollouts, seconds, turns, tool_calls, events)


class _StepSequence:
    """A running sequence of ``TokenStepEngine``: it holds ``context + steps − started`` KV tokens."""

    __slots__ = ("admission", "context", "finish", "key", "live", "started")

    def __init__(self, admission: int, key: int, context: int, started: int, finish: int) -> None:
        self.admission = admission
        self.key = key
        self.context = context
        self.started = started
        self.finish = finish
        self.live = True


class TokenStepEngine:
    """The same engine, one decode step per event: the straightforward simulation ``SimEngine`` must match.

    It is also the baseline that bench/rollout_sim_speed.py measures ``SimEngine`` against, so it is as fast
    as a step-by-step simulation can be: a step does constant work (the KV total grows by the batch size and
    the sequences due at that step are looked up), plus constant work per sequence admitted, finished or
    preempted. It never re-sums the batch.
    """

    def __init__(self, cost: EngineCost) -> None:
        self._cost = cost
        self._capacity = cost.kv_capacity_tokens
        self._time = 0.0
        self._steps = 0  # decode steps so far: a sequence holds ``context + steps − started`` KV tokens
        self._kv = 0  # KV tokens held by the running sequences
        self._running: dict[int, _StepSequence] = {}  # by admission number: the last one is preempted first
        self._due: dict[int, list[_StepSequence]] = {}  # by the step count at which they finish
        self._admissions = 0
        self._waiting: deque[TurnRequest] = deque()
        self._paused = False
        self._stepping = False  # whether the pending event ends a decode step (else: a prefill or an arrival)
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

    def submit(self, request: TurnRequest, now: float) -> bool:
        check_request(request, self._capacity)
        self._waiting.append(request)
        if self._running or self._next_time <= max(self._time, now):
            return False  # the pending step or prefill boundary will look at the queue
        self._next_time = max(self._time, now)
        self._stepping = False
        self._event_id += 1
        return True

    def advance(self) -> list[int]:
        now = self._next_time
        running = self._running
        if self._stepping:
            self._busy += now - self._time
            self._steps += 1
            self._kv += len(running)
        self._time = now
        self._peak_kv = max(self._peak_kv, self._kv)
        finished = self._finish()
        while len(running) > 1 and self._kv + len(running) > self._capacity:
            self._preempt()
        tokens = self._admit() if not self._paused else 0
        self._event_id += 1
        if tokens:
            seconds = self._cost.prefill_seconds(tokens)
            self._busy += seconds
            self._prefilled += tokens
            self._peak_kv = max(self._peak_kv, self._kv)
            self._next_time, self._stepping = now + seconds, False
        elif running:
            step = self._cost.decode_step_seconds(len(running), self._kv)
            self._next_time, self._stepping = now + step, True
        else:
            self._next_time, self._stepping = math.inf, False
        return finished

    def _finish(self) -> list[int]:
        """Retire the sequences whose last token was this step's, in admission order."""
        due = self._due.pop(self._steps, None)
        if not due:
            return []
        finished: list[int] = []
        for seq in due:
            if not seq.live:
                continue  # preempted; its re-admission is another sequence
            seq.live = False
            del self._running[seq.admission]
            self._kv -= seq.context + seq.finish - seq.started
            self._generated += seq.finish - seq.started
            finished.append(seq.key)
        if finished:
            self._paused = False
            self._last_finish = self._time
        return finished

    def _preempt(self) -> None:
        """Evict the most recently admitted sequence back to the head of the queue, to recompute later."""
        seq = self._running.popitem()[1]
        seq.live = False
        done = self._steps - seq.started
        self._kv -= seq.context + done
        self._generated += done
        self._waiting.appendleft(TurnRequest(seq.key, seq.context + done, seq.finish - self._steps))
        self._preemptions += 1
        self._paused = True

    def _admit(self) -> int:
        """Admit queued requests, first come first served, while they fit; return the tokens to prefill."""
        waiting, running, capacity, steps = self._waiting, self._running, self._capacity, self._steps
        tokens = 0
        while waiting:
            request = waiting[0]
            context = request.context_tokens
            if self._kv + context + len(running) + 1 > capacity:
                break
            waiting.popleft()
            self._admissions += 1
            seq = _StepSequence(self._admissions, request.key, context, steps, steps + request.new_tokens)
            running[seq.admission] = seq
            self._due.setdefault(seq.finish, []).append(seq)
            self._kv += context
            tokens += context - request.cached_tokens
        return tokens

    def load(self, now: float) -> EngineLoad:
        running, kv = len(self._running), self._kv
        tokens_per_s = running / self._cost.decode_step_seconds(running, kv) if running else 0.0
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

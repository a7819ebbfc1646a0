"""The token-by-token reference engine gives exactly what its original, re-summing version gave.

``TokenStepEngine`` is the baseline bench/rollout_sim_speed.py measures ``SimEngine`` against, so it is
kept as fast as a one-step-per-event simulation can be (running KV totals instead of re-summing every
sequence). ``OriginalTokenStepEngine`` below is the version before that change, kept verbatim as the
oracle: on seeded workloads both must produce the same trace of finishes, loads and totals, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import deque
from collections.abc import Callable

import pytest

from bench import rollout_sim_speed
from bench.token_step_reference import TokenStepEngine, simulate_rollout_phase
from orchestrator.rollout.engine import EngineLoad
from orchestrator.sim.engine import EngineStats, SimulatedEngine, TurnRequest, check_request
from orchestrator.sim.engine_cost import EngineCost
from orchestrator.sim.rollout_phase import RolloutPhaseResult
from orchestrator.sim.rollout_shapes import RolloutShape, sample_rollouts
from tests.test_rollout_sim import H100_COST, SMALL


class _OriginalStepSequence:
    __slots__ = ("generated", "key", "kv", "remaining")

    def __init__(self, key: int, context: int, remaining: int) -> None:
        self.key = key
        self.kv = context
        self.remaining = remaining
        self.generated = 0


class OriginalTokenStepEngine:
    """``TokenStepEngine`` as it was before its KV totals became incremental (commit 32a14bb)."""

    def __init__(self, cost: EngineCost) -> None:
        self._cost = cost
        self._capacity = cost.kv_capacity_tokens
        self._time = 0.0
        self._running: list[_OriginalStepSequence] = []
        self._waiting: deque[TurnRequest] = deque()
        self._paused = False
        self._stepping = False
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
        return sum(seq.kv for seq in self._running)

    def submit(self, request: TurnRequest, now: float) -> bool:
        check_request(request, self._capacity)
        self._waiting.append(request)
        if self._running or self._next_time <= max(self._time, now):
            return False
        self._next_time = max(self._time, now)
        self._stepping = False
        self._event_id += 1
        return True

    def advance(self) -> list[int]:
        now = self._next_time
        if self._stepping:
            self._busy += now - self._time
            for seq in self._running:
                seq.kv += 1
                seq.generated += 1
                seq.remaining -= 1
        self._time = now
        self._peak_kv = max(self._peak_kv, self._kv_used())
        finished = [seq for seq in self._running if seq.remaining == 0]
        if finished:
            self._running = [seq for seq in self._running if seq.remaining]
            self._generated += sum(seq.generated for seq in finished)
            self._paused = False
            self._last_finish = now
        while len(self._running) > 1 and self._kv_used() + len(self._running) > self._capacity:
            seq = self._running.pop()
            self._generated += seq.generated
            self._waiting.appendleft(TurnRequest(seq.key, seq.kv, seq.remaining))
            self._preemptions += 1
            self._paused = True
        tokens = 0
        while self._waiting and not self._paused:
            request = self._waiting[0]
            if self._kv_used() + request.context_tokens + len(self._running) + 1 > self._capacity:
                break
            self._waiting.popleft()
            self._running.append(
                _OriginalStepSequence(request.key, request.context_tokens, request.new_tokens)
            )
            tokens += request.context_tokens - request.cached_tokens
        self._event_id += 1
        if tokens:
            seconds = self._cost.prefill_seconds(tokens)
            self._busy += seconds
            self._prefilled += tokens
            self._peak_kv = max(self._peak_kv, self._kv_used())
            self._next_time, self._stepping = now + seconds, False
        elif self._running:
            step = self._cost.decode_step_seconds(len(self._running), self._kv_used())
            self._next_time, self._stepping = now + step, True
        else:
            self._next_time, self._stepping = math.inf, False
        return [seq.key for seq in finished]

    def load(self, now: float) -> EngineLoad:
        running, kv = len(self._running), self._kv_used()
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


Trace = list[tuple[object, ...]]


class Recording:
    """An engine wrapper that logs every call's outcome: finishes with their times, loads, event ids."""

    def __init__(self, engine: SimulatedEngine, index: int, trace: Trace) -> None:
        self._engine, self._index, self._trace = engine, index, trace

    @property
    def next_event_time(self) -> float:
        return self._engine.next_event_time

    @property
    def event_id(self) -> int:
        return self._engine.event_id

    def submit(self, request: TurnRequest, now: float) -> bool:
        moved = self._engine.submit(request, now)
        self._trace.append(("submit", self._index, request.key, now, moved, self.next_event_time))
        self._trace.append(("load", self._index, self._engine.load(now)))
        return moved

    def advance(self) -> list[int]:
        now = self._engine.next_event_time
        finished = self._engine.advance()
        after = (self.next_event_time, self.event_id)
        self._trace.append(("advance", self._index, now, tuple(finished), *after))
        self._trace.append(("load", self._index, self._engine.load(now)))
        return finished

    def load(self, now: float) -> EngineLoad:
        return self._engine.load(now)

    def stats(self) -> EngineStats:
        return self._engine.stats()


def run(
    engine: Callable[[EngineCost], SimulatedEngine],
    shapes: list[RolloutShape],
    engines: int,
    cost: EngineCost,
    dispatch: Callable[[int, int], int] | None,
) -> tuple[RolloutPhaseResult, Trace, dict[int, float]]:
    """The phase result, the full call trace, and each rollout's finish time (its last turn's end)."""
    trace: Trace = []
    made = 0

    def factory(cost: EngineCost) -> SimulatedEngine:
        nonlocal made
        made += 1
        return Recording(engine(cost), made - 1, trace)

    result = simulate_rollout_phase(shapes, engines, cost, engine_factory=factory, dispatch=dispatch)
    finish = {key: entry[2] for entry in trace if entry[0] == "advance" for key in entry[3]}
    return result, trace, finish


def workload(seed: int, problems: int, samples: int, max_response: int, max_turns: int) -> list[RolloutShape]:
    rng = random.Random(seed)
    return sample_rollouts(rng, range(problems), samples, 100, max_response, max_turns, lambda _: 0.5)


def tight(shapes: list[RolloutShape], slack: int) -> EngineCost:
    return dataclasses.replace(SMALL, kv_capacity_tokens=max(s.context_tokens for s in shapes) + slack)


CASES = {
    # name: (seed, problems, samples, max_response, max_turns, engines, cost or KV slack, dispatch)
    "tight-kv-preempts": (1, 6, 8, 1500, 4, 2, 500, None),
    "tighter-kv-one-engine": (2, 4, 8, 1200, 3, 1, 100, None),
    "turns-move-between-engines": (3, 6, 6, 1000, 5, 3, 800, lambda key, turn: (key + turn) % 3),
    "roomy-kv-no-preemption": (4, 8, 8, 2000, 4, 4, 50_000, None),
    "h100-slice": (5, 8, 32, 4000, 6, 1, H100_COST, None),
}


Dispatch = Callable[[int, int], int] | None


def instance(case: str) -> tuple[list[RolloutShape], int, EngineCost, Dispatch]:
    seed, problems, samples, max_response, max_turns, engines, capacity, dispatch = CASES[case]
    shapes = workload(seed, problems, samples, max_response, max_turns)
    cost = capacity if isinstance(capacity, EngineCost) else tight(shapes, capacity)
    return shapes, engines, cost, dispatch


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_reference_engine_reproduces_its_original_version_exactly(case: str) -> None:
    shapes, engines, cost, dispatch = instance(case)
    old, old_trace, old_finish = run(OriginalTokenStepEngine, shapes, engines, cost, dispatch)
    new, new_trace, new_finish = run(TokenStepEngine, shapes, engines, cost, dispatch)
    assert len(old_finish) == len(shapes)
    assert new_finish == old_finish  # every rollout ends at the same float, not just close to it
    assert (new.seconds, new.preemptions, new.events) == (old.seconds, old.preemptions, old.events)
    assert new == old
    assert new_trace == old_trace


def test_the_cases_cover_preemption_and_its_absence() -> None:
    preempted = {}
    for case in CASES:
        shapes, engines, cost, dispatch = instance(case)
        preempted[case] = simulate_rollout_phase(shapes, engines, cost, dispatch=dispatch).preemptions > 0
    assert preempted["tight-kv-preempts"] and preempted["tighter-kv-one-engine"]
    assert preempted["turns-move-between-engines"]
    assert not preempted["roomy-kv-no-preemption"]


HEADLINE = re.compile(
    r"headline: speedup vs token-by-token: ([\d.]+)x \(event-granular ([\d.]+) s against the token-by-token "
    r"baseline's ([\d.]+) s on the same step; goal >= ([\d.]+)x: (met|NOT met)\)"
)


def test_the_speed_bench_prints_its_figure_baseline_and_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert rollout_sim_speed.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = {
        line[:26].strip(): line[26:].replace(",", "").split()
        for line in out.splitlines()
        if line.startswith(("event-granular (orch)", "token-by-token (baseline)"))
    }
    fast, slow = rows["event-granular (orch)"], rows["token-by-token (baseline)"]
    assert fast[0] == slow[0] and fast[1] == slow[1]  # same rollouts on the same engines
    assert fast[2] == slow[2] and fast[6] == slow[6]  # same simulated seconds and preemptions
    assert "(goal: identical: met)" in out
    match = HEADLINE.search(out)
    assert match, out
    ratio, fast_wall, slow_wall, goal = (float(match.group(i)) for i in range(1, 5))
    assert (match.group(2), match.group(3)) == (fast[3], slow[3])  # the headline's times are the rows'
    assert ratio == pytest.approx(slow_wall / fast_wall, abs=0.05 + 0.01 * ratio)
    assert match.group(5) == ("met" if ratio >= goal else "NOT met")
    events = re.search(r"events: token-by-token processes ([\d.]+)x as many", out)
    assert events and float(events.group(1)) == pytest.approx(int(slow[4]) / int(fast[4]), abs=0.05)

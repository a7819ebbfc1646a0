"""Each dispatch policy's choice rule: which engine a request goes to now, or None (it waits)."""

from __future__ import annotations

import random
from collections.abc import Callable

from orchestrator.core.dispatch.ledger import Ledger
from orchestrator.core.dispatch.protocol import Request
from orchestrator.spec import DISPATCH_POLICIES

__all__ = [
    "AFFINITY_SLACK_FRACTION",
    "KV_BOUNDED",
    "POLICIES",
    "Choose",
    "Route",
    "choice_rule",
    "warm_route",
]

# kv_aware keeps a turn with the engine that holds its prefix unless another engine's free budget is larger
# by more than this share of the KV cache: re-prefilling a context elsewhere costs more than a small
# imbalance. 1/8 measured best of 0, 1/32, 1/16, 1/8, 1/4 and "always" on bench/rollout_balance.py (full
# size, 8,192 tokens, seed 20250828: 313.5, 218.3, 197.8, 191.5, 193.5, 198.9 s), before requests could
# wait for their engine (which took 12,288 tokens from 469.2 to 316.7 s: 12x less prefill).
AFFINITY_SLACK_FRACTION = 1 / 8

POLICIES: tuple[str, ...] = DISPATCH_POLICIES  # the run spec's list: one list for spec, CLI and dispatcher
KV_BOUNDED: frozenset[str] = frozenset({"kv_aware", "power_of_two", "prefix_affinity"})

Choose = Callable[[Request], int | None]  # the engine for a request now, or None: it waits


def _most_budget(ledger: Ledger) -> Choose:
    """The healthy engine with the most KV budget left, if the reservation fits there."""
    peek, free = ledger.by_budget().peek, ledger.free

    def choose(request: Request) -> int | None:
        engine = peek()
        if engine is None or free[engine] < request.reservation:
            return None
        return engine

    return choose


Route = Callable[[Request], int | None]  # the engine whose own queue a request waits in, or None: central


def warm_route(ledger: Ledger) -> Route:
    """kv_aware: wait for the engine that holds the request's prefix, unless a much emptier one has room."""
    peek, free, states, size = ledger.by_budget().peek, ledger.free, ledger.states, ledger.size

    def route(request: Request) -> int | None:
        previous = request.previous_engine
        if previous is None or not 0 <= previous < size:
            return None
        state = states[previous]
        reservation = request.reservation
        if not state.healthy or reservation > state.kv_total_tokens:
            return None
        best = peek()
        if best is not None and best != previous and free[best] >= reservation:
            slack = int(state.kv_total_tokens * AFFINITY_SLACK_FRACTION)
            if free[previous] < free[best] - slack:
                return None
        return previous

    return route


def _static(ledger: Ledger, expected_rollouts: int | None) -> Choose:
    def choose(request: Request) -> int | None:
        r, n = request.rollout_id, ledger.size
        home = (r * n // expected_rollouts) % n if expected_rollouts else r % n
        return home if ledger.is_healthy(home) else ledger.next_healthy(home)

    return choose


def _round_robin(ledger: Ledger) -> Choose:
    cursor = 0

    def choose(request: Request) -> int | None:
        nonlocal cursor
        engine = ledger.next_healthy(cursor)
        if engine is not None:
            cursor = (engine + 1) % ledger.size
        return engine

    return choose


def _least_outstanding(ledger: Ledger) -> Choose:
    by_load = ledger.heap(lambda e: ledger.load(e) if ledger.is_healthy(e) else None)
    return lambda request: by_load.peek()


def _power_of_two(ledger: Ledger, seed: int) -> Choose:
    rng = random.Random(seed)
    most_budget = _most_budget(ledger)

    def choose(request: Request) -> int | None:
        fallback = most_budget(request)
        if fallback is None:  # no engine has room: wait, and draw nothing
            return None
        healthy = ledger.healthy
        first = rng.randrange(len(healthy))
        pair = [healthy[first]]
        if len(healthy) > 1:
            second = rng.randrange(len(healthy) - 1)
            pair.append(healthy[second + 1 if second >= first else second])
        fits = [e for e in sorted(pair) if ledger.budget(e) >= request.reservation]
        return min(fits, key=ledger.load) if fits else fallback

    return choose


def _prefix_affinity(ledger: Ledger) -> Choose:
    most_budget = _most_budget(ledger)

    def choose(request: Request) -> int | None:
        previous = request.previous_engine
        if (
            previous is not None
            and 0 <= previous < ledger.size
            and ledger.is_healthy(previous)
            and ledger.budget(previous) >= request.reservation
        ):
            return previous
        return most_budget(request)

    return choose


def choice_rule(policy: str, ledger: Ledger, seed: int, expected_rollouts: int | None) -> Choose:
    """The choice rule of ``policy`` (a canonical name of ``POLICIES``) over ``ledger``."""
    factories: dict[str, Callable[[], Choose]] = {
        "static": lambda: _static(ledger, expected_rollouts),
        "round_robin": lambda: _round_robin(ledger),
        "least_outstanding": lambda: _least_outstanding(ledger),
        "kv_aware": lambda: _most_budget(ledger),
        "power_of_two": lambda: _power_of_two(ledger, seed),
        "prefix_affinity": lambda: _prefix_affinity(ledger),
    }
    return factories[policy]()

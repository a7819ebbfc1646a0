"""Rollout dispatch: which inference engine serves the next rollout turn. Pure: no I/O, no clock.

``protocol`` holds what a caller sees (engine state, request, the ``Dispatcher`` protocol), ``ledger`` what
each engine holds and the indexes that find an engine fast, ``policies`` the choice rules, and
``dispatcher`` the queues in front of them and ``make_dispatcher``.

A rollout turn prefills its context and decodes up to the stage's max response tokens, so the most KV
cache it can ever hold is ``prompt_tokens + max_new_tokens`` (its *reservation*, as in rStar2-Agent,
arXiv 2508.20722). A caller may cap ``max_new_tokens`` below the response budget and continue a longer
answer in a new request (see ``orchestrator.sim.rollout_phase``): the reservation bounds what the engine
can be asked for either way. A dispatcher keeps one central queue, ordered by ``priority`` (higher first)
and then by submission, and a ledger per engine (reserved tokens, in-flight requests);
``assignments()`` places queued requests in that order, and ``finished`` /
``engine_lost`` release what a request held, whatever its ending, so no reservation can leak.

Policies (``POLICIES``):

- ``static`` — rollout ``r`` goes to engine ``r * n // expected_rollouts`` (a contiguous even split),
  else ``r % n``; an unhealthy home engine hands over to the next healthy one. No capacity check.
- ``round_robin`` — one global cursor over the healthy engines. No capacity check.
- ``least_outstanding`` — the healthy engine with the fewest in-flight requests (ties → lowest index).
- ``kv_aware`` — the healthy engine with the most KV budget left (``kv_total - reserved``, ties →
  lowest index), only if the reservation fits; otherwise the request waits in the queue. A request whose
  ``previous_engine`` is healthy waits in that engine's own queue instead (its prefix is cached there;
  anywhere else it is prefilled again, stalling that engine's decoding), unless, when it is submitted,
  another engine has room for it and a budget more than ``AFFINITY_SLACK_FRACTION`` of the previous
  engine's KV cache larger. Whatever an engine frees goes to its own queue first, then to the central one.
- ``power_of_two`` — two distinct healthy engines drawn with ``random.Random(seed)``; of those with room,
  the one with fewer in-flight requests. If neither has room but another engine has, the engine with
  the most budget takes it (a request waits only when no engine has room).
- ``prefix_affinity`` — the rollout's ``previous_engine`` when it is healthy and has room (its prefix
  cache is warm), else ``kv_aware``.

The KV-bounded policies (``kv_aware``, ``power_of_two``, ``prefix_affinity``) never reserve more than an
engine's ``kv_total_tokens``, and ``assignments()`` stops at the first queued request that fits no engine
(in each queue): head-of-line blocking, which keeps turns in order and makes a large request impossible to
starve.
"""

from orchestrator.core.dispatch.dispatcher import make_dispatcher
from orchestrator.core.dispatch.policies import AFFINITY_SLACK_FRACTION, KV_BOUNDED, POLICIES
from orchestrator.core.dispatch.protocol import Dispatcher, EngineState, Request

__all__ = [
    "AFFINITY_SLACK_FRACTION",
    "KV_BOUNDED",
    "POLICIES",
    "Dispatcher",
    "EngineState",
    "Request",
    "make_dispatcher",
]

"""``TrainerSession``: the three calls a training loop needs to take work from orch and hand results back.

    session = TrainerSession.from_env()
    for work in session.work():
        if work.kind == "step":
            trajectories = session.rollouts(problems)   # at this step's token and turn limits
            ...                                          # RoC, the learner, weight sync
        work.complete(outcome)                           # StepOutcome | seconds | FilterOutcome

``work()`` yields the controller's plans in the order it posts them, one at a time, each as a
``WorkItem``; a plan whose result is already recorded (this attempt, same ``work_key``) is not yielded
again, so a trainer restarted mid-run picks up where it stopped, and ``complete`` on work already done
returns the recorded result instead of replacing it. Messages are ``orchestrator.worker.protocol``'s:
a plan of another protocol version is refused with ``ProtocolVersionError``, an invalid one with
``ProtocolError``.

Environment of ``from_env``: ``ORCH_MAILBOX`` picks the transport (``transport.py``): ``directory``
(the default) reads the mailbox directory in ``ORCH_MAILBOX_DIR``; ``configmap`` (set by orch on the
trainer pods it creates on Kubernetes) reads the run's ConfigMaps through the API
(``orchestrator.kube.trainer_transport``), for the run ``ORCH_RUN_ID`` and attempt ``ORCH_ATTEMPT`` in
namespace ``ORCH_NAMESPACE``, with in-cluster credentials (else the kubeconfig in ``KUBECONFIG``).
``ORCH_ENGINE_URLS``: the run's engines' base URLs, comma-separated; needed by ``rollouts`` only.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.core.ports import ENGINE_URLS_ENV
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.spec import RunSpec
from orchestrator.spec.dataset import Problem
from orchestrator.worker.protocol import (
    CheckpointPlanMessage,
    CheckpointResultMessage,
    FilterPlanMessage,
    FilterResultMessage,
    StepPlanMessage,
    StepResultMessage,
    dump_message,
    load_plan,
    load_result,
    work_key,
)
from orchestrator.worker.transport import (
    CONFIGMAP_MAILBOX,
    DIRECTORY_MAILBOX,
    MAILBOX_ENV,
    MAILBOX_KIND_ENV,
    DirectoryTransport,
    Transport,
)

__all__ = ["ENGINES_ENV", "Outcome", "TrainerSession", "WorkItem"]

ENGINES_ENV = ENGINE_URLS_ENV

PlanMessage = StepPlanMessage | CheckpointPlanMessage | FilterPlanMessage
ResultMessage = StepResultMessage | CheckpointResultMessage | FilterResultMessage
# What ``complete`` takes: the plan's outcome value (a checkpoint's is its seconds), or a result message.
Outcome = StepOutcome | FilterOutcome | float | ResultMessage

_RESULT_OF: dict[str, type[ResultMessage]] = {
    "step": StepResultMessage,
    "checkpoint": CheckpointResultMessage,
    "filter": FilterResultMessage,
}


@dataclass
class WorkItem:
    """One plan to do, and the way to report it done."""

    message: PlanMessage
    session: TrainerSession

    @property
    def kind(self) -> str:
        """``step``, ``checkpoint`` or ``filter``."""
        return self.message.kind

    @property
    def plan(self) -> StepPlan | CheckpointPlan | FilterPlan:
        """The plan as the controller's plain value."""
        return self.message.to_plan()

    @property
    def key(self) -> str:
        """Where its result is stored (``step-<n>``, ``checkpoint-<n>``, ``filter-<stage>``)."""
        return work_key(self.plan)

    def result(self) -> ResultMessage | None:
        """The result recorded for this work, if any."""
        return self.session.result(self.message)

    def complete(self, outcome: Outcome) -> ResultMessage:
        """Record ``outcome`` as this work's result; work already done keeps (and returns) its result."""
        recorded = self.result()
        if recorded is not None:
            return recorded
        result = _result_message(self.kind, outcome)
        self.session.transport.put_result(self.message.attempt, self.key, dump_message(result))
        return result


def _result_message(kind: str, outcome: Outcome) -> ResultMessage:
    expected = _RESULT_OF[kind]
    if isinstance(outcome, expected):
        return outcome
    if kind == "step" and isinstance(outcome, StepOutcome):
        return StepResultMessage.from_outcome(outcome)
    if kind == "filter" and isinstance(outcome, FilterOutcome):
        return FilterResultMessage.from_outcome(outcome)
    if kind == "checkpoint" and isinstance(outcome, int | float) and not isinstance(outcome, bool):
        return CheckpointResultMessage(seconds=float(outcome))
    wanted = {"step": "a StepOutcome", "checkpoint": "its seconds", "filter": "a FilterOutcome"}[kind]
    raise TypeError(f"a {kind} plan is completed with {wanted}, not {type(outcome).__name__}")


def _transport_from_env(env: Mapping[str, str]) -> Transport:
    kind = env.get(MAILBOX_KIND_ENV, "").strip() or DIRECTORY_MAILBOX
    if kind == CONFIGMAP_MAILBOX:
        # Imported here, not at the top: only a trainer on Kubernetes loads the kubernetes client.
        from orchestrator.kube.trainer_transport import ConfigMapTransport

        return ConfigMapTransport.from_env(env)
    if kind != DIRECTORY_MAILBOX:
        raise OrchError(
            f"{MAILBOX_KIND_ENV}={kind!r} names no transport: use {DIRECTORY_MAILBOX} or {CONFIGMAP_MAILBOX}"
        )
    directory = env.get(MAILBOX_ENV, "").strip()
    if not directory:
        raise OrchError(
            f"{MAILBOX_ENV} is not set: a trainer takes its work from the mailbox directory it names "
            "(orch sets it for the trainers it launches)"
        )
    return DirectoryTransport(directory)


class TrainerSession:
    """A trainer's connection to its run: plans in, results out, rollouts over the run's engines."""

    def __init__(self, transport: Transport, *, engine_urls: Sequence[str] = ()) -> None:
        self.transport = transport
        self.engine_urls = tuple(engine_urls)
        self.current: WorkItem | None = None  # the work last handed out by ``work()``
        self._spec: RunSpec | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerSession:
        """The session the environment describes (see the module docstring)."""
        env = os.environ if environ is None else environ
        urls = [url.strip() for url in env.get(ENGINES_ENV, "").split(",") if url.strip()]
        return cls(_transport_from_env(env), engine_urls=urls)

    @property
    def spec(self) -> RunSpec:
        """The run spec the controller posted."""
        if self._spec is None:
            text = self.transport.spec()
            if text is None:
                raise OrchError(f"{self.transport!r} holds no run spec (spec.json) yet")
            self._spec = RunSpec.model_validate(json.loads(text))
        return self._spec

    def result(self, message: PlanMessage) -> ResultMessage | None:
        """The result recorded for ``message``'s work in its attempt, or None."""
        text = self.transport.result(message.attempt, work_key(message.to_plan()))
        return None if text is None else load_result(text, _RESULT_OF[message.kind])

    def work(self, *, poll_s: float = 0.2, idle_timeout_s: float | None = None) -> Iterator[WorkItem]:
        """The plans to do, in order, until the controller closes the mailbox (or nothing new comes for
        ``idle_timeout_s``). Each plan is yielded once; plans already done are skipped."""
        seen: str | None = None
        idle_since = time.monotonic()
        while True:
            text = self.transport.plan()
            if text is not None and text != seen:
                seen, idle_since = text, time.monotonic()
                message = load_plan(text)
                if self.result(message) is None:
                    self.current = WorkItem(message, self)
                    yield self.current
                continue
            if self.transport.closed():
                return
            if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                return
            time.sleep(poll_s)

    def rollouts(
        self,
        problems: Sequence[Problem],
        *,
        samples: int | None = None,
        max_response_tokens: int | None = None,
        max_turns: int | None = None,
        seed: int | None = None,
        **options: Any,
    ) -> list[Any]:
        """Scored multi-turn rollouts of ``problems`` (``orchestrator.worker.rollouts``): ``samples`` each
        (default: the spec's ``samples_per_prompt``), at the current work's token and turn limits (a step
        plan's, else the spec's current stage's) unless given."""
        from orchestrator.worker.rollouts import run_rollouts  # the HTTP and sandbox stack, only if used

        if not self.engine_urls:
            raise OrchError(
                f"no engines to roll out on: set {ENGINES_ENV} (their base URLs, comma-separated)"
            )
        limits = self._limits()
        return asyncio.run(
            run_rollouts(
                self.engine_urls,
                problems,
                self.spec,
                max_response_tokens=max_response_tokens or limits[0],
                max_turns=max_turns or limits[1],
                samples=samples or self.spec.rollout.samples_per_prompt,
                seed=self.spec.seed if seed is None else seed,
                **options,
            )
        )

    def _limits(self) -> tuple[int, int]:
        """(max_response_tokens, max_turns) of the work at hand."""
        message = self.current.message if self.current is not None else None
        if isinstance(message, StepPlanMessage):
            return message.max_response_tokens, message.max_turns
        stage = self.spec.curriculum[message.stage_index if isinstance(message, FilterPlanMessage) else 0]
        return stage.max_response_tokens, stage.max_turns

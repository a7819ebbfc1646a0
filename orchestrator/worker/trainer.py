"""``orch worker``: the reference trainer built on the SDK (rollouts → GRPO-RoC → learner → weight sync).

For each plan of ``TrainerSession.work()``:

- **step**: the step's prompts (``step_problems``), ``OVERSAMPLE`` × ``samples_per_prompt`` rollouts of
  each, infrastructure-failed trajectories masked out (counted, never scored), stale ones (generated with
  weights older than ``rollout.max_staleness`` allows, ``staleness.py``) regenerated once on re-synced
  engines and dropped if still stale (counted, logged, never trained on), GRPO-RoC per problem down to
  ``samples_per_prompt``, the batch written to ``<work_dir>/step-<n>/batch.jsonl`` (one line a kept
  trajectory: prompt, response, reward, advantage, tokens), then ``trainer.learner_command`` writes the
  next weights to ``<work_dir>/step-<n>/weights`` and every engine loads them (``weights.py``); a
  ``checkpoint_after`` step then checkpoints. Without a ``learner_command`` the step only rolls out.
  Engines colocated with this trainer (``ORCH_COLOCATED_ENGINES``) sleep while the learner runs.
- **checkpoint**: the current weights directory is copied into the plan's checkpoint.
- **filter**: ``samples`` rollouts of every still-active problem; per problem the correct ones.

**Problem ids.** The protocol counts problems by ``int`` (``dropped_problems``, ``FilterOutcome.correct``)
while a dataset line's ``id`` is a string: the reference trainer's int id of a problem is its index in the
dataset file (0-based, blank lines skipped), the order ``orchestrator.spec.dataset.read_problems`` keeps.

Weights: the engines start on ``rollout.engine.model`` (or a resumed attempt's checkpoint, from
``ORCH_RESUME_FROM``); when that is a local directory it is the first learner's ``ORCH_WEIGHTS_IN``.
The GPU figures of a step are estimates from wall time (busy: the engines' GPUs while rolling out, the
trainer's while learning; held: all of them for the whole step).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.errors import OrchError
from orchestrator.spec.dataset import Problem, read_problems
from orchestrator.worker.roc import resample_on_correct
from orchestrator.worker.rollouts import Trajectory
from orchestrator.worker.session import TrainerSession
from orchestrator.worker.staleness import current_version, split_stale, stale_engines
from orchestrator.worker.weights import (
    COLOCATED_ENV,
    checkpoint_weights,
    colocated_urls,
    local_path,
    reload_engines,
    run_learner,
    save_checkpoint,
    sleep_engines,
    wake_engines,
)

__all__ = ["OVERSAMPLE", "WORK_DIR_ENV", "ReferenceTrainer", "StepReport", "batch_lines", "step_problems"]

log = logging.getLogger(__name__)

OVERSAMPLE = 2  # rollouts per kept trajectory: RoC draws samples_per_prompt out of twice as many
WORK_DIR_ENV = "ORCH_WORK_DIR"  # where step directories and weights go (default: <mailbox>/trainer)
RESUME_ENV = "ORCH_RESUME_FROM"


def step_problems(
    problems: Sequence[Problem], step: int, count: int, dropped: frozenset[int] = frozenset()
) -> list[tuple[int, Problem]]:
    """The ``count`` prompts of ``step`` (1-based) with their int ids: the active problems (not
    ``dropped``) taken in dataset order, ``count`` per step, wrapping around (deterministic)."""
    active = [(index, problem) for index, problem in enumerate(problems) if index not in dropped]
    if not active:
        raise OrchError("every problem of the dataset was dropped: no prompt left to train on")
    start = (step - 1) * count
    return [active[(start + offset) % len(active)] for offset in range(min(count, len(active)))]


def batch_lines(kept: Sequence[tuple[Trajectory, float]]) -> list[str]:
    """The batch JSONL's lines for kept (trajectory, advantage) pairs."""
    return [
        json.dumps(
            {
                "problem_id": t.problem_id,
                "sample": t.sample,
                "prompt": t.prompt,
                "response": t.response,
                "reward": t.reward,
                "advantage": advantage,
                "tokens": t.response_tokens,
                "prompt_tokens": t.prompt_tokens,
                "weights_versions": list(t.weights_versions),
            }
        )
        for t, advantage in kept
    ]


@dataclass
class StepReport:
    """What one step did, beyond its ``StepOutcome``: what was masked and kept, where the batch is."""

    outcome: StepOutcome
    infra_failed: int
    kept: int
    batch: Path
    weights: Path | None
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def stale_dropped(self) -> int:
        return self.outcome.stale_dropped

    @property
    def stale_regenerated(self) -> int:
        return self.outcome.stale_regenerated


class ReferenceTrainer:
    """The loop of ``orch worker`` over one session (see the module docstring)."""

    def __init__(
        self,
        session: TrainerSession,
        work_dir: Path,
        *,
        weights: Path | None = None,
        oversample: int = OVERSAMPLE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.session = session
        self.spec = session.spec
        self.work_dir = Path(work_dir)
        self.oversample = oversample
        self.env = dict(os.environ if env is None else env)
        self.resumed_from: Path | None = None  # the checkpoint weights, until the engines serve them
        self.weights = weights if weights is not None else self._initial_weights()
        if self.spec.dataset.uri is None:
            raise OrchError("dataset.uri is not set: the reference trainer reads its prompts from it")
        self.problems = read_problems(self.spec.dataset.uri)
        self.reports: list[StepReport] = []
        # The newest weights version the engines have reported (see staleness.py); None: none said.
        self.weights_version: int | None = None
        self.colocated = colocated_urls(self.env.get(COLOCATED_ENV, ""), session.engine_urls)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReferenceTrainer:
        """``TrainerSession.from_env``'s trainer, in ``$ORCH_WORK_DIR`` (or ``<mailbox>/trainer``)."""
        env = os.environ if environ is None else environ
        session = TrainerSession.from_env(env)
        mailbox = getattr(session.transport, "directory", Path.cwd())
        work_dir = env.get(WORK_DIR_ENV) or str(Path(mailbox) / "trainer")
        return cls(session, Path(work_dir), env=env)

    def _initial_weights(self) -> Path | None:
        resumed = checkpoint_weights(self.env.get(RESUME_ENV, ""))
        if resumed is not None:
            log.info("resuming from the weights in %s", resumed)
            self.resumed_from = resumed
            return resumed
        model = self.spec.rollout.engine.model or self.spec.model.name
        try:
            path = local_path(model)
        except OrchError:
            return None
        return path if path.is_dir() else None

    def run(self, *, idle_timeout_s: float | None = None, poll_s: float = 0.2) -> None:
        """Do every plan until the mailbox closes (or stays idle ``idle_timeout_s``)."""
        for work in self.session.work(poll_s=poll_s, idle_timeout_s=idle_timeout_s):
            plan = work.plan
            if isinstance(plan, StepPlan):
                work.complete(self.step(plan).outcome)
            elif isinstance(plan, CheckpointPlan):
                work.complete(self.checkpoint(plan.checkpoint_uri))
            else:
                work.complete(self.filter(plan))

    # ---- plans ------------------------------------------------------------------------------------

    def _serve_resumed_weights(self) -> None:
        """A resumed attempt's engines were launched on the spec's model: they load the checkpoint's
        weights before the first rollout, so nothing is generated with the weights of step 0."""
        if self.resumed_from is not None and self.session.engine_urls:
            reload_engines(self.session.engine_urls, self.spec.rollout.engine.kind, self.resumed_from)
        self.resumed_from = None

    def step(self, plan: StepPlan) -> StepReport:
        """Roll out, score, learn, sync: one step."""
        spec = self.spec
        self._serve_resumed_weights()
        chosen = step_problems(self.problems, plan.step, spec.rollout.prompts_per_step, plan.dropped_problems)
        started = time.monotonic()
        limits = {"max_response_tokens": plan.max_response_tokens, "max_turns": plan.max_turns}
        seed = _step_seed(spec.seed, plan.step)
        trajectories: list[Trajectory] = self.session.rollouts(
            [problem for _, problem in chosen],
            samples=spec.rollout.samples_per_prompt * self.oversample,
            seed=seed,
            **limits,
        )
        trajectories, regenerated, dropped = self._on_policy(trajectories, plan.step, seed, limits)
        rollout_seconds = time.monotonic() - started
        scored = [t for t in trajectories if not t.infra_failed]
        reasons: dict[str, int] = {}
        for t in trajectories:
            if t.infra_reason is not None:
                reasons[t.infra_reason] = reasons.get(t.infra_reason, 0) + 1
        if reasons:
            log.warning(
                "step %d: %d rollouts masked (infrastructure): %s", plan.step, sum(reasons.values()), reasons
            )
        kept = self._roc(scored, plan.step)
        step_dir = self.work_dir / f"step-{plan.step:06d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        batch = step_dir / "batch.jsonl"
        batch.write_text("".join(line + "\n" for line in batch_lines(kept)))

        started = time.monotonic()
        if spec.trainer.learner_command:
            new = step_dir / "weights"
            kind = spec.rollout.engine.kind
            if self.colocated:
                log.info(
                    "step %d: %d colocated engine(s) sleep while the learner runs",
                    plan.step,
                    len(self.colocated),
                )
            sleep_engines(self.colocated, kind)
            try:
                run_learner(
                    spec.trainer.learner_command, batch, self.weights, new, env=self.env, cwd=step_dir
                )
            finally:
                wake_engines(self.colocated, kind)
            reload_engines(self.session.engine_urls, kind, new)
            self.weights = new
        train_seconds = time.monotonic() - started
        checkpoint_seconds = self.checkpoint(plan.checkpoint_uri) if plan.checkpoint_after else 0.0

        engine_gpus, trainer_gpus = spec.rollout.gpus, spec.trainer.gpus
        wall = rollout_seconds + train_seconds + checkpoint_seconds
        outcome = StepOutcome(
            rollouts=len(scored),
            generated_tokens=sum(t.response_tokens for t in trajectories),
            rollout_seconds=rollout_seconds,
            train_seconds=train_seconds,
            checkpoint_seconds=checkpoint_seconds,
            preemptions=0,
            correct=sum(t.correct for t in scored),
            gpu_busy_seconds=rollout_seconds * engine_gpus + train_seconds * trainer_gpus,
            gpu_held_seconds=wall * (engine_gpus + trainer_gpus),
            turns=sum(t.turns for t in scored),
            tool_calls=sum(t.tool_calls for t in scored),
            tool_errors=sum(t.tool_errors for t in scored),
            reward_sum=sum(t.reward for t in scored),
            infra_masked=len(trajectories) - len(scored),
            stale_dropped=dropped,
            stale_regenerated=regenerated,
            weights_version=current_version(None, scored),
        )
        report = StepReport(outcome, len(trajectories) - len(scored), len(kept), batch, self.weights, reasons)
        (step_dir / "report.json").write_text(
            json.dumps(
                {
                    "step": plan.step,
                    "problems": [index for index, _ in chosen],
                    "rollouts": len(trajectories),
                    "infra_failed": report.infra_failed,
                    "infra_reasons": reasons,
                    "kept": report.kept,
                    "correct": outcome.correct,
                    "stale_regenerated": regenerated,
                    "stale_dropped": dropped,
                    "weights_version": outcome.weights_version,
                    "weights": None if self.weights is None else str(self.weights),
                },
                indent=2,
            )
        )
        self.reports.append(report)
        return report

    def checkpoint(self, checkpoint_uri: str) -> float:
        """Copy the current weights into the checkpoint; the seconds it took."""
        started = time.monotonic()
        where = save_checkpoint(self.weights, checkpoint_uri)
        log.info("checkpoint %s: weights %s", checkpoint_uri, where or "(none known: nothing copied)")
        return time.monotonic() - started

    def filter(self, plan: FilterPlan) -> FilterOutcome:
        """``plan.samples`` rollouts of every active problem; per int id, how many were correct
        (infrastructure failures count as not sampled, not as wrong)."""
        self._serve_resumed_weights()
        active = [(i, p) for i, p in enumerate(self.problems) if i not in plan.dropped_problems]
        started = time.monotonic()
        trajectories: list[Trajectory] = self.session.rollouts(
            [problem for _, problem in active],
            samples=plan.samples,
            seed=_step_seed(self.spec.seed, -plan.stage_index),
        )
        seconds = time.monotonic() - started
        index_of = {problem.id: index for index, problem in active}
        correct = {index: 0 for index, _ in active}
        for t in trajectories:
            if t.correct and not t.infra_failed:
                correct[index_of[t.problem_id]] += 1
        gpus = self.spec.rollout.gpus
        return FilterOutcome(correct, seconds, seconds * gpus, seconds * (gpus + self.spec.trainer.gpus))

    # ---- helpers ----------------------------------------------------------------------------------

    def _on_policy(
        self, trajectories: Sequence[Trajectory], step: int, seed: int, limits: Mapping[str, int]
    ) -> tuple[list[Trajectory], int, int]:
        """The trajectories with the stale ones (``staleness.py``) regenerated once on re-synced engines,
        those still stale left out: (trajectories, regenerated, dropped). Infrastructure failures are
        masked later, not regenerated here."""
        limit = self.spec.rollout.max_staleness
        self.weights_version = current_version(self.weights_version, trajectories)
        usable = [t for t in trajectories if not t.infra_failed]
        stale = split_stale(usable, self.weights_version, limit).stale
        if not stale:
            return list(trajectories), 0, 0
        current = self.weights_version
        engines = stale_engines(stale, current, limit)
        if self.weights is not None:  # engines that serve older weights load the trainer's again
            urls = [self.session.engine_urls[i] for i in engines if i < len(self.session.engine_urls)]
            reload_engines(urls, self.spec.rollout.engine.kind, self.weights)
        by_id = {problem.id: problem for problem in self.problems}
        again: list[Trajectory] = self.session.rollouts(
            [], pairs=[(by_id[t.problem_id], t.sample) for t in stale], seed=seed, **limits
        )
        self.weights_version = current_version(self.weights_version, again)
        still = split_stale([t for t in again if not t.infra_failed], self.weights_version, limit).stale
        dropped_keys = {(t.problem_id, t.sample) for t in still}
        replaced = {
            (t.problem_id, t.sample): t for t in again if (t.problem_id, t.sample) not in dropped_keys
        }
        log.warning(
            "step %d: %d trajectories generated with weights older than version %s - max_staleness %d "
            "(engines %s, %s): %d regenerated, %d still stale and dropped",
            step, len(stale), current, limit, engines,
            "re-synced" if self.weights is not None else "not re-synced: no local weights known",
            len(stale), len(still),
        )  # fmt: skip
        stale_keys = {(t.problem_id, t.sample) for t in stale}
        kept = [
            replaced[(t.problem_id, t.sample)] if (t.problem_id, t.sample) in stale_keys else t
            for t in trajectories
            if (t.problem_id, t.sample) not in stale_keys or (t.problem_id, t.sample) in replaced
        ]
        return kept, len(stale), len(still)

    def _roc(self, scored: Sequence[Trajectory], step: int) -> list[tuple[Trajectory, float]]:
        """GRPO-RoC per problem group; (trajectory, advantage) of those kept."""
        groups: dict[str, list[Trajectory]] = {}
        for t in scored:
            groups.setdefault(t.problem_id, []).append(t)
        rng = random.Random(_step_seed(self.spec.seed, step))
        kept: list[tuple[Trajectory, float]] = []
        for group in groups.values():
            chosen = resample_on_correct(group, self.spec.rollout.samples_per_prompt, rng)
            kept.extend(zip(chosen.kept, chosen.advantages, strict=True))
        return kept


def _step_seed(seed: int, step: int) -> int:
    return zlib.crc32(f"{seed}\x1fstep\x1f{step}".encode()) & 0x7FFFFFFF


def main(environ: Mapping[str, str] | None = None, **options: Any) -> None:
    """Run the reference trainer the environment describes (``orch worker``)."""
    ReferenceTrainer.from_env(environ).run(**options)

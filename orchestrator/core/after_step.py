"""The after-step rule: what a finished step leads to. The one home of when a stage ends after a step
(and so which steps end with a checkpoint), when the run advances early, and when it suspends."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.core.commands import SuspendReason
from orchestrator.core.curriculum import advance_rule_met, checkpoint_due, stage_ends_at, steps_in_stage
from orchestrator.records import Run, Stage
from orchestrator.spec import AdvanceRuleSpec

__all__ = ["PLANNED_STEPS_DONE", "AfterStep", "after_step", "checkpoint_after"]

PLANNED_STEPS_DONE = "planned steps done"


@dataclass(frozen=True)
class AfterStep:
    """The verdict on one finished step; the default continues with the next step in the same stage."""

    end_stage: str | None = None  # end the stage after this step, for this reason
    last_stage: bool = False  # the stage that ends is the run's last: the run succeeds
    suspend: SuspendReason | None = None  # suspend at this step's checkpoint
    request_advance: str | None = None  # the advance rule is met but no checkpoint was saved: save one first


def checkpoint_after(stage: Stage, step: int, every_steps: int) -> bool:
    """Whether ``step`` ends with a checkpoint: every ``every_steps`` and at the step that ends ``stage``,
    so a stage never starts from lost work and a pending suspend finds one."""
    return checkpoint_due(step, every_steps, stage_ends_at(stage, step))


def after_step(
    run: Run,
    stage: Stage,
    stages: int,
    rule: AdvanceRuleSpec | None,
    *,
    step: int,
    checkpointed: bool,
    correct: int,
    rollouts: int,
) -> AfterStep:
    """What finishing ``step`` of ``stage`` (one of ``stages``) leads to, ``checkpointed`` or not.

    The planned steps done end the stage (a last stage ends the run, which then never suspends); a
    pending suspend (the idle policy's) happens at the first checkpoint; ``rule`` (the stage's
    ``advance_when``) ends the stage early, at a checkpoint, or asks for one first."""
    pending = SuspendReason.IDLE if run.suspend_requested else None
    if stage_ends_at(stage, step):
        last = stage.index + 1 >= stages
        return AfterStep(end_stage=PLANNED_STEPS_DONE, last_stage=last, suspend=None if last else pending)
    if pending is not None and checkpointed:
        return AfterStep(suspend=pending)
    if run.advance_requested or not advance_rule_met(rule, steps_in_stage(stage, step), correct, rollouts):
        return AfterStep()
    assert rule is not None
    reason = (
        f"solve rate {correct / rollouts:.2f} reached "
        f"advance_when.solve_rate_at_least {rule.solve_rate_at_least}"
    )
    return AfterStep(end_stage=reason) if checkpointed else AfterStep(request_advance=reason)

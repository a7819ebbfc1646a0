"""Curriculum rules: where a stage ends, when to checkpoint, which problems an entry filter drops."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from orchestrator.records import Stage
from orchestrator.spec import AdvanceRuleSpec

__all__ = [
    "advance_rule_met",
    "checkpoint_due",
    "last_checkpoint",
    "split_by_filter",
    "stage_ends_at",
    "steps_in_stage",
]


def steps_in_stage(stage: Stage, steps_done: int) -> int:
    """Steps the run has completed inside ``stage`` (which must have started)."""
    assert stage.start_after_step is not None, f"stage {stage.index} has not started"
    return steps_done - stage.start_after_step


def stage_ends_at(stage: Stage, step: int) -> bool:
    """Whether finishing ``step`` completes the stage's planned steps."""
    return stage.planned_steps is not None and steps_in_stage(stage, step) >= stage.planned_steps


def checkpoint_due(step: int, every_steps: int, ends_stage: bool) -> bool:
    """Checkpoint every N steps and at every stage boundary, so a stage never starts from lost work."""
    return step % every_steps == 0 or ends_stage


def split_by_filter(
    correct: Mapping[int, int], threshold: int, active: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Split ``active`` problems into (kept, dropped): dropped ones were solved ``threshold`` times."""
    kept = [problem for problem in active if correct.get(problem, 0) < threshold]
    dropped = [problem for problem in active if correct.get(problem, 0) >= threshold]
    return kept, dropped


def last_checkpoint(checkpoint_steps: Iterable[int], steps_done: int) -> int:
    """The step a restarted trainer resumes from: the newest checkpoint not past ``steps_done`` (0: none)."""
    return max((step for step in checkpoint_steps if step <= steps_done), default=0)


def advance_rule_met(rule: AdvanceRuleSpec | None, steps_in_stage: int, correct: int, rollouts: int) -> bool:
    """Whether a step solved enough of its rollouts, late enough in the stage, to end the stage early."""
    if rule is None or rollouts == 0 or steps_in_stage < rule.min_steps:
        return False
    return correct / rollouts >= rule.solve_rate_at_least

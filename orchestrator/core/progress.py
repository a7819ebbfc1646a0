"""How far a run has got, as every reader outside orch sees it.

``orch list``/``status`` and a TrainingRun's ``.status`` show these fields of one projection, so a stage or a
step never reads differently in two places."""

from __future__ import annotations

from typing import Any

from orchestrator.records import Run

__all__ = ["run_progress"]


def run_progress(run: Run) -> dict[str, Any]:
    """The run's phase, its stage (1-based, as people count), steps done, attempt and last message."""
    return {
        "phase": run.phase.value,
        "stage": run.stage_index + 1,
        "step": run.steps_done,
        "attempt": run.attempt,
        "message": run.message,
    }

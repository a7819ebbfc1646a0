"""When a run that keeps failing is given up: pure decisions over the counters SQL keeps for it.

A failure is an exception raised by the run's own work (its snapshot, decision, executor or backend
calls) or a gang failure. Failures count **in a row at the same step**, the step the run was working
towards (``steps_done + 1``) when it failed:

- a failure at a step no further than the previous failure's adds one (a gang that resumes from its
  checkpoint, redoes step 10 and fails at step 11 again counts again);
- a failure further on starts again at one, and a completed step beyond the failing one clears the count;
- at ``scheduling.max_attempts`` failures the run is ``Failed`` with the reason and its workloads are
  released; ``orch resume`` clears the count.

Errors of the environment (database, API server, network) never count: the controller retries them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.core.lifecycle import ALLOWED, check_transition
from orchestrator.records import NewEvent, Phase, Run, RunPatch, Workload, WorkloadStatus
from orchestrator.spec import SchedulingSpec

__all__ = [
    "FailureCount",
    "allowed_attempts",
    "cleared_by_step",
    "count_failure",
    "give_up",
    "one_line",
    "work_failed",
]

REASON_LIMIT = 400  # characters of an error kept in the run's message and events


@dataclass(frozen=True)
class FailureCount:
    """Failures in a row, and the furthest step they happened at."""

    failures: int
    step: int

    def fields(self, reason: str) -> dict[str, object]:
        return {"failures": self.failures, "failed_step": self.step, "last_error": reason}


def one_line(text: str, limit: int = REASON_LIMIT) -> str:
    """Whitespace collapsed, cut to ``limit`` characters: fit for a run's message and an event."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def allowed_attempts(spec: Mapping[str, Any]) -> int:
    """``scheduling.max_attempts`` of a stored spec (the default if the spec no longer parses)."""
    scheduling = spec.get("scheduling") or {}
    value = scheduling.get("max_attempts") if isinstance(scheduling, Mapping) else None
    return value if isinstance(value, int) and value >= 1 else SchedulingSpec().max_attempts


def count_failure(run: Run) -> FailureCount:
    """The count after one more failure of ``run``."""
    at = run.steps_done + 1
    if run.failures and at <= run.failed_step:
        return FailureCount(run.failures + 1, run.failed_step)
    return FailureCount(1, at)


def cleared_by_step(run: Run, step: int) -> dict[str, object]:
    """Run fields for a completed ``step``: a step beyond the failing one clears the count."""
    return {"failures": 0} if run.failures and step > run.failed_step else {}


def give_up(
    run: Run, count: FailureCount, reason: str, max_attempts: int
) -> tuple[dict[str, object], NewEvent]:
    """The run fields and event that make ``run`` Failed for ``reason``."""
    check_transition(run.phase, Phase.FAILED)
    message = (
        f"{reason} ({count.failures} failure(s) in a row at step {count.step}, scheduling.max_attempts "
        f"is {max_attempts}); `orch resume {run.id}` tries again"
    )
    data = {"step": count.step, "failures": count.failures, "reason": reason}
    return {"phase": Phase.FAILED.value, "message": message, **count.fields(reason)}, NewEvent(
        "Failed", message, data
    )


def _released(workloads: Sequence[Workload]) -> tuple[Workload, ...]:
    return tuple(
        replace(w, status=WorkloadStatus.DELETED, reason="run failed") for w in workloads if w.status.live
    )


def work_failed(run: Run, workloads: Sequence[Workload], reason: str, max_attempts: int) -> RunPatch | None:
    """The patch for one exception raised by ``run``'s work: counted, and past the budget, Failed.

    A run that cannot be Failed from its phase (Suspended) only records a reason it has not recorded yet.
    """
    if Phase.FAILED not in ALLOWED[run.phase]:
        if reason == run.last_error:
            return None
        return RunPatch(
            run.id,
            run.version,
            run={"last_error": reason},
            events=(NewEvent("ReconcileError", reason, {"phase": run.phase.value}),),
        )
    count = count_failure(run)
    event = NewEvent(
        "ReconcileError",
        f"step {count.step}: {reason} (failure {count.failures} of {max_attempts})",
        {"step": count.step, "failures": count.failures, "max_attempts": max_attempts},
    )
    if count.failures < max_attempts:
        message = f"{reason}; retrying (failure {count.failures} of {max_attempts})"
        return RunPatch(
            run.id, run.version, run={**count.fields(reason), "message": message}, events=(event,)
        )
    fields, failed = give_up(run, count, reason, max_attempts)
    return RunPatch(run.id, run.version, run=fields, workloads=_released(workloads), events=(event, failed))

"""The run lifecycle as data plus one pure check.

    Pending ─▶ Admitted ─▶ Running(stage k) ─▶ Succeeded
       │          │          │   ▲
       │          │          ▼   │
       │          │       Resuming ◀── Suspended
       └──────────┴─────────┴─▶ Failed | Cancelled

A failed gang member sends a run from Running to Resuming (new attempt from the last
checkpoint); ``orch resume`` sends a Suspended or Failed run to Resuming.
"""

from __future__ import annotations

from orchestrator.errors import IllegalTransition
from orchestrator.records import Phase

__all__ = ["ALLOWED", "check_transition"]

P = Phase
ALLOWED: dict[Phase, frozenset[Phase]] = {
    P.PENDING: frozenset({P.ADMITTED, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.ADMITTED: frozenset({P.RUNNING, P.RESUMING, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.RUNNING: frozenset({P.RESUMING, P.SUSPENDED, P.SUCCEEDED, P.FAILED, P.CANCELLED}),
    P.RESUMING: frozenset({P.RUNNING, P.SUSPENDED, P.FAILED, P.CANCELLED}),
    P.SUSPENDED: frozenset({P.RESUMING, P.CANCELLED}),
    P.FAILED: frozenset({P.RESUMING}),
    P.SUCCEEDED: frozenset(),
    P.CANCELLED: frozenset(),
}


def check_transition(current: Phase, target: Phase) -> Phase:
    """Return ``target`` if the lifecycle allows ``current → target``, else raise naming both."""
    if target not in ALLOWED[current]:
        options = ", ".join(sorted(phase.value for phase in ALLOWED[current])) or "none: it is final"
        raise IllegalTransition(
            f"illegal transition {current.value} → {target.value}; "
            f"from {current.value} a run may go to {options}"
        )
    return target

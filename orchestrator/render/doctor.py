"""``orch doctor``'s output: one line per check for people, one object per check for machines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.records import Check, CheckOutcome

__all__ = ["check_line", "check_rows"]

MARKS = {CheckOutcome.PASS: "ok  ", CheckOutcome.FAIL: "FAIL", CheckOutcome.SKIP: "skip"}


def check_line(check: Check) -> str:
    """``FAIL nodes: no node carries the label orch.dev/pool; fix: kubectl label node ...``"""
    fix = f"; fix: {check.fix}" if check.fix and check.outcome is CheckOutcome.FAIL else ""
    return f"{MARKS[check.outcome]} {check.name}: {check.detail}{fix}"


def check_rows(checks: Sequence[Check]) -> list[dict[str, Any]]:
    """The checks as plain data (``-o json|yaml``)."""
    return [{"check": c.name, "outcome": str(c.outcome), "detail": c.detail, "fix": c.fix} for c in checks]

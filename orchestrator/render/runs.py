"""Runs for people and machines: ``orch list``, ``status``, ``events`` and ``stage`` as tables and plain data.

Pure: the caller passes ``now``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table

from orchestrator.records import Event, Run, Step
from orchestrator.render.text import (
    controller_cell,
    engines_line,
    figures_line,
    hours_by_role,
    iso_time,
    lease_holder,
    local_time,
    step_list,
)
from orchestrator.service import RunReport

__all__ = [
    "event_row",
    "queue_lines",
    "report_record",
    "rows_table",
    "run_row",
    "runs_table",
    "step_figures",
    "summary_table",
]


def step_figures(step: Step) -> dict[str, Any]:
    """What one step's rollouts did, as plain data: the figures the engines and the trainer reported."""
    return {
        "step": step.step,
        "rollouts": step.rollouts,
        "generated_tokens": step.generated_tokens,
        "turns": step.turns,
        "tool_calls": step.tool_calls,
        "tool_errors": step.tool_errors,
        "reward_mean": round(step.reward_mean, 4),
        "solve_rate": round(step.solve_rate, 4),
        "infra_masked": step.infra_masked,
        "stale_regenerated": step.stale_regenerated,
        "stale_dropped": step.stale_dropped,
        "weights_version": step.weights_version,
    }


def report_record(report: RunReport, now: float) -> dict[str, Any]:
    """Everything ``orch status`` shows as plain data for ``-o json|yaml``; ``controller`` is the lease
    holder at ``now``."""
    run = report.run
    progress = run.progress()
    return {
        "id": run.id,
        "name": run.name,
        "phase": progress["phase"],
        "stage": progress["stage"],
        "stage_name": report.stages[run.stage_index].name,
        "steps_done": progress["step"],
        "steps_planned": sum(s.planned_steps or 0 for s in report.stages),
        "attempt": progress["attempt"],
        "checkpoints": [c.step for c in report.checkpoints],
        "last_checkpoint": report.checkpoints[-1].uri if report.checkpoints else None,
        "stage_changes": report.stage_changes,
        "superseded_steps": report.superseded_steps,
        "gpu_busy_fraction": round(run.gpu_busy_fraction, 4),
        "idle_gpu_hours": round(sum(report.idle_gpu_seconds.values()) / 3600, 3),
        "idle_gpu_hours_by_role": {
            role: round(s / 3600, 3) for role, s in sorted(report.idle_gpu_seconds.items())
        },
        "utilization_history": [
            {"at": start, "busy_ratio": round(busy / held, 4) if held else None}
            for start, held, busy in report.utilization
        ],
        "simulated_seconds": round(run.sim_seconds, 1),
        "message": progress["message"],
        "queue": run.queue,
        "priority": run.priority,
        "suspend_reason": run.suspend_reason or None,
        "waiting": {
            "queue": report.wait.queue,
            "position": report.wait.position,
            "reason": report.wait.reason,
            # Seconds of the controller's clock: simulated seconds on the simulated pool.
            "waited_s": round(report.waited_s or 0.0, 1),
        }
        if report.wait
        else None,
        "preempted": {"by": report.preemption.by, "reason": report.preemption.reason}
        if report.preemption
        else None,
        "controller": lease_holder(run, now),
        "lease_owner": run.lease_owner,
        "lease_expires_at": iso_time(run.lease_expires_at) if run.lease_owner else None,
        "last_step_engines": [
            {"engine": index, **stats} for index, stats in enumerate(report.steps[-1].engines)
        ]
        if report.steps
        else [],
        "last_step_queue_peak": report.steps[-1].queue_peak if report.steps else 0,
        "last_step": step_figures(report.steps[-1]) if report.steps else None,
        "stages": [
            {
                "name": s.name,
                "max_response_tokens": s.max_response_tokens,
                "max_turns": s.max_turns,
                "planned_steps": s.planned_steps,
                "start_after_step": s.start_after_step,
                "end_step": s.end_step,
                "problems_in": s.problems_in,
                "problems_kept": s.problems_kept,
            }
            for s in report.stages
        ],
        "workloads": [
            {"name": w.name, "role": w.role, "node": w.node, "gpus": w.gpus, "status": w.status.value}
            for w in report.workloads
            if w.status.live
        ],
    }


def run_row(run: Run, now: float) -> dict[str, Any]:
    """A run as plain data for ``-o json|yaml``; ``controller`` is the lease holder at ``now``."""
    return {
        "id": run.id,
        **run.progress(),
        "queue": run.queue,
        "priority": run.priority,
        "gpu_busy_fraction": round(run.gpu_busy_fraction, 4),
        "controller": lease_holder(run, now),
        "lease_expires_at": iso_time(run.lease_expires_at) if run.lease_owner else None,
    }


def runs_table(runs: Sequence[Run], now: float, width: int) -> Table:
    """``orch list`` for people: the columns that fit 80 terminal columns, one line a run (the message is cut
    to the width left; ``orch status`` shows it whole)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    cells = [
        (
            run.id,
            run.phase.value,
            str(run.stage_index + 1),
            str(run.steps_done),
            f"{run.gpu_busy_fraction:.0%}",
            controller_cell(run, now),
        )
        for run in runs
    ]
    columns = (("id", "left"), ("phase", "left"), ("stage", "right"), ("step", "right"), ("busy", "right"))
    used = 0
    for position, (header, justify) in enumerate((*columns, ("controller", "left"))):
        column_width = max([len(header), *(len(row[position]) for row in cells)])
        used += column_width + 2  # rich pads every column by one space on each side
        table.add_column(header, justify=justify, no_wrap=True, min_width=column_width)  # type: ignore[arg-type]
    left = max(len("message"), width - used - 1)
    table.add_column("message", no_wrap=True, overflow="ellipsis", max_width=left)
    for run, row in zip(runs, cells, strict=True):
        table.add_row(*row, run.message or "-")
    if not runs:
        table.add_row("(none)", *[""] * 6)
    return table


# Columns a reader copies or greps: never cut to "quick…" on a narrow terminal or in a pipe.
WHOLE_COLUMNS = frozenset({"id", "name", "phase", "reason"})


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in rows[0] if rows else ["(none)"]:
        whole = column in WHOLE_COLUMNS
        width = max(len(column), *(len(str(row[column])) for row in rows)) if whole else None
        table.add_column(column.replace("_", " "), no_wrap=whole, min_width=width)
    for row in rows:
        table.add_row(*(str(value) if value is not None else "-" for value in row.values()))
    return table


def summary_table(summary: dict[str, Any], controller: str | None = None) -> Table:
    """``orch status`` for people: one labelled line each, readable at 80 columns, no raw dicts or lists."""
    table = Table(title=f"run {summary['id']}", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    hours = float(summary["simulated_seconds"]) / 3600
    engines = engines_line(summary["last_step_engines"], summary["last_step_queue_peak"])
    for label, value in (
        ("phase", summary["phase"]),
        ("steps", f"{summary['steps_done']} of {summary['steps_planned']}"),
        ("stage", f"{summary['stage']} ({summary['stage_name']})"),
        ("stage changes", summary["stage_changes"]),
        ("checkpoints", step_list(summary["checkpoints"])),
        ("attempts", summary["attempt"]),
        ("steps redone after failures", summary["superseded_steps"]),
        ("GPU busy fraction", f"{float(summary['gpu_busy_fraction']):.1%}"),
        ("idle GPU-hours", hours_by_role(summary["idle_gpu_hours"], summary["idle_gpu_hours_by_role"])),
        ("simulated time", f"{summary['simulated_seconds']}s ({hours:.2f} h)"),
        ("message", summary["message"] or "-"),
        ("last step", figures_line(summary.get("last_step"))),
        ("last step's engines", engines),
    ):
        table.add_row(label, str(value))
    for label, value in queue_lines(summary):
        table.add_row(label, value)
    if controller is not None:
        table.add_row("controller", controller)
    return table


def queue_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """``orch status``'s lines on the run's queue: which, its place in line and why it waits, who
    preempted it, why it is suspended."""
    lines: list[tuple[str, str]] = []
    if summary.get("queue"):
        lines.append(("queue", f"{summary['queue']} (priority {summary.get('priority', 0)})"))
    waiting = summary.get("waiting")
    if waiting:
        lines.append(
            (
                "waiting",
                f"#{waiting['position']} in line in queue {waiting['queue']} for {waiting['waited_s']:g} s: "
                f"{waiting['reason']}",
            )
        )
    preempted = summary.get("preempted")
    if preempted:
        lines.append(("preempted", f"preempted by {preempted['by']}: {preempted['reason']}"))
    if summary.get("phase") == "Suspended" and summary.get("suspend_reason"):
        lines.append(("suspended because", str(summary["suspend_reason"])))
    return lines


def event_row(event: Event, *, for_people: bool) -> dict[str, Any]:
    """An event; its time as ``2026-12-02 12:04:47`` (local) for people, ISO 8601 (UTC) for machines."""
    return {
        "id": event.id,
        "time": local_time(event.at) if for_people else iso_time(event.at),
        "reason": event.reason,
        "message": event.message,
    }

"""The one service layer every front end (``orch``, the HTTP API) calls: runs, the controller, the agent.

They take a ``Store`` (or what a process needs) and return records; ``orchestrator.render`` shows them."""

from __future__ import annotations

from orchestrator.service.agent import gpu_agent, scrape_once, serve_agent
from orchestrator.service.control import build_controller, run_controller
from orchestrator.service.doctor import DoctorReport, run_doctor
from orchestrator.service.embedded import run_to_completion, settled
from orchestrator.service.logs import RunLogs, run_logs
from orchestrator.service.queues import QueueRow, apply_queues, delete_queue, queue_report
from orchestrator.service.runs import (
    OtherRun,
    RunReport,
    advance_stage,
    cancel_run,
    events,
    gpu_readings,
    list_runs,
    other_runs,
    planned_steps,
    report,
    resume_run,
    submit,
    upgrade_database,
    validate,
)

__all__ = [
    "DoctorReport",
    "OtherRun",
    "QueueRow",
    "RunLogs",
    "RunReport",
    "advance_stage",
    "apply_queues",
    "build_controller",
    "cancel_run",
    "delete_queue",
    "events",
    "gpu_agent",
    "gpu_readings",
    "list_runs",
    "other_runs",
    "planned_steps",
    "queue_report",
    "report",
    "resume_run",
    "run_controller",
    "run_doctor",
    "run_logs",
    "run_to_completion",
    "scrape_once",
    "serve_agent",
    "settled",
    "submit",
    "upgrade_database",
    "validate",
]

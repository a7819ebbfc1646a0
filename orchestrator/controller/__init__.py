"""The controller: the imperative shell around ``orchestrator.core`` (``loop``), and its admission
pass over the whole cluster (``admission``)."""

from orchestrator.controller.loop import (
    DB_OUTAGE_SECONDS,
    Backoff,
    Controller,
    DatabaseOutage,
    PassReport,
    default_identity,
    nothing_to_drive,
    with_database,
)

__all__ = [
    "DB_OUTAGE_SECONDS",
    "Backoff",
    "Controller",
    "DatabaseOutage",
    "PassReport",
    "default_identity",
    "nothing_to_drive",
    "with_database",
]

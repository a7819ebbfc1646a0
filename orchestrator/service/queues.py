"""Queues: ``orch queues`` and its ``apply`` and ``delete``, one function over a ``Store`` each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from orchestrator.core.queue_report import QueueRow, queue_rows
from orchestrator.spec.files import load_queue_files
from orchestrator.state.store import Store

__all__ = ["QueueRow", "apply_queues", "delete_queue", "queue_report"]


def apply_queues(store: Store, paths: Sequence[str | Path]) -> dict[str, str]:
    """Validate every queue in ``paths`` first (a ``SpecError`` naming each problem, nothing written), then
    create or update them in one transaction; each name → created | updated | unchanged."""
    return store.apply_queues(load_queue_files(paths))


def delete_queue(store: Store, name: str) -> None:
    """Delete a queue no unfinished run names."""
    store.delete_queue(name)


def queue_report(store: Store) -> list[QueueRow]:
    """Per queue and pool: quota, GPUs used and borrowed, runs pending and admitted."""
    return queue_rows(store.queues(), store.list_runs(active_only=True))

"""``orch logs``: a run's member logs where the backend keeps them (Ray: its log files)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from orchestrator.backends import check_backend_name
from orchestrator.backends.ray.logs import LogLine, follow_lines, member_logs, read_lines
from orchestrator.backends.ray.paths import default_log_dir
from orchestrator.state.store import Store

__all__ = ["LogLine", "RunLogs", "run_logs"]

FINISHED_CHECK_S = 1.0  # how often --follow asks the database whether the run finished


@dataclass(frozen=True)
class RunLogs:
    """What ``orch logs`` shows: the lines (an iterator, endless while following a live run), whether
    more than one member is shown, or a note where the backend keeps no logs."""

    lines: Iterator[LogLine]
    several: bool = False
    note: str = ""


def run_logs(
    store: Store,
    ref: str,
    *,
    backend: str | None = None,
    role: str | None = None,
    index: int | None = None,
    attempt: int | None = None,
    tail: int | None = None,
    follow: bool = False,
    log_dir: str | None = None,
    poll_s: float = 0.2,
) -> RunLogs:
    """The log lines of run ``ref``'s members (``NotFound`` for an unknown run). Following ends once the
    run has finished and its logs are drained."""
    run = store.get_run(ref)
    backend = check_backend_name(backend)
    if backend == "sim":
        return RunLogs(iter(()), note=f"{run.id}: the simulated pool runs no processes and keeps no logs")
    if backend == "kube":
        pods = ", ".join(w.name for w in store.workloads(run.id)) or "none now"
        note = f"{run.id}: Kubernetes keeps the logs: use kubectl logs POD (this run's pods: {pods})"
        return RunLogs(iter(()), note=note)
    directory = log_dir or default_log_dir()
    logs = member_logs(directory, run.id, role=role, index=index, attempt=attempt)
    if not logs and not follow:
        return RunLogs(iter(()), note=f"{run.id}: no log files under {directory}/{run.id} for these members")
    if not follow:
        return RunLogs(iter(read_lines(logs, tail)), several=len(logs) > 1)
    chosen_attempt = attempt if attempt is not None else (logs[0].attempt if logs else None)
    return RunLogs(
        follow_lines(
            logs,
            tail=tail,
            stop=_finished(store, run.id),
            poll_s=poll_s,
            more_logs=lambda: member_logs(directory, run.id, role=role, index=index, attempt=chosen_attempt),
        ),
        several=len(logs) != 1,
    )


def _finished(store: Store, run_id: str) -> Callable[[], bool]:
    """Whether the run has finished, asked of the database at most every ``FINISHED_CHECK_S``."""
    last = [0.0, False]

    def finished() -> bool:
        if time.monotonic() - last[0] >= FINISHED_CHECK_S:
            last[:] = [time.monotonic(), store.get_run(run_id).phase.terminal]
        return bool(last[1])

    return finished

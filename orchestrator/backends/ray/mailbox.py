"""The trainer mailbox on Ray: one ``DirectoryTransport`` directory per run and attempt.

The controller posts the run spec and each plan into ``<root>/<run>/a<attempt>`` and reads the trainer's
result back (``orchestrator.worker.transport`` has the layout); the trainer member gets that directory as
``ORCH_MAILBOX_DIR``. The root is ``ORCH_RAY_MAILBOX_ROOT`` (default ``<tmp>/orch-mailbox``): a path the
controller and every trainer reach. On one box any local directory does; a Ray cluster of several nodes
needs it on a filesystem shared by all of them (NFS, a cluster volume).

The waits are those of the Kubernetes mailbox (``orchestrator.kube.mailbox``): a result already written
is returned (asking again is idempotent); a trainer member of the attempt that is not running raises
``ExecutionInterrupted``; otherwise the plan is posted, the result awaited for at most ``wait_s`` and,
if not there yet, ``WorkInProgress`` is raised so the controller's pass moves on and asks again later.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from orchestrator.backends.base import ExecutionInterrupted, WorkInProgress
from orchestrator.core.members import TRAINER
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.spec import RunSpec
from orchestrator.worker.protocol import (
    CheckpointResultMessage,
    FilterResultMessage,
    StepResultMessage,
    dump_message,
    load_result,
    plan_message,
    work_key,
)
from orchestrator.worker.transport import DirectoryTransport

__all__ = [
    "MAILBOX_ROOT_ENV",
    "RayExecutor",
    "close_mailbox",
    "default_mailbox_root",
    "mailbox_dir",
    "sweep_mailboxes",
]

MAILBOX_ROOT_ENV = "ORCH_RAY_MAILBOX_ROOT"

_Result = TypeVar("_Result", StepResultMessage, CheckpointResultMessage, FilterResultMessage)


def default_mailbox_root() -> str:
    """``ORCH_RAY_MAILBOX_ROOT``, else ``<tmp>/orch-mailbox``."""
    return os.environ.get(MAILBOX_ROOT_ENV) or str(Path(tempfile.gettempdir()) / "orch-mailbox")


def mailbox_dir(root: str | Path, run_id: str, attempt: int) -> Path:
    """The mailbox directory of one run's attempt."""
    return Path(root) / run_id / f"a{attempt}"


def close_mailbox(root: str | Path, run_id: str, attempt: int) -> bool:
    """Write the ``closed`` marker into an attempt's mailbox, if it has one: its trainer's ``work()``
    loop ends. Returns whether there was a mailbox to close."""
    directory = mailbox_dir(root, run_id, attempt)
    if not directory.is_dir():
        return False
    DirectoryTransport(directory).close()
    return True


def sweep_mailboxes(root: str | Path, finished_runs: Collection[str], live_runs: Collection[str]) -> int:
    """Close every attempt mailbox of the finished runs; remove a finished run's mailbox directory once
    none of its members lives (``live_runs``: runs with a member actor left). Returns how many run
    directories went. Logs live elsewhere (``paths.py``) and are kept."""
    removed = 0
    for run_id in finished_runs:
        run_dir = Path(root) / run_id
        if not run_dir.is_dir():
            continue
        for attempt_dir in run_dir.glob("a*"):
            if attempt_dir.is_dir() and attempt_dir.name[1:].isdigit():
                DirectoryTransport(attempt_dir).close()
        if run_id not in live_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
            removed += 1
    return removed


class RayExecutor:
    """``TrainingExecutor`` over the directory mailbox of each run's attempt (see the module docstring).

    ``observe(run_id)`` lists the run's members as the cluster sees them (``RayCluster.list_workloads``).
    """

    def __init__(
        self,
        observe: Callable[[str], Sequence[ObservedWorkload]],
        *,
        root: str | Path | None = None,
        wait_s: float = 1.0,
        poll_s: float = 0.05,
    ) -> None:
        self.observe = observe
        self.root = Path(root or default_mailbox_root())
        self.wait_s = wait_s
        self.poll_s = poll_s

    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        return self._exchange(spec, plan, StepResultMessage).to_outcome()

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        return self._exchange(spec, plan, CheckpointResultMessage).to_outcome()

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        return self._exchange(spec, plan, FilterResultMessage).to_outcome()

    def mailbox(self, run_id: str, attempt: int) -> DirectoryTransport:
        """The controller's side of one attempt's mailbox."""
        return DirectoryTransport(mailbox_dir(self.root, run_id, attempt))

    def _exchange(
        self, spec: RunSpec, plan: StepPlan | CheckpointPlan | FilterPlan, expected: type[_Result]
    ) -> _Result:
        run_id, attempt, key = plan.run_id, plan.attempt, work_key(plan)
        mailbox = self.mailbox(run_id, attempt)
        text = mailbox.result(attempt, key)
        if text is not None:
            return load_result(text, expected)
        self._require_trainers(run_id, attempt)
        spec_text = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
        if mailbox.spec() != spec_text:
            mailbox.post_spec(spec_text)
        mailbox.post_plan(dump_message(plan_message(plan)))
        deadline = time.monotonic() + self.wait_s
        while True:
            text = mailbox.result(attempt, key)
            if text is not None:
                return load_result(text, expected)
            if time.monotonic() >= deadline:
                raise WorkInProgress(f"run {run_id}: attempt {attempt} is working on {key}")
            time.sleep(self.poll_s)

    def _require_trainers(self, run_id: str, attempt: int) -> None:
        suffix = f"-a{attempt}"
        for member in self.observe(run_id):
            if f"-{TRAINER}-" in member.name and member.name.endswith(suffix) and member.phase != "Running":
                raise ExecutionInterrupted(
                    f"run {run_id}: trainer {member.name} is {member.phase} {member.reason}".rstrip()
                )

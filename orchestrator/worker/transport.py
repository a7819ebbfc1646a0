"""How plans reach a trainer and results go back: the ``Transport`` protocol and its directory mailbox.

A transport moves protocol documents (``orchestrator.worker.protocol``) as text; it neither parses nor
decides. The directory mailbox has the layout of the Kubernetes one (``orchestrator.kube.mailbox``), so
a trainer pod whose control ConfigMap is mounted as files reads its plans the same way:

- ``<dir>/spec.json``: the run spec (written by the controller);
- ``<dir>/plan.json``: the one piece of work wanted now, a plan message (written by the controller);
- ``<dir>/results/a<attempt>/<work_key>.json``: the trainer's result for that plan, one file per piece
  of work and attempt (the Kubernetes ``{run}-a{attempt}-results`` ConfigMap, key by key);
- ``<dir>/closed``: the controller wants no more work (the trainer's ``work()`` loop ends).

Every write is atomic (a temporary file in the same directory, then ``os.replace``): a reader sees the
whole old document or the whole new one, never a half-written file, whoever is killed mid-write.

On Kubernetes the trainer uses ``ConfigMapTransport`` (``orchestrator.kube.trainer_transport``; chosen with
``ORCH_MAILBOX=configmap``, which orch sets on the trainer pods it creates): the same documents, read and
written through the API server. ``spec.json`` and ``plan.json`` are keys of the run's control ConfigMap
``{run}-control``; a result is key ``<work_key>`` of ``{run}-a{attempt}-results`` (labelled
``orch.dev/run=<run>``, owned by the control ConfigMap, created by the first result and then merge-patched
under its ``resourceVersion``); ``closed`` is key ``closed-a{attempt}`` of the control ConfigMap (written
by the controller before it deletes that attempt's trainer pods), or the control ConfigMap being gone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

__all__ = [
    "CONFIGMAP_MAILBOX",
    "DIRECTORY_MAILBOX",
    "MAILBOX_ENV",
    "MAILBOX_KIND_ENV",
    "DirectoryTransport",
    "Transport",
    "write_atomically",
]

MAILBOX_ENV = "ORCH_MAILBOX_DIR"  # the mailbox directory of the directory transport
MAILBOX_KIND_ENV = "ORCH_MAILBOX"  # which transport ``TrainerSession.from_env`` builds
DIRECTORY_MAILBOX, CONFIGMAP_MAILBOX = "directory", "configmap"  # its values

SPEC_FILE = "spec.json"
PLAN_FILE = "plan.json"
RESULTS_DIR = "results"
CLOSED_FILE = "closed"


class Transport(Protocol):
    """The trainer's side of a mailbox: documents as text, keyed by attempt and ``work_key``."""

    def spec(self) -> str | None:
        """The run spec document, or None when none was posted."""
        ...

    def plan(self) -> str | None:
        """The plan document posted now, or None."""
        ...

    def closed(self) -> bool:
        """Whether the controller wants no more work."""
        ...

    def result(self, attempt: int, key: str) -> str | None:
        """The result recorded for ``key`` in ``attempt``, or None."""
        ...

    def put_result(self, attempt: int, key: str, text: str) -> None:
        """Record a result; atomic, and replacing one already recorded is the caller's choice."""
        ...


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old whole file or the new whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class DirectoryTransport:
    """The mailbox in a directory (see the module docstring); both sides of it.

    The trainer uses the ``Transport`` methods; the controller (the Ray backend, a local run, a test)
    uses ``post_spec``, ``post_plan`` and ``close`` and reads results back with ``result``.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"DirectoryTransport({str(self.directory)!r})"

    # ---- the trainer's side ---------------------------------------------------------------------

    def spec(self) -> str | None:
        return _read(self.directory / SPEC_FILE)

    def plan(self) -> str | None:
        return _read(self.directory / PLAN_FILE)

    def closed(self) -> bool:
        return (self.directory / CLOSED_FILE).exists()

    def result(self, attempt: int, key: str) -> str | None:
        return _read(self._result_path(attempt, key))

    def put_result(self, attempt: int, key: str, text: str) -> None:
        write_atomically(self._result_path(attempt, key), text)

    # ---- the controller's side ------------------------------------------------------------------

    def post_spec(self, text: str) -> None:
        write_atomically(self.directory / SPEC_FILE, text)

    def post_plan(self, text: str) -> None:
        """Post the plan wanted now; unchanged text is not rewritten."""
        if self.plan() != text:
            write_atomically(self.directory / PLAN_FILE, text)

    def close(self) -> None:
        write_atomically(self.directory / CLOSED_FILE, "")

    def _result_path(self, attempt: int, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a work key: {key!r}")
        return self.directory / RESULTS_DIR / f"a{attempt}" / f"{key}.json"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None

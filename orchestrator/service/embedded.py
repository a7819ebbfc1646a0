"""Run one run with the controller embedded in this process (``orch submit --wait``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress

from orchestrator.backends.base import BackendParts
from orchestrator.core.admit import waits_in_queue
from orchestrator.errors import DatabaseUnavailable
from orchestrator.records import Phase, Run
from orchestrator.service.control import build_controller
from orchestrator.state.store import Store

__all__ = ["run_to_completion", "settled"]


def settled(run: Run) -> bool:
    """Nothing more happens to the run unless a person acts: final, or Suspended (but not preempted: a
    preempted run waits in its queue and comes back by itself)."""
    return run.phase.terminal or (run.phase is Phase.SUSPENDED and not waits_in_queue(run))


def run_to_completion(
    store: Store,
    run_id: str,
    backend: BackendParts,
    *,
    on_progress: Callable[[Run], None] = lambda run: None,
    poll_s: float = 0.2,
) -> Run:
    """Reconcile this run, and no other, in a background thread until it is settled (final or Suspended),
    reporting its state every ``poll_s``. The caller makes and closes ``backend``.

    Ctrl-C stops the controller cleanly (its lease is released) and propagates.
    """
    controller = build_controller(store, backend, only=frozenset({run_id}))
    stop, finished = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def drive() -> None:
        try:
            controller.run(until=lambda: settled(store.get_run(run_id)), stop=stop)
        except BaseException as error:  # re-raised in the caller's thread: one line, no thread traceback
            failed.append(error)
        finally:
            finished.set()

    # Waits on an Event, not Thread.join: a Ctrl-C that interrupts join() can leave the thread marked as
    # stopped while it still runs (CPython 3.11), and the process then exits before the lease is released.
    threading.Thread(target=drive, daemon=True).start()
    try:
        while not finished.is_set():
            with suppress(DatabaseUnavailable):  # the controller thread decides when an outage is too long
                on_progress(store.get_run(run_id))
            finished.wait(poll_s)
        if failed:
            raise failed[0]
    except KeyboardInterrupt:
        stop.set()
        finished.wait()
        raise
    return store.get_run(run_id)

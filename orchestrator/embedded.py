"""Run one run to its end with the controller embedded in this process (``orch submit --wait``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import suppress

from orchestrator.backends import make_backend
from orchestrator.controller import Controller
from orchestrator.errors import DatabaseUnavailable
from orchestrator.records import Run
from orchestrator.state.store import Store

__all__ = ["run_to_completion"]


def run_to_completion(
    store: Store,
    run_id: str,
    *,
    backend: str | None = None,
    sim_pace: float | None = None,
    on_progress: Callable[[Run], None] = lambda run: None,
    poll_s: float = 0.2,
) -> Run:
    """Reconcile in a background thread until the run is final, reporting its state every ``poll_s``.

    Ctrl-C stops the controller cleanly (its leases are released) and propagates.
    """
    parts = make_backend(backend, sim_pace=sim_pace)
    controller = Controller(
        store,
        parts.cluster,
        parts.executor,
        sources=parts.sources,
        telemetry=parts.telemetry,
        transient=parts.transient,
    )
    stop = threading.Event()
    failed: list[BaseException] = []

    def drive() -> None:
        try:
            controller.run(until=lambda: store.get_run(run_id).phase.terminal, stop=stop)
        except (
            BaseException
        ) as error:  # re-raised in the caller's thread: one line there, no thread traceback
            failed.append(error)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            with suppress(DatabaseUnavailable):  # the controller thread decides when an outage is too long
                on_progress(store.get_run(run_id))
            thread.join(poll_s)
        if failed:
            raise failed[0]
    except KeyboardInterrupt:
        stop.set()
        thread.join()
        raise
    finally:
        parts.close()
    return store.get_run(run_id)

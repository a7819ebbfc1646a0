"""Run one run to its end with the controller embedded in this process (``orch submit --wait``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from orchestrator.backends import make_backend
from orchestrator.controller import Controller
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
        store, parts.cluster, parts.executor, sources=parts.sources, telemetry=parts.telemetry
    )
    stop = threading.Event()
    thread = threading.Thread(
        target=controller.run,
        kwargs={"until": lambda: store.get_run(run_id).phase.terminal, "stop": stop},
        daemon=True,
    )
    thread.start()
    try:
        while thread.is_alive():
            on_progress(store.get_run(run_id))
            thread.join(poll_s)
    except KeyboardInterrupt:
        stop.set()
        thread.join()
        raise
    finally:
        parts.close()
    return store.get_run(run_id)

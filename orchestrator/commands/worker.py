"""``orch worker``: the reference trainer (``orchestrator.worker.trainer``)."""

from __future__ import annotations

import logging

import click

__all__ = ["worker"]


@click.command()
@click.option(
    "--idle-timeout", type=float, default=None, help="stop after this many seconds without new work"
)
def worker(idle_timeout: float | None) -> None:
    """Run the reference trainer on the mailbox in $ORCH_MAILBOX_DIR and the engines in $ORCH_ENGINE_URLS."""
    from orchestrator.worker.trainer import main

    logging.getLogger("orchestrator.worker").setLevel(logging.INFO)  # the root handler is cli.main's
    main(idle_timeout_s=idle_timeout)

"""``orch gpus`` and ``orch top``: the newest GPU samples, once or live."""

from __future__ import annotations

import sys
import time

import click

from orchestrator import service
from orchestrator.commands.common import OUTPUT, Context, pass_context
from orchestrator.render import gpus as gpu_view
from orchestrator.render.live import keys, watch_top
from orchestrator.render.output import console, emit

__all__ = ["gpus", "top"]

# ---- GPU telemetry ----------------------------------------------------------------------------


STALE_SECONDS = click.option(
    "--stale-seconds",
    type=click.FloatRange(min=0, min_open=True),
    envvar=gpu_view.STALE_SECONDS_ENV,
    default=gpu_view.DEFAULT_STALE_SECONDS,
    show_default=True,
    help=f"a GPU without a sample for this long is shown stale; a node silent for "
    f"{gpu_view.DROP_AFTER_STALE_WINDOWS}x as long is not shown (env {gpu_view.STALE_SECONDS_ENV})",
)
NODES = click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="PATTERN",
    help="only nodes whose name matches this shell pattern (repeat for more)",
)


@click.command()
@STALE_SECONDS
@NODES
@OUTPUT
@pass_context
def gpus(obj: Context, stale_seconds: float, nodes: tuple[str, ...], output: str) -> None:
    """Show the newest sample of every GPU, with its age."""
    readings = service.gpu_readings(obj.store)
    shown, dropped = gpu_view.gpu_views(readings, time.time(), stale_seconds, nodes)
    emit(gpu_view.gpu_records(shown), output, lambda: gpu_view.gpu_table(shown, dropped, stale_seconds))


@click.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="seconds between refreshes",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="stop after this many refreshes (default: until q or Ctrl-C)",
)
@STALE_SECONDS
@NODES
@pass_context
def top(
    obj: Context, interval: float, iterations: int | None, stale_seconds: float, nodes: tuple[str, ...]
) -> None:
    """Live per-node and per-GPU utilization, bars and sparklines; ↓/PgDn ↑/PgUp page; q or Ctrl-C quits."""
    try:
        with keys(sys.stdin) as wait:
            watch_top(
                obj.store,
                console,
                wait,
                interval=interval,
                iterations=iterations,
                stale_after_s=stale_seconds,
                nodes=nodes,
            )
    except KeyboardInterrupt:
        pass

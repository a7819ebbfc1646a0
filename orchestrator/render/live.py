"""``orch top`` live: the refresh loop and the terminal keys that page and quit it."""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.live import Live

from orchestrator.render.gpus import DEFAULT_STALE_SECONDS, gpu_views, sample_key
from orchestrator.render.top import node_utilization, top_page_count, top_view
from orchestrator.telemetry.latest import latest_readings

__all__ = ["NEXT_PAGE", "PREVIOUS_PAGE", "QUIT", "key_command", "keys", "watch_top"]

TOP_HISTORY = 60  # utilization points kept per GPU and per node for the sparklines
QUIT, NEXT_PAGE, PREVIOUS_PAGE = "quit", "next", "previous"
# What a key press sends, in a terminal in cbreak mode: ↓ PgDn j space page on, ↑ PgUp k back.
PAGE_KEYS = ((b"\x1b[B", NEXT_PAGE), (b"\x1b[6~", NEXT_PAGE), (b"\x1b[A", PREVIOUS_PAGE))
PAGE_KEYS += ((b"\x1b[5~", PREVIOUS_PAGE), (b"j", NEXT_PAGE), (b" ", NEXT_PAGE), (b"k", PREVIOUS_PAGE))


def key_command(data: bytes) -> str:
    """What a chunk read from the terminal asks ``orch top`` to do: quit, page, or nothing (``""``)."""
    if not data or b"q" in data.lower():
        return QUIT
    for sequence, command in PAGE_KEYS:
        if sequence in data:
            return command
    return ""


def _read_key(fd: int, timeout: float) -> str:
    """Wait up to ``timeout`` seconds for input on ``fd``; the command it sends (see ``key_command``)."""
    ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
    if not ready:
        return ""
    return key_command(os.read(fd, 64))


@contextmanager
def keys(stream: Any) -> Iterator[Callable[[float], str]]:
    """Yields ``wait(seconds) -> command``. On a TTY: cbreak mode, keys polled with select, terminal
    restored on the way out. Otherwise: a plain sleep (Ctrl-C or ``--iterations`` end the loop)."""
    if not stream.isatty():

        def sleep(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield sleep
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield lambda seconds: _read_key(fd, seconds)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch_top(
    store: object,
    out: Console,
    wait: Callable[[float], str],
    *,
    interval: float,
    iterations: int | None = None,
    stale_after_s: float = DEFAULT_STALE_SECONDS,
    nodes: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> int:
    """Refresh the top view every ``interval`` until ``wait`` says quit or ``iterations`` refreshes ran.

    Each frame fits ``out``'s size: as many whole nodes as fit its height; ``wait`` returning
    ``NEXT_PAGE`` / ``PREVIOUS_PAGE`` moves between screens."""
    history: dict[str, deque[float | None]] = {}
    refreshes = page = 0
    with Live(console=out, auto_refresh=False) as live:
        while True:
            shown, dropped = gpu_views(latest_readings(store), clock(), stale_after_s, nodes)
            ratios = {sample_key(v.sample): v.sample.utilization_ratio for v in shown}
            for key, ratio in {**ratios, **node_utilization(shown)}.items():
                history.setdefault(key, deque(maxlen=TOP_HISTORY)).append(ratio)
            width, height = out.size
            page = min(page, top_page_count(shown, height) - 1)
            frame = top_view(shown, history, width=width, height=height, page=page, dropped=dropped)
            live.update(frame, refresh=True)
            refreshes += 1
            if iterations is not None and refreshes >= iterations:
                return refreshes
            command = wait(interval)
            if command == QUIT:
                return refreshes
            page = max(0, page + {NEXT_PAGE: 1, PREVIOUS_PAGE: -1}.get(command, 0))

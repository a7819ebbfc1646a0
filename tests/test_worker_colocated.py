"""The launcher that runs colocated engines inside a trainer's container, with real processes."""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import pytest

from orchestrator.core.restarts import RestartPolicy
from orchestrator.errors import OrchError
from orchestrator.worker.colocated import COMMANDS_ENV, EngineCommand, decode_commands, encode_commands, run

FAST = RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.05, max_backoff_s=0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine(name: str, port: int, *argv: str) -> EngineCommand:
    """A stand-in engine: Python's HTTP server, healthy once it answers ``/``."""
    argv = argv or (sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1")
    return EngineCommand(name, tuple(argv), port, "/", 30, {"ENGINE_NAME": name})


def test_the_engines_serve_before_the_trainer_starts_and_go_when_it_exits() -> None:
    ports = [free_port(), free_port()]
    # The trainer reads both engines at once (no retry), then exits 3.
    trainer = (
        "import sys, urllib.request\n"
        f"for port in {ports}: urllib.request.urlopen(f'http://127.0.0.1:{{port}}/', timeout=5)\n"
        "sys.exit(3)\n"
    )
    engines = [engine(f"e{i}", p) for i, p in enumerate(ports)]
    code = run([sys.executable, "-c", trainer], engines, dict(os.environ))
    assert code == 3, "the trainer's exit status is the launcher's"
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # nothing listens: the engines were stopped with the trainer


def test_an_engine_that_keeps_exiting_fails_the_launcher_and_stops_the_trainer(tmp_path: Path) -> None:
    marker = tmp_path / "trainer-started"
    crashing = engine("e0", free_port(), sys.executable, "-c", "raise SystemExit(7)")
    started = time.monotonic()
    code = run(
        [sys.executable, "-c", f"open({str(marker)!r}, 'w'); import time; time.sleep(60)"],
        [crashing],
        dict(os.environ),
        FAST,
    )
    assert code == 1
    assert not marker.exists(), "the trainer never starts without its engines"
    assert time.monotonic() - started < 10


def test_an_engine_that_exits_after_serving_is_restarted_while_the_trainer_runs(tmp_path: Path) -> None:
    port = free_port()
    starts = tmp_path / "starts"
    # Serves, then dies once after a second; the restarted one serves on.
    script = (
        "import sys, threading, os, http.server\n"
        f"open({str(starts)!r}, 'a').write('x')\n"
        f"count = len(open({str(starts)!r}).read())\n"
        f"server = http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)\n"
        "if count == 1: threading.Timer(1.0, lambda: os._exit(9)).start()\n"
        "server.serve_forever()\n"
    )
    trainer = (
        "import time, urllib.request\n"
        "time.sleep(2.5)\n"
        f"urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=5)\n"
    )
    code = run(
        [sys.executable, "-c", trainer],
        [engine("e0", port, sys.executable, "-c", script)],
        dict(os.environ),
        FAST,
    )
    assert code == 0, "the trainer reached the restarted engine"
    assert starts.read_text() == "xx"


def test_malformed_commands_are_one_line_naming_the_variable() -> None:
    commands = [engine("e0", 8000)]
    assert decode_commands(encode_commands(commands)) == commands
    for bad in ("", "[]", '[{"name": "e0"}]', "{"):
        with pytest.raises(OrchError, match=f"^{COMMANDS_ENV}: ") as error:
            decode_commands(bad)
        assert "\n" not in str(error.value)

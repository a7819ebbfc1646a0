"""A newcomer's walk through a real ``orch`` process: what they meet must be true, short and final.

Each step runs the installed ``orch`` entry point as a subprocess, as a user would, against a database of
each kind (SQLite file, PostgreSQL session database).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.errors import EXIT_RUN_SUSPENDED
from orchestrator.records import Phase
from orchestrator.spec import RunSpec
from orchestrator.state.store import Store
from tests.conftest import ROOT, spec_data, write_spec
from tests.test_submit_wait import idle_suspending_spec

pytestmark = pytest.mark.slow

# What the installed `orch` script runs (pyproject: orch = "cli:main"), run from this checkout, so the walk
# tests this tree even where another orch is installed.
ORCH = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())"]


def orch(
    *args: str, url: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``orch ARGS`` as a subprocess, with ``url`` as ORCH_DATABASE_URL."""
    environment = dict(os.environ, ORCH_DATABASE_URL=url, **(env or {}))
    environment.pop("ORCH_BACKEND", None)
    return subprocess.run(
        [*ORCH, *args], capture_output=True, text=True, timeout=timeout, env=environment, cwd=ROOT
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def oversized(tmp_path: Path) -> Path:
    data = spec_data()
    data["name"] = "too-big"
    data["model"] |= {"name": "dense-70b", "params_b": 70, "layers": 80}
    return write_spec(tmp_path, data, "too-big.yaml")


def test_a_run_that_becomes_suspended_returns_from_wait_with_how_to_continue(
    db_url: str, tmp_path: Path
) -> None:
    waited = orch("submit", str(idle_suspending_spec(tmp_path)), "--wait", url=db_url, timeout=300)
    assert waited.returncode == EXIT_RUN_SUSPENDED, (waited.returncode, waited.stderr)
    assert "Suspended" in waited.stderr and "orch resume" in waited.stderr
    assert "Traceback" not in waited.stderr


def test_an_oversized_model_is_refused_by_validate_and_fails_alone_under_the_controller(
    db_url: str, tmp_path: Path
) -> None:
    big = oversized(tmp_path)
    refused = orch("validate", str(big), url=db_url)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert all(line.startswith("error: ") and "too-big.yaml" in line for line in lines), lines
    # One line per problem: the engines' memory (with the fix) and, as true, the trainer's.
    assert any(line.startswith("error: ") and "gpus_per_engine" in line for line in lines), lines
    assert len(lines) <= 3, lines

    # Forced into the store past validate (as a TrainingRun or an older orch could), then a good run.
    store = Store(db_url)
    try:
        forced = store.create_run(RunSpec.model_validate(yaml.safe_load(big.read_text())))
    finally:
        store.close()
    good = orch("submit", str(ROOT / "examples" / "quickstart.yaml"), "-o", "json", url=db_url)
    assert good.returncode == 0, good.stderr

    controller = orch("controller", "--exit-when-idle", url=db_url, timeout=300)
    assert controller.returncode == 0, controller.stderr
    assert "Traceback" not in controller.stderr

    store = Store(db_url)
    try:
        runs = {run.name: run for run in store.list_runs()}
        assert runs["too-big"].id == forced.id
        assert runs["too-big"].phase is Phase.FAILED
        assert "dense-70b" in runs["too-big"].message
        assert runs["quickstart"].phase is Phase.SUCCEEDED
        assert any(e.reason == "Failed" for e in store.events(forced.id))
    finally:
        store.close()


def test_a_busy_port_and_a_bad_database_url_are_one_line(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = orch("tools", "serve", "--port", str(port), "--workers", "1", url=db_url, timeout=60)
    assert str(port) in one_line_error(busy)

    bad = orch("list", url="not-a-url")
    assert "ORCH_DATABASE_URL" in one_line_error(bad)

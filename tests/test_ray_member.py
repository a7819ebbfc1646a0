"""The Ray member's process supervisor without Ray: restarts of an engine's process, and giving up."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("ray")

from orchestrator.backends.ray.member import MemberProcess, RestartPolicy, restart_delay

FAST = RestartPolicy(max_restarts=2, window_s=60, backoff_s=0.05, max_backoff_s=0.2)


def until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_the_delay_doubles_per_recent_exit_up_to_the_cap_and_gives_up_past_max_restarts() -> None:
    policy = RestartPolicy(max_restarts=3, window_s=100, backoff_s=1, max_backoff_s=3)
    assert restart_delay([10], 10, policy) == 1
    assert restart_delay([10, 11], 11, policy) == 2
    assert restart_delay([10, 11, 12], 12, policy) == 3  # capped
    assert restart_delay([10, 11, 12, 13], 13, policy) is None
    # exits older than the window no longer count
    assert restart_delay([10, 11, 12, 200], 200, policy) == 1


def test_an_exited_process_is_restarted_and_stop_ends_the_restarts(tmp_path: Path) -> None:
    log = tmp_path / "member.log"
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(0.3)"]
    member = MemberProcess(argv, {}, str(log), ["0"], FAST)
    first = member.status()["pid"]
    until(lambda: member.status()["restarts"] >= 1)
    status = member.status()
    assert status["running"] and status["pid"] != first and status["last_exit"] == 0
    member.stop(grace_s=1)
    assert not member.status()["running"]
    restarts = member.status()["restarts"]
    time.sleep(0.6)
    assert member.status()["restarts"] == restarts  # nothing restarted after stop
    assert log.read_text().count("up") == restarts + 1
    assert "restarting in" in log.read_text()


def test_a_process_that_keeps_exiting_is_given_up_and_reported_failed(tmp_path: Path) -> None:
    log = tmp_path / "member.log"
    member = MemberProcess([sys.executable, "-c", "raise SystemExit(3)"], {}, str(log), [], FAST)
    until(lambda: not member.status()["running"])
    status = member.status()
    assert status["exit_code"] == 3 and status["restarts"] == FAST.max_restarts
    assert "given up" in log.read_text()


def test_a_trainer_process_without_a_policy_is_never_restarted(tmp_path: Path) -> None:
    member = MemberProcess([sys.executable, "-c", "pass"], {}, str(tmp_path / "m.log"), [])
    until(lambda: not member.status()["running"])
    time.sleep(0.2)
    assert member.status()["restarts"] == 0 and member.status()["exit_code"] == 0

"""``orch logs`` over the Ray backend's member log files, and the Ray mailboxes' end; no Ray needed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import main
from orchestrator import service
from orchestrator.backends.ray.logs import LogLine, follow_lines, member_logs
from orchestrator.backends.ray.mailbox import close_mailbox, mailbox_dir, sweep_mailboxes
from orchestrator.backends.ray.paths import member_log_path, parse_member
from orchestrator.state.store import Store
from orchestrator.worker.transport import DirectoryTransport

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml"


def write_log(log_dir: Path, member: str, *lines: str) -> Path:
    name = parse_member(member)
    assert name is not None
    path = member_log_path(log_dir, name.run_id, member)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.writelines(f"{line}\n" for line in lines)
    return path


@pytest.fixture
def run_id(store: Store) -> str:
    return service.submit(store, service.validate(QUICKSTART)).id


def orch_logs(db_url: str, log_dir: Path, *args: str, backend: str = "ray") -> Result:
    env = {"ORCH_DATABASE_URL": db_url, "ORCH_BACKEND": backend, "ORCH_RAY_LOG_DIR": str(log_dir)}
    return CliRunner().invoke(main, ["logs", *args], env=env, catch_exceptions=False)


# ---- the pure reader ------------------------------------------------------------------------------


def test_the_newest_attempt_is_chosen_and_role_and_index_narrow_it(tmp_path: Path) -> None:
    write_log(tmp_path, "r1-trainer-0-a1", "old")
    write_log(tmp_path, "r1-trainer-0-a2", "new")
    write_log(tmp_path, "r1-engine-1-a2", "e1")
    write_log(tmp_path, "r1-engine-0-a2", "e0")
    (tmp_path / "r1" / "notes.log").write_text("not a member\n")
    assert [log.member for log in member_logs(tmp_path, "r1")] == [
        "r1-engine-0-a2",
        "r1-engine-1-a2",
        "r1-trainer-0-a2",
    ]
    assert [log.member for log in member_logs(tmp_path, "r1", attempt=1)] == ["r1-trainer-0-a1"]
    assert [log.member for log in member_logs(tmp_path, "r1", role="engine", index=1)] == ["r1-engine-1-a2"]
    assert member_logs(tmp_path, "other") == []


def test_follow_sees_a_line_appended_later_and_a_member_created_later(tmp_path: Path) -> None:
    path = write_log(tmp_path, "r1-trainer-0-a1", "one", "two")
    seen: list[LogLine] = []
    done = threading.Event()

    def writer() -> None:
        time.sleep(0.2)
        with open(path, "a") as file:
            file.write("thr")
            file.flush()
            time.sleep(0.2)
            file.write("ee\n")
        write_log(tmp_path, "r1-engine-0-a1", "engine up")

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 10
    lines = follow_lines(
        member_logs(tmp_path, "r1"),
        tail=1,
        stop=lambda: done.is_set() or time.monotonic() > deadline,
        poll_s=0.02,
        more_logs=lambda: member_logs(tmp_path, "r1"),
    )
    for line in lines:
        seen.append(line)
        if len(seen) == 3:
            done.set()
    thread.join()
    assert seen == [
        LogLine("r1-trainer-0-a1", "two"),
        LogLine("r1-trainer-0-a1", "three"),
        LogLine("r1-engine-0-a1", "engine up"),
    ]
    assert time.monotonic() < deadline


# ---- orch logs ----------------------------------------------------------------------------------


def test_logs_of_several_members_are_prefixed_and_tail_keeps_the_last_lines(
    db_url: str, run_id: str, tmp_path: Path
) -> None:
    write_log(tmp_path, f"{run_id}-trainer-0-a1", "t1", "t2", "t3")
    write_log(tmp_path, f"{run_id}-engine-0-a1", "e1")
    result = orch_logs(db_url, tmp_path, run_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{run_id}-engine-0-a1 | e1",
        f"{run_id}-trainer-0-a1 | t1",
        f"{run_id}-trainer-0-a1 | t2",
        f"{run_id}-trainer-0-a1 | t3",
    ]
    one = orch_logs(db_url, tmp_path, run_id, "--role", "trainer", "--index", "0", "--tail", "2")
    assert one.exit_code == 0, one.stderr
    assert one.stdout == "t2\nt3\n"


def test_follow_prints_a_line_appended_later_and_ends_when_the_run_finishes(
    db_url: str, run_id: str, tmp_path: Path
) -> None:
    write_log(tmp_path, f"{run_id}-trainer-0-a1", "before")

    def later() -> None:
        time.sleep(0.5)
        write_log(tmp_path, f"{run_id}-trainer-0-a1", "after")
        store = Store(db_url)
        try:
            service.cancel_run(store, run_id)
        finally:
            store.close()

    thread = threading.Thread(target=later)
    started = time.monotonic()
    thread.start()
    result = orch_logs(db_url, tmp_path, run_id, "-f", "--role", "trainer")
    thread.join()
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "before\nafter\n"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    ("backend", "fragment"),
    [("sim", "keeps no logs"), ("kube", "kubectl logs")],
)
def test_backends_that_keep_no_log_files_say_so_in_one_line(
    db_url: str, run_id: str, tmp_path: Path, backend: str, fragment: str
) -> None:
    result = orch_logs(db_url, tmp_path, run_id, backend=backend)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    assert fragment in result.stdout


def test_a_run_without_log_files_says_where_it_looked(db_url: str, run_id: str, tmp_path: Path) -> None:
    result = orch_logs(db_url, tmp_path, run_id)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{run_id}: no log files under {tmp_path}/{run_id} for these members\n"


# ---- the mailboxes' end --------------------------------------------------------------------------


@pytest.fixture
def mailboxes(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "mailbox"
    for run, attempt in (("done", 1), ("done", 2), ("busy", 1), ("live", 1)):
        DirectoryTransport(mailbox_dir(root, run, attempt)).post_spec("{}")
    yield root


def test_closing_an_attempts_mailbox_ends_its_trainers_loop(mailboxes: Path) -> None:
    assert close_mailbox(mailboxes, "done", 2)
    assert DirectoryTransport(mailbox_dir(mailboxes, "done", 2)).closed()
    assert not DirectoryTransport(mailbox_dir(mailboxes, "done", 1)).closed()
    assert not close_mailbox(mailboxes, "absent", 1)
    assert not (mailboxes / "absent").exists()


def test_sweep_closes_finished_runs_mailboxes_removes_them_once_no_member_lives_and_keeps_logs(
    mailboxes: Path, tmp_path: Path
) -> None:
    log = write_log(tmp_path / "logs", "done-trainer-0-a2", "kept")
    assert sweep_mailboxes(mailboxes, {"done", "live", "absent"}, live_runs={"live", "busy"}) == 1
    assert not (mailboxes / "done").exists()
    assert DirectoryTransport(mailbox_dir(mailboxes, "live", 1)).closed()  # finished, member still up
    assert not DirectoryTransport(mailbox_dir(mailboxes, "busy", 1)).closed()  # not finished
    assert log.read_text() == "kept\n"
    assert sweep_mailboxes(mailboxes, {"live"}, live_runs=set()) == 1
    assert sorted(path.name for path in mailboxes.iterdir()) == ["busy"]

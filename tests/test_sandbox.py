"""The sandbox pool: real zygotes and snippets, hostile ones included; each must be contained and answered."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from orchestrator.tools.api import MAX_CODE_BYTES, ExecResult, Limits
from orchestrator.tools.sandbox import NetworkMode, SandboxError, SandboxPool
from tests.conftest import run_async as run


def with_pool(body: Callable[[SandboxPool], Awaitable[None]], workers: int = 2, **options: Any) -> None:
    """Run ``body`` against a fresh started pool, then close it and check that no task leaked."""

    async def test() -> None:
        async with SandboxPool(workers, **options) as pool:
            await body(pool)

    run(test)


def zygote_pid(pool: SandboxPool, index: int = 0) -> int:
    """The host PID of worker ``index``'s zygote proper: with a PID namespace, the only child of the process
    the pool started (a snippet's getppid() is 1 there, never to be signalled from the host)."""
    pid = pool.worker_pids[index]
    assert pid is not None
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if pool.stats.isolation in ("strong", "namespaces") else pid


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes running as ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            status = Path(f"/proc/{entry}/status").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if re.search(rf"^Uid:\s+{uid}\s", status, re.M) and not re.search(r"^State:\s+Z", status, re.M):
            found.append(int(entry))
    return found


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A real TCP listener on 127.0.0.1 whose accept() fails unless someone connected."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def assert_nobody_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


async def eventually(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def uid_of(pool: SandboxPool) -> int:
    return int((await pool.execute("import os; print(os.getuid())")).stdout)


# ---- ordinary snippets ----------------------------------------------------------------------------


def test_stdout_stderr_exit_status_and_times_are_reported() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("import sys\nprint('out', 1 + 1)\nprint('err', file=sys.stderr)")
        assert (result.verdict, result.stdout, result.stderr) == ("ok", "out 2\n", "err\n")
        assert result.exit_status == 0
        assert 0 < result.wall_seconds < 2 and 0 <= result.cpu_seconds < 2
        assert ExecResult.from_json(result.to_json()) == result

    with_pool(body)


def test_an_exception_is_an_error_with_its_traceback() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("x = 1\n1 / 0\n")
        assert (result.verdict, result.exit_status) == ("error", 1)
        assert 'File "<snippet>", line 2' in result.stderr and "1 / 0" in result.stderr
        assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
        assert "zygote.py" not in result.stderr
        syntax = await pool.execute("def (:\n")
        assert syntax.verdict == "error" and "SyntaxError" in syntax.stderr

    with_pool(body)


def test_exit_statuses_follow_python() -> None:
    async def body(pool: SandboxPool) -> None:
        os_exit = await pool.execute("import os\nprint('lost in the buffer')\nos._exit(3)")
        assert (os_exit.verdict, os_exit.exit_status) == ("error", 3)
        message = await pool.execute("import sys; sys.exit('bye')")
        assert (message.verdict, message.exit_status, message.stderr) == ("error", 1, "bye\n")
        clean = await pool.execute("import sys; sys.exit(0)")
        assert (clean.verdict, clean.exit_status) == ("ok", 0)

    with_pool(body)


def test_no_state_survives_a_call() -> None:
    async def body(pool: SandboxPool) -> None:
        first = await pool.execute(
            "import math, random, sys\nLEAK = 1\nmath.leak = 2\nprint(random.random())"
        )
        second = await pool.execute(
            "import math, random\nprint('LEAK' in globals(), hasattr(math, 'leak'))\nprint(random.random())"
        )
        assert second.stdout.splitlines()[0] == "False False"
        assert first.stdout != second.stdout.splitlines()[1]  # the random generator is reseeded per call

    with_pool(body, workers=1)


def test_installed_packages_import_but_not_orch() -> None:
    async def body(pool: SandboxPool) -> None:
        installed = await pool.execute("import yaml, pydantic; print(yaml.safe_load('a: 1'))")
        assert (installed.verdict, installed.stdout) == ("ok", "{'a': 1}\n")
        orch = await pool.execute("import orchestrator")
        assert orch.verdict == "error" and "ModuleNotFoundError" in orch.stderr

    with_pool(body, workers=1)


def test_each_call_gets_pristine_std_streams() -> None:
    async def body(pool: SandboxPool) -> None:
        first = await pool.execute(
            "import sys\nsys.stdout.reconfigure(errors='strict')\nsys.stdout.write('x')\nsys.stdout = None"
        )
        second = await pool.execute(
            "import sys\nprint(sys.stdout.errors, sys.stdin.read() == '')\nprint('é')"
        )
        assert (first.verdict, first.stdout) == ("ok", "x")
        assert (second.verdict, second.stdout) == ("ok", "backslashreplace True\né\n")

    with_pool(body, workers=1)


THREAD = """
import threading, time

def late():
    time.sleep(0.1)
    print("done")

threading.Thread(target=late).start()
"""


def test_threads_run_to_completion_like_python() -> None:
    async def body(pool: SandboxPool) -> None:
        assert (await pool.execute(THREAD)).stdout == "done\n"

    with_pool(body, workers=1)


def test_the_scratch_directory_is_fresh_per_call_and_removed() -> None:
    async def body(pool: SandboxPool) -> None:
        code = "import os\nprint(os.listdir(), os.getcwd() == os.environ['HOME'])\nopen('left', 'w')"
        first, second = await pool.execute(code), await pool.execute(code)
        assert first.stdout == second.stdout == "[] True\n"
        assert pool.scratch_root is not None and os.listdir(pool.scratch_root) == []
        assert pool.scratch_root.stat().st_mode & 0o777 == 0o711

    with_pool(body, workers=1)


def test_calls_on_different_workers_overlap() -> None:
    async def body(pool: SandboxPool) -> None:
        started = time.monotonic()
        results = await asyncio.gather(*(pool.execute("import time; time.sleep(0.5)") for _ in range(4)))
        elapsed = time.monotonic() - started
        assert [result.verdict for result in results] == ["ok"] * 4
        assert 0.95 < elapsed < 1.45  # two rounds of two, not four in a row

    with_pool(body, workers=2)


def test_stats_follow_the_pool() -> None:
    async def body(pool: SandboxPool) -> None:
        stats = pool.stats
        assert (stats.workers, stats.workers_alive, stats.calls_running, stats.worker_restarts) == (
            2,
            2,
            0,
            0,
        )
        assert stats.network in ("namespace", "block")
        call = asyncio.ensure_future(pool.execute("import time; time.sleep(0.3)"))
        await asyncio.sleep(0.1)
        assert pool.stats.calls_running == 1
        await call

    with_pool(body)
    assert SandboxPool(1).stats.network is None


def test_a_cancelled_caller_leaves_the_worker_usable() -> None:
    async def body(pool: SandboxPool) -> None:
        call = asyncio.ensure_future(pool.execute("import time; time.sleep(0.3); print('finished')"))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await pool.execute("print('next')")).stdout == "next\n"

    with_pool(body, workers=1)


def test_closing_answers_the_running_call() -> None:
    async def test() -> None:
        pool = SandboxPool(1)
        await pool.start()
        call = asyncio.ensure_future(pool.execute("import time; time.sleep(30)"))
        await asyncio.sleep(0.2)
        await pool.close()
        result = await call
        assert result.verdict == "killed" and "closed during the call" in result.stderr
        with pytest.raises(SandboxError, match="not running"):
            await pool.execute("print(1)")

    run(test)


def test_bad_arguments_are_refused_before_any_worker() -> None:
    async def test() -> None:
        pool = SandboxPool(1)
        with pytest.raises(SandboxError, match="not running"):
            await pool.execute("print(1)")
        with pytest.raises(ValueError, match=r"code: \d+ bytes is above the maximum"):
            await pool.execute("#" * (MAX_CODE_BYTES + 1))
        with pytest.raises(ValueError, match=r"limits\.processes"):
            await pool.execute("print(1)", Limits(processes=1000))

    run(test)
    with pytest.raises(ValueError, match="workers"):
        SandboxPool(0)
    with pytest.raises(ValueError, match="network"):
        SandboxPool(1, network="off")  # type: ignore[arg-type]


# ---- limits ---------------------------------------------------------------------------------------


def test_an_infinite_loop_times_out_and_the_pool_goes_on() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("while True: pass", Limits(wall_seconds=0.5, cpu_seconds=5))
        assert (result.verdict, result.exit_status) == ("timeout", -signal.SIGKILL)
        assert 0.5 <= result.wall_seconds < 1.5
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


def test_the_cpu_limit_stops_a_busy_snippet() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("while True: pass", Limits(wall_seconds=10, cpu_seconds=1))
        assert (result.verdict, result.exit_status) == ("timeout", -signal.SIGXCPU)
        assert 0.5 < result.cpu_seconds < 2.5 and result.wall_seconds < 4  # rusage lags the rlimit's count

    with_pool(body, workers=1)


def test_a_memory_bomb_is_a_memory_verdict() -> None:
    async def body(pool: SandboxPool) -> None:
        limits = Limits(memory_bytes=256 * 2**20)
        growing = await pool.execute("chunks = []\nwhile True: chunks.append(bytearray(10**7))", limits)
        assert growing.verdict == "memory" and "MemoryError" in growing.stderr
        at_once = await pool.execute("x = bytearray(10**10)", limits)
        assert at_once.verdict == "memory"
        assert (await pool.execute("print(len(bytearray(10**7)))", limits)).stdout == "10000000\n"

    with_pool(body, workers=1)


def test_the_open_files_limit_holds() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("files = [open('f', 'w') for _ in range(40)]", Limits(open_files=16))
        assert result.verdict == "error" and "Too many open files" in result.stderr

    with_pool(body, workers=1)


def test_a_gigabyte_of_output_is_truncated_without_buffering_it() -> None:
    async def body(pool: SandboxPool) -> None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        code = "import sys\nchunk = 'x' * 2**20\nfor _ in range(1024): sys.stdout.write(chunk)"
        result = await pool.execute(code, Limits(output_bytes=64 * 1024))
        assert result.verdict == "output_truncated"
        assert result.stdout == "x" * 64 * 1024 and result.stderr == ""
        assert result.wall_seconds < 3  # stopped at the cap, not after writing the gigabyte
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 32 * 1024  # KiB
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


OVERFLOW = """
import sys
print("a" * 3000)
sys.stderr.write("b" * 3000)
try:
    print("c" * 10**6)
except OSError:
    pass
"""


def test_output_past_the_cap_is_cut_and_flagged_even_when_the_snippet_ends_well() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute(OVERFLOW, Limits(output_bytes=4096))
        assert (result.verdict, result.exit_status) == ("output_truncated", 0)
        assert result.stdout == "a" * 3000 + "\n" + "c" * 1095 and result.stderr == ""  # stdout first
        six = Limits(output_bytes=6)
        small = await pool.execute("import sys\nprint('out')\nsys.stderr.write('err')", six)
        assert (small.verdict, small.stdout, small.stderr) == ("output_truncated", "out\n", "er")
        exact = await pool.execute("import sys\nprint('out')\nsys.stderr.write('er')", six)
        assert (exact.verdict, exact.stdout, exact.stderr) == ("ok", "out\n", "er")

    with_pool(body, workers=1)


DISK = """
import os
try:
    open("big", "wb").write(b"x" * {size})
    print("big ok")
except OSError as error:
    print("big", error.errno)
written = 0
try:
    for index in range(64):
        open(f"part-{{index}}", "wb").write(b"x" * {part})
        written += {part}
except OSError as error:
    print("parts", error.errno)
print(written)
"""


def test_the_scratch_disk_and_file_sizes_are_capped() -> None:
    async def body(pool: SandboxPool) -> None:
        limits = Limits(disk_bytes=2**20)
        result = await pool.execute(DISK.format(size=2 * 2**20, part=256 * 1024), limits)
        lines = result.stdout.splitlines()
        assert result.verdict == "ok" and lines[0] == "big 27"  # EFBIG: no file above disk_bytes
        if pool.stats.private_tmp:  # the call's tmpfs holds disk_bytes in all
            assert lines[1] == "parts 28" and int(lines[2]) <= 2**20  # ENOSPC
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


COUNT_FORKS = """
import os, time
started = 0
for _ in range(20):
    try:
        pid = os.fork()
    except BlockingIOError:
        break
    if pid == 0:
        time.sleep(30)
    started += 1
print(started)
"""

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def test_a_fork_bomb_is_contained_answered_and_cleaned_up() -> None:
    async def body(pool: SandboxPool) -> None:
        if not pool.stats.separate_uids:
            pytest.skip("the processes limit needs the service to run as root")
        uid = await uid_of(pool)
        counted = await pool.execute(COUNT_FORKS, Limits(processes=8))
        assert counted.verdict == "ok" and counted.stdout == "7\n"  # 8 processes with the snippet itself
        result = await pool.execute(FORK_BOMB, Limits(wall_seconds=1.5, processes=8))
        assert result.verdict == "timeout"
        assert processes_of(uid) == []
        assert subprocess.run(["true"], check=False).returncode == 0  # the machine still forks
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


LEFT_BEHIND = """
import os, time
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
print("parent done")
"""


def test_processes_left_behind_die_with_their_call() -> None:
    async def body(pool: SandboxPool) -> None:
        uid = await uid_of(pool)
        started = time.monotonic()
        result = await pool.execute(LEFT_BEHIND)
        assert (result.verdict, result.stdout) == ("ok", "parent done\n")
        assert time.monotonic() - started < 1  # not held up by the sleeper, which keeps stdout open
        if pool.stats.separate_uids:
            assert processes_of(uid) == []

    with_pool(body, workers=1)


STOPPER = """
import os, signal
if os.fork() == 0:
    while True:  # stop every other process of this uid, over and over
        try:
            os.kill(-1, signal.SIGSTOP)
        except OSError:
            pass
while True:
    pass
"""


def test_a_snippet_cannot_stall_its_cleanup_by_stopping_processes() -> None:
    async def body(pool: SandboxPool) -> None:
        uid = await uid_of(pool)
        started = time.monotonic()
        for _ in range(3):
            result = await pool.execute(STOPPER, Limits(wall_seconds=0.3))
            assert result.verdict == "timeout"
        assert time.monotonic() - started < 3 and pool.stats.worker_restarts == 0
        if pool.stats.separate_uids:
            assert processes_of(uid) == []
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


# ---- isolation ------------------------------------------------------------------------------------

CONNECT = """
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", {port}))
    print("connected")
except OSError as error:
    print("refused:", error)
"""


def test_no_network_in_a_namespace() -> None:
    async def body(pool: SandboxPool) -> None:
        assert pool.stats.network == "namespace"
        with listener() as server:
            result = await pool.execute(CONNECT.format(port=server.getsockname()[1]))
            assert result.stdout.startswith("refused:") and "unreachable" in result.stdout
            assert_nobody_connected(server)

    try:
        with_pool(body, workers=1, network="namespace")
    except SandboxError as error:
        pytest.skip(f"no network namespace here: {error}")


def test_no_network_when_blocked() -> None:
    async def body(pool: SandboxPool) -> None:
        assert pool.stats.network == "block"
        with listener() as server:
            result = await pool.execute(CONNECT.format(port=server.getsockname()[1]))
            assert result.stdout.startswith("refused: sandbox: network access is blocked (socket.__new__)")
            assert_nobody_connected(server)
        lookup = await pool.execute("import socket; socket.getaddrinfo('example.com', 80)")
        assert lookup.verdict == "error" and "blocked (socket.getaddrinfo)" in lookup.stderr
        program = await pool.execute("import os; os.system('true')")
        assert program.verdict == "error" and "blocked (os.system)" in program.stderr
        unix = await pool.execute(
            "import socket; a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2))"
        )
        assert unix.stdout == "b'ok'\n"

    with_pool(body, workers=1, network="block", allow_weak_isolation=True)


UNIX_CONNECT = """
import socket
try:
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect({path!r})
    print("connected")
except OSError as error:
    print("refused:", type(error).__name__)
"""


@pytest.mark.parametrize("network", ["auto", "block"])
def test_host_unix_sockets_under_run_are_out_of_reach(network: NetworkMode) -> None:
    directory = Path("/run") / f"orch-sandbox-test-{uuid.uuid4().hex}"

    async def body(pool: SandboxPool) -> None:
        if not pool.stats.private_tmp:
            pytest.skip("hiding /run needs a private mount namespace")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with server:
            server.bind(str(directory / "service.sock"))
            server.listen()
            server.setblocking(False)
            (directory / "service.sock").chmod(0o777)  # like PostgreSQL's socket
            result = await pool.execute(UNIX_CONNECT.format(path=str(directory / "service.sock")))
            assert result.stdout == "refused: FileNotFoundError\n"
            assert_nobody_connected(server)

    directory.mkdir(mode=0o755)
    try:
        with_pool(body, workers=1, network=network, allow_weak_isolation=True)
    finally:
        shutil.rmtree(directory)


SHARED_MEMORY = """
import ctypes
print(ctypes.CDLL(None, use_errno=True).shmget({key}, 4096, {flags}))
"""


def test_system_v_ipc_dies_with_the_call() -> None:
    key = 0x5A5D0000 + os.getpid() % 0xFFFF

    async def body(pool: SandboxPool) -> None:
        if not pool.stats.private_tmp:
            pytest.skip("a private IPC namespace needs root")
        created = await pool.execute(SHARED_MEMORY.format(key=key, flags=0o1666))  # IPC_CREAT | 0666
        assert int(created.stdout) >= 0
        assert (await pool.execute(SHARED_MEMORY.format(key=key, flags=0))).stdout == "-1\n"
        assert f" {key} " not in Path("/proc/sysvipc/shm").read_text()

    with_pool(body, workers=1)


def test_writes_outside_the_scratch_directory_fail_or_stay_inside() -> None:
    name = f"orch-sandbox-test-{uuid.uuid4().hex}"
    targets = [f"/etc/{name}", f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}", f"/root/{name}"]
    targets.append(str(Path(__file__).parent / name))

    async def body(pool: SandboxPool) -> None:
        code = (
            f"for path in {targets!r} + ['../{name}']:\n"
            "    try:\n        open(path, 'w').write('x')\n        print('wrote', path)\n"
            "    except OSError as error:\n        print('refused', path, type(error).__name__)"
        )
        result = await pool.execute(code)
        assert result.verdict == "ok"
        assert "wrote /etc" not in result.stdout and "wrote /root" not in result.stdout
        assert f"refused ../{name} " in result.stdout  # PermissionError, or OSError: a read-only fs
        assert pool.scratch_root is not None and not (pool.scratch_root / name).exists()

    with_pool(body, workers=1)
    assert [target for target in targets if os.path.exists(target)] == []


def test_a_snippet_cannot_kill_its_worker() -> None:
    async def body(pool: SandboxPool) -> None:
        result = await pool.execute("import os, signal; os.kill(os.getppid(), signal.SIGKILL)")
        if pool.stats.isolation != "weak":  # PID 1 of its namespace (and root's): void, or refused
            assert result.verdict in ("ok", "error") and pool.stats.worker_restarts == 0
        elif pool.stats.separate_uids:
            assert result.verdict == "error" and "PermissionError" in result.stderr
            assert pool.stats.worker_restarts == 0
        else:  # the same user: the worker dies, the call is answered and the worker replaced
            assert result.verdict == "killed"
        assert (await pool.execute("print('alive')")).stdout == "alive\n"

    with_pool(body, workers=1)


WRITE_SECRET = """
import os, time
open("secret.txt", "w").write({secret!r})
print(os.getuid())
time.sleep(2)
"""

READ_SECRET = """
import glob, os
print(os.getuid())
for pattern in {patterns!r}:
    for path in glob.glob(pattern) or [pattern]:
        try:
            print("read", path, open(path).read())
        except OSError as error:
            print("refused", path, type(error).__name__)
"""


def secret_files(root: Path, secret: str) -> list[Path]:
    """Where a running call's secret.txt holding ``secret`` shows from the service: its scratch dir under
    the pool's root, or (a tmpfs in the call's own mount namespace) its cwd, through /proc. (By content:
    another test run's pool on this machine may be writing a secret.txt of its own.)"""
    found = [*root.glob("*/secret.txt"), *Path("/proc").glob("[0-9]*/cwd/secret.txt")]
    return [path for path in found if _text(path) == secret]


def _text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def test_a_call_cannot_read_another_calls_files() -> None:
    secret = uuid.uuid4().hex

    async def body(pool: SandboxPool) -> None:
        root = pool.scratch_root
        assert root is not None
        writer = asyncio.ensure_future(pool.execute(WRITE_SECRET.format(secret=secret)))
        await eventually(lambda: bool(secret_files(root, secret)))
        found = secret_files(root, secret)[0]
        directory = found.parent.resolve()  # /proc/PID/cwd resolves to the call's /tmp
        owner = found.parent.stat()
        patterns = [f"{directory}/secret.txt", f"{root}/*/secret.txt", "/tmp/secret.txt"]
        patterns += ["/proc/*/cwd/secret.txt", f"/proc/*/root{directory}/secret.txt"]
        reader = await pool.execute(READ_SECRET.format(patterns=patterns))
        written = await writer
        assert secret not in reader.stdout and "read " not in reader.stdout
        assert "refused" in reader.stdout
        writer_uid, reader_uid = int(written.stdout), int(reader.stdout.splitlines()[0])
        assert owner.st_mode & 0o777 == 0o700 and owner.st_uid == writer_uid
        if pool.stats.separate_uids:
            assert writer_uid != reader_uid

    with_pool(body, workers=2)


ENVIRON = """
import os
print(dict(os.environ))
for pid in ["self", "1", str(os.getppid()), "{service}"]:
    try:
        print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as error:
        print(pid, type(error).__name__)
"""


def test_the_services_environment_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SECRET_TEST", "hunter2-service-secret")

    async def body(pool: SandboxPool) -> None:
        result = await pool.execute(ENVIRON.format(service=os.getpid()))
        assert result.verdict == "ok" and "'PATH'" in result.stdout
        assert "hunter2" not in result.stdout + result.stderr
        if pool.stats.isolation in ("strong", "namespaces"):  # the service is not in the call's PID namespace
            assert f"\n{os.getpid()} FileNotFoundError" in result.stdout
        elif pool.stats.separate_uids:
            assert f"\n{os.getpid()} PermissionError" in result.stdout

    with_pool(body, workers=1)


def test_the_scratch_root_may_sit_where_sandbox_users_cannot_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(closed))

    async def body(pool: SandboxPool) -> None:
        assert pool.scratch_root is not None and pool.scratch_root.parent == closed
        result = await pool.execute("open('kept', 'w').write('x')\nprint(open('kept').read())")
        assert (result.verdict, result.stdout) == ("ok", "x\n")

    with_pool(body, workers=1)


WITHOUT_ROOT = """
import asyncio, os
from orchestrator.tools.api import Limits
from orchestrator.tools.sandbox import SandboxPool

async def main():
    async with SandboxPool(1) as pool:
        stats = pool.stats
        assert (stats.network, stats.separate_uids, stats.private_tmp) == ("namespace", False, True), stats
        assert stats.isolation == "namespaces", stats  # through a user namespace of its own
        assert (await pool.execute("import os; print(os.getuid())")).stdout == "0\\n"
        assert (await pool.execute("while True: pass", Limits(wall_seconds=0.3))).verdict == "timeout"
        blocked = await pool.execute("import socket; socket.socket().connect(('127.0.0.1', 9))")
        assert "Network is unreachable" in blocked.stderr, blocked
        started = asyncio.get_running_loop().time()
        left = await pool.execute("import os, time\\nif not os.fork():\\n    os.setsid()\\n    time.sleep(9)")
        assert left.verdict == "ok" and asyncio.get_running_loop().time() - started < 1, left
        suicide = await pool.execute("import os; os.kill(os.getppid(), 9)")
        assert suicide.verdict == "ok" and pool.stats.worker_restarts == 0, suicide  # PID 1: void
        assert (await pool.execute("print('alive')")).stdout == "alive\\n"
    print("isolated fine")

asyncio.run(main())
"""


def test_without_root_the_pool_isolates_through_a_user_namespace() -> None:
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to become nobody) and a system python3")
    root = str(Path(__file__).resolve().parents[1])
    command = dict(user=65534, group=65534, extra_groups=[], cwd="/", capture_output=True, text=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": root}
    probe = subprocess.run([python, "-c", "import orchestrator.tools.sandbox"], env=env, **command)
    if probe.returncode != 0:
        pytest.skip(f"nobody cannot import orch with {python}: {probe.stderr.strip()[-200:]}")
    result = subprocess.run([python, "-W", "error", "-c", WITHOUT_ROOT], env=env, timeout=60, **command)
    assert (result.returncode, result.stdout, result.stderr) == (0, "isolated fine\n", "")


# ---- workers that die or hang ---------------------------------------------------------------------


ORPHAN = """
import os, time
if os.fork() == 0:
    os.setsid()  # out of the call's session too
time.sleep(30)
"""


def test_a_worker_killed_mid_call_is_answered_and_replaced() -> None:
    async def body(pool: SandboxPool) -> None:
        zygote = zygote_pid(pool)
        uid = await uid_of(pool)
        call = asyncio.ensure_future(pool.execute(ORPHAN))
        await asyncio.sleep(0.3)
        os.kill(zygote, signal.SIGKILL)
        result = await call
        assert (result.verdict, result.exit_status) == ("killed", None)
        assert "worker 0 died" in result.stderr
        assert pool.stats.worker_restarts == 1 and pool.stats.workers_alive == 1
        assert (await pool.execute("print('alive')")).stdout == "alive\n"
        if pool.stats.separate_uids:  # the replacement killed what the dead zygote's call left running
            await eventually(lambda: processes_of(uid) == [])

    with_pool(body, workers=1)


def test_a_stuck_worker_is_replaced_after_the_grace() -> None:
    async def body(pool: SandboxPool) -> None:
        zygote = zygote_pid(pool)
        call = asyncio.ensure_future(pool.execute("import time; time.sleep(30)", Limits(wall_seconds=0.3)))
        await asyncio.sleep(0.1)
        os.kill(zygote, signal.SIGSTOP)
        result = await call
        assert result.verdict == "killed" and "did not answer" in result.stderr
        assert (await pool.execute("print('alive')")).stdout == "alive\n"
        assert pool.stats.worker_restarts == 1

    with_pool(body, workers=1)


def test_scratch_removal_never_follows_symlinks(tmp_path: Path) -> None:
    from orchestrator.tools.zygote import remove_tree

    outside = tmp_path / "outside"
    (outside / "kept").mkdir(parents=True)
    (outside / "kept" / "file").write_text("keep me")
    scratch = tmp_path / "scratch"
    (scratch / "a" / "b").mkdir(parents=True)
    (scratch / "a" / "b" / "data").write_text("x")
    (scratch / "closed").mkdir(mode=0o000)
    (scratch / "to-dir").symlink_to(outside / "kept")
    (scratch / "a" / "to-file").symlink_to(outside / "kept" / "file")
    (scratch / "dangling").symlink_to(tmp_path / "nowhere")
    remove_tree(str(scratch))
    if os.geteuid() != 0:
        (scratch / "closed").chmod(0o700)  # only root removes what a snippet closed to its owner
        remove_tree(str(scratch))
    assert not scratch.exists()
    assert (outside / "kept" / "file").read_text() == "keep me"


def test_scratch_roots_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    from orchestrator.tools.sandbox import remove_abandoned_scratch_roots

    dead_pid = 2**22 + 7  # above any pid_max a kernel allows by default: never a live process
    abandoned = tmp_path / f"orch-sandbox-{dead_pid}-abc"
    (abandoned / "call-3").mkdir(parents=True)
    alive = tmp_path / f"orch-sandbox-{os.getpid()}-def"
    alive.mkdir()
    other = tmp_path / "orch-sandbox-xyz"  # not ours to judge
    other.mkdir()
    assert remove_abandoned_scratch_roots(str(tmp_path)) == [abandoned]
    assert not abandoned.exists() and alive.exists() and other.exists()

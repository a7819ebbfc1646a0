"""A pool of warm sandbox workers for untrusted Python snippets; ``SandboxPool`` implements ``CodeExecutor``.

Each worker is a long-lived zygote process (``tools.zygote``) that has already imported what snippets
commonly need. For every call it forks a child that confines itself and runs the snippet in a fresh
``__main__``, so no interpreter starts per call and no state survives one. The pool hands each worker one
call at a time, gives the zygote ``wall_seconds`` plus a grace to answer, and replaces a zygote that dies or
stops answering; the call it held is answered "killed".

Isolation (``SandboxStats.isolation``): "namespaces" where each worker got network, mount, IPC and PID
namespaces and a read-only file system, as root or, without root, through an unprivileged user namespace;
"strong" where it also got a cgroup (``SandboxStats.cgroup``: "v2" where memory and pids are delegated to
our cgroup, else "v1" where our memory and pids cgroups are writable, else "none" and
``cgroup_because`` says why; see ``tools.cgroup``): one per worker, its limits set to each call's
``memory_bytes`` (no swap) and ``processes`` before the call, so they hold for the call's processes
together, not only for each one (RLIMIT_AS, still set); it is removed when the worker stops. Otherwise
"weak", and then the pool refuses to start unless ``allow_weak_isolation`` (``orch tools serve
--allow-weak-isolation``, ``tools.allow_weak_isolation`` in a run spec).

What holds when the service runs as root on Linux:

- user: each worker runs its calls as a uid of its own (from 61000, claimed with a lock file in
  /run/orch-sandbox so that pools on one machine never share one), without groups and with no_new_privs.
  So RLIMIT_NPROC caps each call, a snippet cannot signal its worker nor read root's files, and at the
  end of a call every process of that uid is stopped, then killed, by root (a fork bomb cannot outrun
  that, nor a snippet get in its way).
- network: each worker lives in an empty network namespace (``network="namespace"``; loopback down, no
  interfaces). Where the kernel refuses one (``"auto"`` falls back) or with ``network="block"``, an audit
  hook in the child refuses non-Unix sockets, name lookups, running programs and ctypes: Python-level
  only, not a kernel boundary.
- files: each call gets a tmpfs of its own (at most ``disk_bytes``, mode 0700, owned by the call's uid)
  as /tmp, /var/tmp, /dev/shm, cwd and HOME, in private mount and IPC namespaces: it vanishes with the
  call, System V IPC objects too; /run, where host services keep their Unix sockets (a trusting
  PostgreSQL, say), is an empty tmpfs; and a directory closed to other users above the Python
  installation (e.g. /root for pyenv) is shown as an empty one holding just that installation. No file
  may grow past ``disk_bytes`` (RLIMIT_FSIZE).
- processes: the zygote is PID 1 of a PID namespace with a /proc of its own (hidepid=2), so a call sees
  only its own processes, not the host's nor their command lines or environments, and everything a call
  left running is killed at once at its end. The file system is read-only (mount_setattr, recursively)
  but for the call's tmpfs.
- environment: the zygote starts with PATH, LANG and LD_BIND_NOW only and the child gets PATH, LANG,
  HOME, TMPDIR and PYTHONDONTWRITEBYTECODE, so the service's secrets are not visible (not even in
  /proc/self/environ).
- limits: RLIMIT_CPU (whole seconds, rounded up), RLIMIT_AS (per process), RLIMIT_NOFILE, RLIMIT_NPROC,
  RLIMIT_FSIZE and no core files; the zygote enforces the wall clock. stdout and stderr are sealed
  memory files of just over ``output_bytes``: a write past the end fails, so a flood of output costs
  neither memory nor a wake-up of the zygote per chunk; what went past the cap makes the verdict
  ``output_truncated`` (stdout is kept first, then stderr, ``output_bytes`` in all).

Throughput: fork, not interpreter start, is the cost of a call, and on a VM it grows with the zygote's
mappings and written pages. So the zygote runs without ``site`` (no .pth imports) and without threading,
shutil or NSS libraries, makes the call's environment and std streams once, and is pinned to one CPU.

Without root, where the kernel allows unprivileged user namespaces, the zygote is uid 0 of a user
namespace of its own and gets all of the above but the separate uid: a call runs as that uid 0 with every
capability dropped (an empty bounding set, no_new_privs), cannot see its zygote (not dumpable), and
RLIMIT_NPROC counts the processes of that namespace. Without root and without user namespaces (weak)
the snippet runs as the service's user: it can signal its worker (which is then replaced),
``processes`` is not enforced, /tmp, /run and IPC are shared, the scratch directory is a fresh one on
disk (removed after the call; only single files are capped), cleanup reaches only the call's session and
``"auto"`` means "block". Needs Linux 5.3+ (pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
import pwd
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from orchestrator.errors import OrchError
from orchestrator.tools import cgroup as cgroups
from orchestrator.tools import zygote
from orchestrator.tools.api import MAX_CODE_BYTES, MAX_LIMITS, VERDICTS, ExecResult, Limits

__all__ = ["NetworkMode", "SandboxError", "SandboxPool", "SandboxStats", "remove_abandoned_scratch_roots"]

NetworkMode = Literal["auto", "namespace", "block"]
NETWORK_MODES: tuple[NetworkMode, ...] = ("auto", "namespace", "block")
DEFAULT_WORKERS = os.cpu_count() or 1
DEFAULT_LIMITS = Limits()
SCRATCH_PREFIX = "orch-sandbox-"  # + the pool's PID + "-": a pool removes those of processes that are gone
ANSWER_GRACE = 3.0  # seconds past wall_seconds a zygote has to kill, clean up and answer
START_SECONDS = 30.0  # for a zygote to say hello
STOP_SECONDS = 5.0  # for a zygote to exit once its stdin is closed
MAX_HEADER = 4096  # bytes of a JSON hello or answer header
ZYGOTE_FLAGS = ("-I", "-S", "-B")  # isolated, no site (.pth imports make every fork dearer), no .pyc writes
# LD_BIND_NOW: the zygote resolves every symbol once at start, instead of each child resolving (and
# copying the page of) those the zygote never called, e.g. setresuid (measured: ~9% of a call's CPU).
ZYGOTE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LD_BIND_NOW": "1"}


ISOLATION_RANK = {"strong": 0, "namespaces": 1, "weak": 2}
WEAK_REFUSED = (
    "isolation is weak here: refused; run as root or where unprivileged user namespaces are allowed, "
    "or accept weak isolation with --allow-weak-isolation (tools.allow_weak_isolation: true in a run spec)"
)


class SandboxError(OrchError):
    """The pool cannot run calls: it is not started, it is closed, or its workers do not start."""


class _WorkerLost(Exception):
    """The zygote died, broke the protocol or stopped answering; the message says which."""


@dataclass(frozen=True)
class SandboxStats:
    """A snapshot of the pool for health checks and metrics."""

    workers: int
    workers_alive: int
    calls_running: int
    calls_waiting: int
    worker_restarts: int
    network: Literal["namespace", "block"] | None  # the weakest in effect; None while no worker is alive
    separate_uids: bool  # calls run as a uid of their worker's own (the service runs as root)
    private_tmp: bool  # /tmp, /var/tmp, /dev/shm are the call's scratch dir, /run is hidden, IPC is private
    isolation: Literal["strong", "namespaces", "weak"] | None = (
        None  # the weakest in effect; None: none alive
    )
    weak_because: str = ""  # what a weak worker lacks
    cgroup: Literal["v2", "v1", "none"] | None = None  # the call cgroups in effect; None while none is alive
    cgroup_because: str = ""  # why there is none


class _Worker:
    """One zygote process and the service's end of its pipes."""

    def __init__(self, index: int, cgroup_support: cgroups.CgroupSupport | None = None) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}
        self.cgroup_support = cgroup_support or cgroups.CgroupSupport("none")
        self.cgroup: cgroups.CgroupFiles | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, network: NetworkMode, scratch_root: Path, allow_weak: bool = False) -> None:
        """Start the zygote and read its hello; SandboxError if it does not come up, or comes up with weak
        isolation unless ``allow_weak``."""
        try:
            self.cgroup = cgroups.create(self.cgroup_support, self.index)
        except OSError as error:
            raise SandboxError(f"sandbox worker {self.index} did not start: its cgroup: {error}") from error
        spec = json.dumps(self.cgroup.to_json()) if self.cgroup else ""
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                *ZYGOTE_FLAGS,
                *(
                    zygote.__file__,
                    str(self.index),
                    network,
                    str(scratch_root),
                    _sandbox_range_accounts(),
                    spec,
                ),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=ZYGOTE_ENV,
                start_new_session=True,  # a Ctrl-C meant for the service must not kill a zygote mid-cleanup
            )
        except OSError as error:
            await self.stop(graceful=False)
            raise SandboxError(f"sandbox worker {self.index} did not start: {error}") from error
        try:
            frame = await asyncio.wait_for(self._read_frame(self.process, MAX_HEADER), START_SECONDS)
            hello = json.loads(frame)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, _WorkerLost, ValueError) as error:
            hello = {"error": f"no hello ({type(error).__name__}: {error})"}
        if "error" not in hello and hello.get("isolation") not in ("strong", "namespaces") and not allow_weak:
            hello = {"error": f"{WEAK_REFUSED} ({hello.get('weak_because', 'unknown')})"}
        if "error" in hello:
            await self.stop(graceful=False)
            raise SandboxError(f"sandbox worker {self.index} did not start: {hello['error']}")
        self.hello = hello

    async def call(self, request: bytes, timeout: float, output_bytes: int) -> ExecResult:
        """Send one request and read its answer; _WorkerLost if none comes within ``timeout`` seconds."""
        process = self.process
        if process is None:
            raise _WorkerLost("is stopped")
        assert process.stdin is not None
        try:
            # Written here, not in the task wait_for makes: the zygote starts one event-loop turn sooner.
            process.stdin.write(zygote.FRAME.pack(len(request)) + request)
            return await asyncio.wait_for(self._exchange(process, output_bytes), timeout)
        except asyncio.TimeoutError:
            raise _WorkerLost(f"did not answer within {timeout:g} s") from None
        except (asyncio.IncompleteReadError, ConnectionError):
            raise _WorkerLost("died") from None
        except (ValueError, KeyError, TypeError) as error:
            raise _WorkerLost(f"sent a malformed answer ({error})") from None

    async def _exchange(self, process: asyncio.subprocess.Process, output_bytes: int) -> ExecResult:
        assert process.stdin is not None
        await process.stdin.drain()
        header = json.loads(await self._read_frame(process, MAX_HEADER))
        output = await self._read_frame(process, output_bytes)
        if header["verdict"] not in VERDICTS:
            raise ValueError(f"unknown verdict {header['verdict']!r}")
        split = header["stdout_bytes"]
        return ExecResult(
            verdict=header["verdict"],
            stdout=output[:split].decode(errors="replace"),
            stderr=output[split:].decode(errors="replace"),
            exit_status=header["exit_status"],
            wall_seconds=header["wall_seconds"],
            cpu_seconds=header["cpu_seconds"],
        )

    @staticmethod
    async def _read_frame(process: asyncio.subprocess.Process, most: int) -> bytes:
        assert process.stdout is not None
        (size,) = zygote.FRAME.unpack(await process.stdout.readexactly(zygote.FRAME.size))
        if size > most:
            raise _WorkerLost(f"sent a {size}-byte frame where at most {most} fit")
        return await process.stdout.readexactly(size)

    async def stop(self, *, graceful: bool) -> None:
        """End the zygote: close its stdin (it kills its call and exits), SIGKILL it when not ``graceful``
        or still there after STOP_SECONDS; then remove its cgroup. Safe to call twice."""
        process, self.process = self.process, None
        try:
            if process is not None:
                await self._end(process, graceful)
        finally:
            directories, self.cgroup = (self.cgroup.directories if self.cgroup else ()), None
            if directories:
                await asyncio.to_thread(cgroups.remove, directories)

    @staticmethod
    async def _end(process: asyncio.subprocess.Process, graceful: bool) -> None:
        assert process.stdin is not None
        process.stdin.close()
        if graceful:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), STOP_SECONDS)
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                # not process.kill(): its poll() would reap a zygote that just died under the child watcher
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()


@dataclass
class _Call:
    """A call waiting for, or running on, a worker; ``answer`` is settled exactly once."""

    code: str
    limits: Limits
    answer: asyncio.Future[ExecResult]

    def settle(self, result: ExecResult) -> None:
        if not self.answer.done():
            self.answer.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.answer.done():
            self.answer.set_exception(error)


def remove_abandoned_scratch_roots(directory: str | None = None) -> list[Path]:
    """Remove the scratch roots (``orch-sandbox-PID-*`` in ``directory``, default the temp dir) whose pool's
    process is gone, e.g. a Ray actor that was SIGKILLed before it could close its pool; the removed paths.
    A root whose PID is alive, even if reused by another process, is left alone."""
    removed = []
    for root in Path(directory or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = root.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


@functools.lru_cache(maxsize=256)
def _limits_json(limits: Limits) -> dict[str, Any]:
    """``limits`` as the zygote reads them; cached, since asdict() costs more than the rest of a request
    (callers must not change the dict)."""
    return asdict(limits)


@functools.cache
def _sandbox_range_accounts() -> str:
    """The real accounts among the sandbox uids, comma-separated: zygotes skip them. Looked up here, once,
    so that no zygote loads the NSS libraries (each mapping makes every fork of it dearer)."""
    if os.geteuid() != 0:
        return ""
    accounts = []
    for uid in range(zygote.UID_BASE, zygote.UID_BASE + zygote.UID_SPAN):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            continue
        accounts.append(str(uid))
    return ",".join(accounts)


def _abandoned(reason: str, started: float) -> ExecResult:
    return ExecResult.abandoned(f"sandbox: {reason}", started)


class SandboxPool:
    """Runs snippets on ``workers`` warm zygotes (see the module docstring); use ``async with`` or
    ``start``/``close``."""

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        *,
        default_limits: Limits = DEFAULT_LIMITS,
        network: NetworkMode = "auto",
        allow_weak_isolation: bool = False,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers: must be a positive integer, got {workers!r}")
        if network not in NETWORK_MODES:
            raise ValueError(f"network: must be one of {', '.join(NETWORK_MODES)}, got {network!r}")
        default_limits.check_within(MAX_LIMITS)
        self.default_limits = default_limits
        self._network: NetworkMode = network
        self.allow_weak_isolation = allow_weak_isolation
        self._workers = [_Worker(index) for index in range(workers)]
        self._queue: asyncio.Queue[_Call | None] = asyncio.Queue()  # FIFO; None tells a driver to stop
        self._drivers: list[asyncio.Task[None]] = []
        self._call_ids = itertools.count()
        self._state: Literal["new", "started", "closed"] = "new"
        self._scratch_root: Path | None = None
        self._running = self._restarts = 0
        self._cgroup_support = cgroups.CgroupSupport("none", because="the pool has not started")

    @property
    def scratch_root(self) -> Path | None:
        """The root-owned directory that holds each call's scratch directory while it runs."""
        return self._scratch_root

    @property
    def worker_pids(self) -> list[int | None]:
        """The PID of each worker's process as the service sees it (None while stopped); with a PID
        namespace the zygote proper is its only child."""
        return [worker.process.pid if worker.alive and worker.process else None for worker in self._workers]

    @property
    def stats(self) -> SandboxStats:
        """Workers alive, calls running and waiting, restarts and the isolation in effect, right now."""
        alive = [worker.hello for worker in self._workers if worker.alive]
        return SandboxStats(
            workers=len(self._workers),
            workers_alive=len(alive),
            calls_running=self._running,
            calls_waiting=self._queue.qsize(),
            worker_restarts=self._restarts,
            network=min((hello["network"] for hello in alive), default=None),  # "block" < "namespace"
            separate_uids=bool(alive) and all(hello["as_root"] for hello in alive),
            private_tmp=bool(alive) and all(hello["private_tmp"] for hello in alive),
            isolation=max(
                (hello["isolation"] for hello in alive), key=ISOLATION_RANK.__getitem__, default=None
            ),
            weak_because="; ".join(sorted({hello["weak_because"] for hello in alive} - {""})),
            cgroup=min((hello["cgroup"] for hello in alive), default=None),  # "none" < "v1" < "v2"
            cgroup_because=self._cgroup_support.because if alive else "",
        )

    @property
    def cgroup_directories(self) -> list[tuple[str, ...]]:
        """Each worker's cgroup directories (v1: memory, then pids; v2: one); () for none."""
        return [
            worker.cgroup.directories if worker.cgroup else () for worker in self._workers if worker.alive
        ]

    async def start(self) -> None:
        """Start every worker; SandboxError (and nothing left running) if one does not come up."""
        if self._state != "new":
            raise SandboxError(f"the sandbox pool is already {self._state}")
        self._state = "started"
        await asyncio.to_thread(remove_abandoned_scratch_roots)
        self._cgroup_support = await asyncio.to_thread(cgroups.detect)
        await asyncio.to_thread(cgroups.remove_abandoned, self._cgroup_support)
        for worker in self._workers:
            worker.cgroup_support = self._cgroup_support
        self._scratch_root = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
        self._scratch_root.chmod(0o711)
        results = await asyncio.gather(
            *(
                worker.start(self._network, self._scratch_root, self.allow_weak_isolation)
                for worker in self._workers
            ),
            return_exceptions=True,
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await self.close()
            raise failures[0]
        self._drivers = [asyncio.ensure_future(self._drive(worker)) for worker in self._workers]

    async def execute(self, code: str, limits: Limits | None = None) -> ExecResult:
        """Run ``code`` in a fresh confined process on the next free worker. A failing snippet is a verdict,
        never an exception; ValueError means limits above MAX_LIMITS or code above MAX_CODE_BYTES, and
        SandboxError a pool that is not running."""
        if limits is None:
            limits = self.default_limits
        limits.check_within(MAX_LIMITS)
        size = len(code.encode("utf-8", "surrogatepass"))
        if size > MAX_CODE_BYTES:
            raise ValueError(f"code: {size} bytes is above the maximum {MAX_CODE_BYTES}")
        if self._state != "started":
            raise SandboxError("the sandbox pool is not running; start it first (or use async with)")
        call = _Call(code, limits, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(call)
        return await asyncio.shield(call.answer)  # a cancelled caller leaves the call to run and be answered

    async def close(self) -> None:
        """Stop the workers (a running call is answered "killed") and remove the scratch root."""
        if self._state == "closed":
            return
        self._state = "closed"
        await asyncio.gather(*(worker.stop(graceful=True) for worker in self._workers))
        while not self._queue.empty():  # calls no driver took yet
            call = self._queue.get_nowait()
            if call is not None:
                call.settle(_abandoned("the pool was closed before the call started", time.monotonic()))
        for _ in self._drivers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._drivers)  # each answers the call it holds, if any, first
        # again: a driver may have been replacing its worker while the first round ran
        await asyncio.gather(*(worker.stop(graceful=True) for worker in self._workers))
        if self._scratch_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._scratch_root, ignore_errors=True)

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _drive(self, worker: _Worker) -> None:
        """Feed ``worker`` the next queued call as soon as it answers the last one (no hand-over through
        the event loop: the round trip is the zygote's idle time), until told to stop."""
        while (call := await self._queue.get()) is not None:
            self._running += 1
            try:
                call.settle(await self._run_on(worker, call.code, call.limits))
            except Exception as error:  # a bug here must still answer the call, and not stop the driver
                call.fail(error)
            finally:
                self._running -= 1

    async def _run_on(self, worker: _Worker, code: str, limits: Limits) -> ExecResult:
        started = time.monotonic()
        if self._state == "closed":
            return _abandoned("the pool was closed before the call started", started)
        assert self._scratch_root is not None
        scratch = self._scratch_root / f"call-{next(self._call_ids)}"
        request = json.dumps({"code": code, "scratch": str(scratch), "limits": _limits_json(limits)}).encode()
        try:
            if not worker.alive:
                await self._replace(worker)
            return await worker.call(request, limits.wall_seconds + ANSWER_GRACE, limits.output_bytes)
        except SandboxError as error:
            return _abandoned(str(error), started)
        except _WorkerLost as lost:
            await worker.stop(graceful=False)
            if self._state == "closed":
                reason = "the pool was closed during the call"
            else:
                reason = f"worker {worker.index} {lost}; the call was abandoned"
                try:
                    await self._replace(worker)  # the new zygote kills what the old one's call left running
                except SandboxError as error:
                    reason = f"{reason}; {error}"
            await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
            return _abandoned(reason, started)

    async def _replace(self, worker: _Worker) -> None:
        await worker.stop(graceful=False)
        assert self._scratch_root is not None
        await worker.start(self._network, self._scratch_root, self.allow_weak_isolation)
        self._restarts += 1

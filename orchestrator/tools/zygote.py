"""The zygote of one sandbox worker: a warm interpreter that forks a fresh child for every call.

``orchestrator.tools.sandbox`` starts it as
``python -I -S -B zygote.py INDEX NETWORK SCRATCH_ROOT ACCOUNTS CGROUP`` (ACCOUNTS: the real accounts'
uids among the sandbox uids, comma-separated; CGROUP: the worker's cgroup files as JSON, or "") and talks
to it in frames on stdin/stdout (a 4-byte big-endian length, then that many bytes): a JSON hello, then
for each JSON request (code, scratch, limits) a JSON header frame and an output frame (stdout bytes, then
stderr bytes), written together. End of stdin means the service is gone: the zygote kills its call and
exits. It imports only the standard library, so it starts fast and a snippet sees no orch code.

At start the zygote enters its namespaces: as root a mount and a network namespace; without root, where the
kernel allows, a user namespace first (its uid mapped to 0 there, setgroups denied, as bubblewrap does)
that gives it the same. Then it enters a PID namespace by forking: the child is the zygote proper, PID 1
there, with a /proc of its own (hidepid=2) and the whole file system read-only; the parent only waits for
it (it is the process the service started, and the child dies with it). The isolation it reached is its
hello's ``isolation``: "strong" (all of the above and a cgroup), "namespaces" (all of the above) or "weak"
(``weak_because`` says what is missing).

With a CGROUP (made by the service, see ``tools.cgroup``) the zygote opens its control files first. Before
each call it writes the call's ``memory_bytes`` and ``processes`` there (the memory limit is also memsw's on
v1; swap is 0 on v2); the call's child moves itself in before anything else, so the call as a whole, all
it forks included, is held to them; an OOM kill in the cgroup during the call makes the verdict "memory".

Per call the child starts a new session; with namespaces it gets private mount and IPC namespaces with a
tmpfs of its own as /tmp, /var/tmp, /dev/shm, cwd and HOME (weak: a fresh SCRATCH_ROOT/call-N directory);
it applies the rlimits, drops to the worker's own uid (no groups) or, in a user namespace, drops every
capability, sets no new privileges and runs the snippet in a fresh ``__main__``, writing stdout and
stderr to sealed memory files. The zygote enforces the wall clock, kills every process left in its PID
namespace (weak: as the worker's uid), reaps them, reads at most ``output_bytes`` of output and removes
the scratch directory, if any, before it answers.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import linecache
import math
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types
from collections.abc import Iterable
from typing import Any, NamedTuple, NoReturn

FRAME = struct.Struct("!I")
SNIPPET = "<snippet>"
UID_BASE = 61000  # sandbox uids: UID_BASE .. UID_BASE + UID_SPAN - 1, skipping any listed in /etc/passwd
UID_SPAN = 1000
LOCK_DIR = "/run/orch-sandbox"  # <uid>.lock, flocked by the zygote using that uid: pools never share a uid
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable: each call sees its own scratch there
HIDDEN = ("/run",)  # where host services keep their Unix sockets (PostgreSQL, MySQL, D-Bus): emptied
PRELOAD = (
    "bisect", "cmath", "collections", "copy", "datetime", "decimal", "fractions", "functools",
    "heapq", "itertools", "json", "math", "operator", "random", "re", "statistics", "string", "typing",
)  # fmt: skip
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
STATUS_FD = 3  # the child's side channel to the zygote: one flag byte
MEMORY, SETUP_FAILED = b"M", b"S"
REAP_SECONDS = 2.0  # how long killed processes get to disappear
LIVE_STATES = frozenset("RSD")  # running, sleeping, in a system call: may still fork or resume others

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x1000, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = (
    1,
    4,
    24,
    36,
    38,
)
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12+)
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1
CAPABILITY_VERSION_3 = 0x20080522
AF_UNIX = 1

# What the "block" network mode refuses: name lookups, non-Unix sockets, running programs (a fresh process
# would not carry the hook) and ctypes (it could call libc directly). Best effort, not a kernel boundary.
_REFUSED_EVENTS = frozenset(
    {"socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
     "os.exec", "os.posix_spawn", "os.system", "subprocess.Popen"}
)  # fmt: skip
_REFUSED_IMPORTS = frozenset({"_posixsubprocess"})

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up once, with their argument types, so that a call's child finds them ready (see _Plan).
_unshare, _mount, _libc_prctl = _libc.unshare, _libc.mount, _libc.prctl
_unshare.argtypes = [ctypes.c_int]
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


# capset(2) arguments that clear every capability, made once: a call's child in a user namespace uses them.
_NO_CAPS = (ctypes.pointer(_CapHeader(CAPABILITY_VERSION_3, 0)), (_CapData * 2)())
_capset = _libc.capset
_NULL = [-1]  # an fd open on /dev/null, each call's stdin (set by prepare())
_SHARED_TMP_BINDS: tuple[bytes, ...] = ()  # the SHARED_TMP directories besides /tmp that exist (prepare())
_STD_STREAMS: tuple[Any, Any, Any] = (None, None, None)  # set by prepare()
_ZYGOTE_STREAMS: tuple[Any, Any, Any] = (None, None, None)
CGROUP_FD_FLOOR = 10  # the cgroup files' fds sit at or above it, clear of the child's fds 0-3


class _Cgroup(NamedTuple):
    """The worker's cgroup control files, opened before the file system turns read-only (fds)."""

    procs: tuple[int, ...]
    memory_limits: tuple[int, ...]
    pids_max: int
    oom_events: int
    peak: int  # -1 where there is none
    reset_peak: bool  # v1: memory.max_usage_in_bytes is reset by writing 0


_CGROUP: list[_Cgroup | None] = [None]
_CGROUP_SET: dict[str, int] = {}  # the limits last written, so a call with the same ones writes nothing


class Worker(NamedTuple):
    """What the zygote found it may do; sent to the service as the hello."""

    uid: int
    gid: int
    as_root: bool
    network: str  # "namespace" | "block"
    private_tmp: bool
    user_namespace: bool  # without root: the zygote is uid 0 of a user namespace of its own
    pid_namespace: bool  # the zygote is PID 1 of a PID namespace with its own /proc, and / is read-only
    isolation: str  # "strong" (namespaces and a cgroup per call) | "namespaces" | "weak"
    weak_because: str  # what is missing, "" when the isolation is "namespaces" or "strong"
    cgroup: str  # "v2" | "v1" | "none": where the call's memory and processes are limited as a whole


# ---- frames ---------------------------------------------------------------------------------------


def read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``, or None at end of file."""
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def write_frames(fd: int, *payloads: bytes) -> None:
    """Write frames in one go (the reader wakes once); all of them or an OSError."""
    view = memoryview(b"".join(part for payload in payloads for part in (FRAME.pack(len(payload)), payload)))
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> bytes | None:
    """The next frame's payload, or None when the other side closed the pipe."""
    head = read_exactly(fd, FRAME.size)
    return None if head is None else read_exactly(fd, FRAME.unpack(head)[0])


# ---- privileged setup -----------------------------------------------------------------------------


def _checked(result: int, name: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{name}: {os.strerror(code)}")


def _call(name: str, *args: Any) -> None:
    _checked(getattr(_libc, name)(*args), name)


def _prctl(option: int, value: int) -> None:
    _checked(_libc_prctl(option, value, 0, 0, 0), "prctl")


def _bind(source: str, target: str) -> None:
    _call("mount", source.encode(), target.encode(), None, MS_BIND | MS_REC, None)


def _claim_uid(index: int, accounts: frozenset[int]) -> int:
    """A free sandbox uid that is none of ``accounts``, held by an flock on its lock file for as long as
    this process lives."""
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    for offset in range(UID_SPAN):
        uid = UID_BASE + (index + offset) % UID_SPAN
        if uid in accounts:
            continue
        fd = os.open(f"{LOCK_DIR}/{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return uid
    raise OSError(f"no free sandbox uid in {UID_BASE}..{UID_BASE + UID_SPAN - 1}")


def _closed_ancestor(path: str) -> str | None:
    """The first directory above ``path`` that other users cannot enter (e.g. /root for a pyenv Python)."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    for depth in range(len(parts) + 1):
        ancestor = os.sep + os.sep.join(parts[:depth])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _outermost(paths: Iterable[str]) -> list[str]:
    """``paths`` without those inside another of them."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path.startswith(outer + os.sep) for outer in kept):
            kept.append(path)
    return kept


def _tmpfs(path: str) -> None:
    _call("mount", b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755")


def _cover(hide: Iterable[str], keep: Iterable[str]) -> None:
    """Replace each directory of ``hide`` with an empty tmpfs, then bind back the ``keep`` paths inside it."""
    kept = _outermost(keep)
    for cover in _outermost(hide):
        inside = [path for path in kept if path.startswith(cover + os.sep)]
        handles = [os.open(path, os.O_PATH | os.O_CLOEXEC) for path in inside]
        _tmpfs(cover)
        for path, handle in zip(inside, handles, strict=True):
            os.makedirs(path, exist_ok=True)
            _bind(f"/proc/self/fd/{handle}", path)  # the path as it was before the tmpfs covered it
            os.close(handle)


def _private_mounts(scratch_root: str) -> bool:
    """Enter a mount namespace of our own whose changes never reach the host: HIDDEN and any directory
    that bars the sandbox uids from this Python or the scratch root are emptied, those two bound back in.
    False where the kernel refuses."""
    try:
        _call("unshare", CLONE_NEWNS)
        _call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    except OSError:
        return False
    python = {sys.base_prefix, sys.prefix, sys.exec_prefix, *filter(os.path.isdir, sys.path)}
    keep = [scratch_root, *(path for path in python if os.path.isabs(path))]
    closed = (_closed_ancestor(path) for path in keep)
    _cover([*filter(os.path.isdir, HIDDEN), *filter(None, closed)], keep)
    return True


def _user_namespace() -> bool:
    """Enter a user namespace of our own where our uid and gid are 0 (setgroups denied), so that we may
    make the other namespaces without root; False where the kernel refuses."""
    uid, gid = os.getuid(), os.getgid()
    try:
        _call("unshare", CLONE_NEWUSER)
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as file:
                file.write(text)
    except OSError:
        return False
    return True


def _pid_namespace() -> bool:
    """Become PID 1 of a new PID namespace: unshare, then fork; this parent waits for the child and exits
    with it (it is the process the service started), the child returns True. Every process of the
    namespace dies with its PID 1, and PID 1 dies with this parent (PDEATHSIG). False where refused."""
    try:
        _call("unshare", CLONE_NEWPID)
    except OSError:
        return False
    pid = os.fork()
    if pid:
        for fd in (0, 1):  # the child answers the service; EOF must reach the service once the child is gone
            os.close(fd)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # A /proc for this namespace: the host's processes and their command lines are not in it; hidepid=2
    # hides the zygote too from a call (another uid, or without capabilities while it is not dumpable).
    _call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"hidepid=2")
    return True


def _read_only_root() -> bool:
    """Make every mount of our mount namespace read-only (mounts made later, a call's tmpfs, are not):
    no call may change a file of the host, the service's own package among them. False where refused."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    result = _libc.syscall(
        SYS_MOUNT_SETATTR,
        AT_FDCWD,
        b"/",
        AT_RECURSIVE,
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    return result == 0


def _drop_bounding_set() -> None:
    """Empty the capability bounding set: nothing a call runs may gain a capability (done once: a call's
    child then only has to clear its own capabilities)."""
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    for capability in range(last + 1):
        _prctl(PR_CAPBSET_DROP, capability)


def _pin_to_one_cpu(slot: int) -> None:
    """Keep this zygote and its calls on one of the CPUs we may use (``slot`` modulo their number). A fork
    write-protects the zygote's memory, which flushes the TLB of every CPU the zygote ran on; on one CPU
    that flush stays local and caches stay warm (measured: ~9% more calls/s on 2 cores in a VM)."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[slot % len(cpus)]})


def _network_namespace() -> bool:
    """Enter an empty network namespace (only a loopback, left down); False where the kernel refuses."""
    try:
        _call("unshare", CLONE_NEWNET)
    except OSError:
        return False
    return True


def _add_site_packages() -> None:
    """Put the installation's site-packages on sys.path, as ``site`` would, without running its .pth files:
    the zygote runs with ``-S`` because what they import (threading, say) would make every fork dearer,
    and snippets need not see editable installs (orch itself among them)."""
    import site  # under -S this only defines functions

    sys.path.extend(path for path in site.getsitepackages() if os.path.isdir(path) and path not in sys.path)


def _open_cgroup(spec: dict[str, Any]) -> _Cgroup:
    """Open the control files of ``spec`` (``tools.cgroup.CgroupFiles`` as JSON) above CGROUP_FD_FLOOR;
    set no swap on v2."""

    def opened(path: str, flags: int) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CGROUP_FD_FLOOR)
        os.close(fd)
        return moved

    if spec["swap_max"]:
        fd = opened(spec["swap_max"], os.O_WRONLY)
        os.write(fd, b"0")
        os.close(fd)
    return _Cgroup(
        tuple(opened(path, os.O_WRONLY) for path in spec["procs"]),
        tuple(opened(path, os.O_WRONLY) for path in spec["memory_limits"]),
        opened(spec["pids_max"], os.O_WRONLY),
        opened(spec["oom_events"], os.O_RDONLY),
        opened(spec["peak"], os.O_RDWR if spec["kind"] == "v1" else os.O_RDONLY) if spec["peak"] else -1,
        spec["kind"] == "v1",
    )


def _set_cgroup_limits(cgroup: _Cgroup, limits: dict[str, Any]) -> None:
    """Write the call's memory and processes limits where they differ from the last call's; reset the peak."""
    memory, processes = limits["memory_bytes"], limits["processes"]
    if _CGROUP_SET.get("memory") != memory:
        _CGROUP_SET.pop("memory", None)
        value = str(memory).encode()
        try:
            for fd in cgroup.memory_limits:
                os.pwrite(fd, value, 0)
        except OSError as error:  # v1: the limit may not rise above memsw's, nor memsw fall below it
            if error.errno != errno.EINVAL or len(cgroup.memory_limits) == 1:
                raise
            for fd in reversed(cgroup.memory_limits):
                os.pwrite(fd, value, 0)
        _CGROUP_SET["memory"] = memory
    if _CGROUP_SET.get("processes") != processes:
        _CGROUP_SET.pop("processes", None)
        os.pwrite(cgroup.pids_max, str(processes).encode(), 0)
        _CGROUP_SET["processes"] = processes
    if cgroup.reset_peak:
        os.pwrite(cgroup.peak, b"0", 0)


def _oom_kills(cgroup: _Cgroup) -> int:
    """The cgroup's OOM-kill counter (the "oom_kill N" line of memory.oom_control or memory.events)."""
    for line in os.pread(cgroup.oom_events, 4096, 0).decode().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def _enter_cgroup() -> str:
    """Move this process (the call's child) into the worker's cgroup(s); "" or why it could not."""
    cgroup = _CGROUP[0]
    if cgroup is None:
        return ""
    try:
        for fd in cgroup.procs:
            os.write(fd, b"0")
    except OSError as error:
        return f"cannot enter the call's cgroup: {error}"
    return ""


def prepare(
    index: int,
    network: str,
    scratch_root: str,
    accounts: frozenset[int] = frozenset(),
    cgroup: dict[str, Any] | None = None,
) -> Worker:
    """Set this zygote up once: open its cgroup, preload modules, claim a uid, kill its leftovers, enter
    namespaces."""
    if cgroup is not None:  # first: before a user namespace or a read-only file system
        _CGROUP[0] = _open_cgroup(cgroup)
    _add_site_packages()
    for name in PRELOAD:
        __import__(name)
    os.umask(0o022)
    as_root = os.geteuid() == 0
    user_namespace = not as_root and network != "block" and _user_namespace()
    uid = _claim_uid(index, accounts) if as_root else os.getuid()
    gid = uid if as_root else os.getgid()
    if as_root:
        _kill_uid(uid)  # whatever an earlier zygote with this uid left behind
    elif user_namespace:
        uid = gid = 0
    _pin_to_one_cpu(uid - UID_BASE if as_root else index)
    private_tmp = (as_root or user_namespace) and _private_mounts(scratch_root)
    isolated = network != "block" and _network_namespace()
    if network == "namespace" and not isolated:
        raise OSError("the kernel refused a network namespace (unshare CLONE_NEWNET); use network='block'")
    pid_namespace = private_tmp and _pid_namespace() and _read_only_root()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a call come back to us, so we can reap them
    if private_tmp:
        _set_environment("/tmp")  # each call's /tmp is its scratch dir: set once here, not per call
    if user_namespace:
        _drop_bounding_set()
        _prctl(PR_SET_DUMPABLE, 0)  # so a call without capabilities can neither see nor trace the zygote
    missing = [
        what
        for what, there in (
            (
                "no user namespace (not root, and the kernel refused an unprivileged one)",
                as_root or user_namespace,
            ),
            ("no network namespace", isolated),
            ("no private mount namespace", private_tmp),
            ("no PID namespace with a read-only file system", pid_namespace),
        )
        if not there
    ]
    global _STD_STREAMS, _ZYGOTE_STREAMS, _SHARED_TMP_BINDS
    _SHARED_TMP_BINDS = tuple(path.encode() for path in SHARED_TMP[1:] if os.path.isdir(path))
    _NULL[0] = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    _STD_STREAMS = _std_streams()
    _ZYGOTE_STREAMS = (sys.stdin, sys.stdout, sys.stderr)  # so that a child replacing them frees nothing
    gc.collect()
    gc.freeze()  # children's collections skip what is here now, so they copy fewer pages on write
    level = "weak" if missing else ("strong" if cgroup is not None else "namespaces")
    return Worker(
        uid,
        gid,
        as_root,
        "namespace" if isolated else "block",
        private_tmp,
        user_namespace,
        pid_namespace,
        level,
        "; ".join(missing),
        cgroup["kind"] if cgroup is not None else "none",
    )


# ---- killing and reaping --------------------------------------------------------------------------


def _state_if_owned(pid: int, uid: int) -> str | None:
    """The state letter of process ``pid`` (R, S, D, T, Z...) if its real uid is ``uid``."""
    try:
        with open(f"/proc/{pid}/status") as file:
            fields = dict(line.split(":", 1) for line in file)
    except (OSError, ValueError):
        return None
    return fields["State"].split()[0] if int(fields["Uid"].split()[0]) == uid else None


def _processes_of(uid: int) -> dict[int, str]:
    """The state letter of every process whose real uid is ``uid``."""
    states = {int(name): _state_if_owned(int(name), uid) for name in os.listdir("/proc") if name.isdigit()}
    return {pid: state for pid, state in states.items() if state}


def _signal_owned(pid: int, uid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` if it still runs as ``uid``; a pidfd pins the process against pid reuse."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        if _state_if_owned(pid, uid):
            signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process running as ``uid``. Stop them all first: a stopped process can neither fork
    nor resume another, so a fork bomb cannot outrun the kill, and no snippet can block root's signals."""
    deadline = time.monotonic() + REAP_SECONDS
    while time.monotonic() < deadline:
        live = [pid for pid, state in _processes_of(uid).items() if state in LIVE_STATES]
        if not live:
            break
        for pid in live:
            _signal_owned(pid, uid, signal.SIGSTOP)
    for pid in _processes_of(uid):
        _signal_owned(pid, uid, signal.SIGKILL)


def _children() -> list[int]:
    """Our children: the call's processes, orphans included (we are their subreaper)."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as file:
            return [int(pid) for pid in file.read().split()]
    except FileNotFoundError:  # a kernel built without CONFIG_PROC_CHILDREN
        return []


def _kill_call(worker: Worker, pid: int) -> None:
    """SIGKILL the call's processes: in a PID namespace all but us (at once: no fork bomb outruns it), else
    as root every process of the worker's uid, otherwise the child's session and every child of ours."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # it may not have dropped privileges yet
    if worker.pid_namespace:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # from PID 1: every process of the namespace but itself
        return
    if worker.as_root:
        _kill_uid(worker.uid)
        return
    for kill, target in ((os.killpg, pid), *((os.kill, child) for child in _children())):
        with contextlib.suppress(ProcessLookupError):
            kill(target, signal.SIGKILL)


def _reap(deadline: float) -> tuple[float, bool]:
    """Reap children until none is left or, once none has exited, the deadline has passed; the CPU seconds
    of those reaped, and whether any is left."""
    cpu = 0.0
    while True:
        try:
            pid, _, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return cpu, False
        if pid:
            cpu += usage.ru_utime + usage.ru_stime
        elif time.monotonic() >= deadline:
            return cpu, True
        else:
            time.sleep(0.001)


def _end_call(worker: Worker, pid: int) -> float:
    """Kill and reap whatever the call left running; the CPU seconds of what was reaped. Without root each
    pass reaches one more generation of escaped processes, as their orphans come to us."""
    cpu, running = _reap(0.0)
    deadline = time.monotonic() + REAP_SECONDS
    while running and time.monotonic() < deadline:
        _kill_call(worker, pid)
        more, running = _reap(time.monotonic() + 0.05)
        cpu += more
    return cpu


def remove_tree(path: str) -> None:
    """Remove ``path`` and all it holds, never following a symlink; what cannot be removed stays.
    (shutil.rmtree would load bz2, lzma and zlib into the zygote: every fork copies their mappings.)"""
    with contextlib.suppress(OSError):
        for _, dirs, files, fd in os.fwalk(path, topdown=False, onerror=lambda error: None):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
            for name in dirs:
                try:
                    os.rmdir(name, dir_fd=fd)
                except NotADirectoryError:  # a symlink to a directory
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=fd)
                except OSError:
                    pass
        os.rmdir(path)


# ---- one call -------------------------------------------------------------------------------------


def _output_file(name: str, cap: int) -> int:
    """A memory file of more than ``cap`` bytes that can neither grow nor shrink. The call writes its stdout
    or stderr there: the zygote need not wake up to drain a pipe, and a write past the end fails, so
    output beyond the cap costs neither time nor memory. The size is whole pages because the kernel
    refuses the whole of a page-sized piece of a write that crosses the end: so every write fills the
    file up to its end, and more than ``cap`` bytes written always shows."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, -(-(cap + 1) // PAGE_SIZE) * PAGE_SIZE)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


def _written(fd: int) -> int:
    """How far the call wrote into an output file: its offset, which the call's fd shares with ours."""
    return os.lseek(fd, 0, os.SEEK_CUR)


def _wait(pidfd: int, deadline: float) -> str:
    """Wait until the child exits ("exited"), the wall clock runs out ("timeout") or the service goes away
    ("gone")."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(0, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        for fd, _ in poller.poll(left * 1000):
            return "exited" if fd == pidfd else "gone"


def _verdict(
    ending: str, status: int, flag: bytes, truncated: bool, cpu: float, cpu_limit: float, oom: bool = False
) -> str:
    if ending == "timeout":
        return "timeout"
    if truncated:
        return "output_truncated"
    if flag == SETUP_FAILED:
        return "killed"
    if flag == MEMORY or oom:  # oom: the kernel killed a process of the call's cgroup for memory
        return "memory"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        over_cpu = signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu >= cpu_limit)
        return "timeout" if over_cpu else "killed"
    return "ok" if os.WEXITSTATUS(status) == 0 else "error"


def serve(worker: Worker, request: dict[str, Any]) -> tuple[dict[str, Any], bytes] | None:
    """Run one call; its header and output, or None when the service went away meanwhile."""
    limits, scratch = request["limits"], request["scratch"]
    if not worker.private_tmp:  # otherwise the call's /tmp is a tmpfs of its own: nothing to make here
        os.mkdir(scratch, 0o700)
    cap = limits["output_bytes"]
    stdout, stderr = _output_file("stdout", cap), _output_file("stderr", cap)
    flag = os.memfd_create("flag", os.MFD_CLOEXEC)
    cgroup = _CGROUP[0]
    if cgroup is not None:
        _set_cgroup_limits(cgroup, limits)
    oom_before = _oom_kills(cgroup) if cgroup is not None else 0
    started = time.monotonic()
    work = plan(worker, request)
    pid = os.fork()
    if pid == 0:
        _child(worker, work, (stdout, stderr, flag))
    pidfd = os.pidfd_open(pid)
    ending = _wait(pidfd, started + limits["wall_seconds"])
    if ending != "exited":
        _kill_call(worker, pid)
    _, status, usage = os.wait4(pid, 0)
    wall = time.monotonic() - started
    cpu = usage.ru_utime + usage.ru_stime
    orphans = _end_call(worker, pid)
    oom = cgroup is not None and _oom_kills(cgroup) > oom_before
    sizes = _written(stdout), _written(stderr)
    out = os.pread(stdout, min(sizes[0], cap), 0)
    err = os.pread(stderr, min(sizes[1], cap - len(out)), 0)
    raised = os.pread(flag, 1, 0)
    for fd in (pidfd, stdout, stderr, flag):
        os.close(fd)
    if not worker.private_tmp:
        remove_tree(scratch)
    if ending == "gone":
        return None
    header = {
        "verdict": _verdict(ending, status, raised, sum(sizes) > cap, cpu, limits["cpu_seconds"], oom),
        "exit_status": os.waitstatus_to_exitcode(status),
        "wall_seconds": wall,
        "cpu_seconds": cpu + orphans,
        "stdout_bytes": len(out),
    }
    return header, out + err


# ---- the child ------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """What a call's child does, worked out by the zygote before the fork: each Python object the child
    touches costs it a copy-on-write page fault, so it does as little Python as it can."""

    code: str
    scratch: str
    tmpfs_options: bytes  # for the call's /tmp (private_tmp only)
    rlimits: tuple[tuple[int, tuple[int, int]], ...]


def plan(worker: Worker, request: dict[str, Any]) -> _Plan:
    """The child's work for ``request``: its mount options and rlimits, ready to apply."""
    limits = request["limits"]
    options = f"size={limits['disk_bytes']},mode=0700,uid={worker.uid},gid={worker.gid}".encode()
    return _Plan(request["code"], request["scratch"], options, _rlimits(limits, worker))


def _child(worker: Worker, work: _Plan, files: tuple[int, int, int]) -> NoReturn:
    """The forked child: confine itself, run the snippet, exit. Never returns into the zygote."""
    status = 125
    try:
        for target, fd in enumerate((_NULL[0], *files)):  # every source is >= 3, and 3 is written last
            os.dup2(fd, target)
        not_entered = _enter_cgroup()  # first, so that all the call forks is inside; then its fds go
        os.closerange(STATUS_FD + 1, 2**31 - 1)  # the zygote's pipes to the service among them
        try:
            if not_entered:
                raise OSError(not_entered)
            _confine(worker, work)
        except BaseException as error:
            os.write(STATUS_FD, SETUP_FAILED)
            os.write(2, f"sandbox: could not set up the call: {error}\n".encode())
        else:
            status = _run(work.code)
    finally:
        os._exit(status)


def _confine(worker: Worker, work: _Plan) -> None:
    os.setsid()
    if worker.private_tmp:
        # The call's own tmpfs, of at most disk_bytes, is its /tmp, /var/tmp, /dev/shm, cwd and HOME; it
        # goes away with the call's mount namespace, as its System V IPC objects with its IPC namespace.
        _checked(_unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare")
        _checked(_mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, work.tmpfs_options), "mount")
        for path in _SHARED_TMP_BINDS:
            _checked(_mount(b"/tmp", path, None, MS_BIND | MS_REC, None), "mount")
        os.chdir("/tmp")
    else:
        os.chdir(work.scratch)
    for kind, pair in work.rlimits:
        resource.setrlimit(kind, pair)
    if worker.as_root:
        os.setgroups([])
        os.setresgid(worker.gid, worker.gid, worker.gid)
        os.setresuid(worker.uid, worker.uid, worker.uid)
        _prctl(PR_SET_DUMPABLE, 1)  # the uid change cleared it; without it /proc/self belongs to root
    elif worker.user_namespace:
        _checked(_capset(*_NO_CAPS), "capset")  # uid 0 of our namespace, with no capability left
        _prctl(PR_SET_DUMPABLE, 1)  # the zygote is not dumpable; the call's processes may see each other
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # setuid programs cannot raise privileges again
    if not worker.private_tmp:  # otherwise the zygote's environment is already the call's (HOME=/tmp)
        _set_environment(os.getcwd())
    if worker.network == "block":
        sys.addaudithook(_refuse_network)


def _set_environment(home: str) -> None:
    """PATH, LANG, HOME, TMPDIR and PYTHONDONTWRITEBYTECODE, nothing else (no secret of the service)."""
    os.environ.clear()
    os.environ.update(
        PATH=f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
        LANG="C.UTF-8",
        HOME=home,
        TMPDIR=home,
        PYTHONDONTWRITEBYTECODE="1",
    )


def _rlimits(limits: dict[str, Any], worker: Worker) -> tuple[tuple[int, tuple[int, int]], ...]:
    """The (resource, (soft, hard)) pairs a call runs under; without root, capped at our own hard limits
    (which only root may raise)."""
    as_root = worker.as_root
    cpu = math.ceil(limits["cpu_seconds"])
    wanted = {
        resource.RLIMIT_CORE: (0, 0),
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        resource.RLIMIT_AS: (limits["memory_bytes"],) * 2,
        resource.RLIMIT_NOFILE: (limits["open_files"],) * 2,
        resource.RLIMIT_FSIZE: (limits["disk_bytes"],) * 2,  # no file larger than the call's disk
    }
    if as_root:  # RLIMIT_NPROC counts every process of the real uid: only a uid of its own makes it per call
        wanted[resource.RLIMIT_NPROC] = (limits["processes"],) * 2
        return tuple(wanted.items())
    if worker.user_namespace:  # counted per user namespace: the call's processes, the zygote and its parent
        wanted[resource.RLIMIT_NPROC] = (limits["processes"] + 2,) * 2
    capped = []
    for kind, (soft, hard) in wanted.items():
        ceiling = resource.getrlimit(kind)[1]
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        capped.append((kind, (soft, hard)))
    return tuple(capped)


def _refuse_network(event: str, args: tuple[Any, ...]) -> None:
    if (
        event in _REFUSED_EVENTS
        or event.startswith("ctypes.")
        or (event == "socket.__new__" and args[1] != AF_UNIX)
        or (event == "import" and args[0] in _REFUSED_IMPORTS)
    ):
        raise PermissionError(f"sandbox: network access is blocked ({event})")


def _std_streams() -> tuple[Any, Any, Any]:
    """New stdin, stdout and stderr objects on fds 0-2, as ``python -c`` has them. The zygote makes them
    once and never uses them (its fds 0 and 1 are the service's pipes): each child inherits them unused,
    on its own fds 0-2, which saves it building three io stacks (~100 page faults a call)."""
    stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    stdout, stderr = (
        open(fd, "w", buffering, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        for fd, buffering in ((1, -1), (2, 1))
    )
    return stdin, stdout, stderr


def _open_std() -> None:
    """Make the fresh streams sys.stdin, stdout and stderr."""
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = _STD_STREAMS


def _run(code: str) -> int:
    """Run the snippet as ``python -c`` would, in a fresh ``__main__``; its exit status."""
    main = types.ModuleType("__main__")
    try:  # a tight memory limit may already show here
        _open_std()
        sys.argv = ["-c"]
        sys.path.insert(0, "")
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        linecache.cache[SNIPPET] = (len(code), None, code.splitlines(True), SNIPPET)
        exec(compile(code, SNIPPET, "exec"), main.__dict__)
        _join_threads()
        status = 0
    except SystemExit as exit_:
        status = _exit_status(exit_.code)
    except MemoryError as error:
        os.write(STATUS_FD, MEMORY)
        main.__dict__.clear()  # room to print the traceback
        _print_error(error)
        status = 1
    except BaseException as error:
        _print_error(error)
        status = 1
    for stream in (sys.stdout, sys.stderr, *_STD_STREAMS[1:]):  # as shutdown flushes, even if replaced
        with contextlib.suppress(BaseException):
            stream.flush()
    return status


def _join_threads() -> None:
    """Wait for the snippet's non-daemon threads, as interpreter shutdown would. The zygote does not import
    threading (its after-fork hook costs every call ~120 page faults), so only a snippet that did has any."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _print_error(error: BaseException) -> None:
    """The traceback as Python prints it, without this module's frame."""
    tb = error.__traceback__
    try:
        traceback.print_exception(type(error), error, tb.tb_next if tb else None)
    except BaseException:
        os.write(2, f"{type(error).__name__}\n".encode())


# ---- the zygote -----------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Say hello, then answer requests until stdin closes."""
    try:
        accounts = frozenset(int(uid) for uid in argv[4].split(",") if uid) if len(argv) > 4 else frozenset()
        cgroup = json.loads(argv[5]) if len(argv) > 5 and argv[5] else None
        worker = prepare(int(argv[1]), argv[2], argv[3], accounts, cgroup)
    except Exception as error:
        write_frames(1, json.dumps({"error": str(error)}).encode())
        return
    write_frames(1, json.dumps(worker._asdict()).encode())
    while (request := read_frame(0)) is not None:
        answer = serve(worker, json.loads(request))
        if answer is None:
            return
        header, output = answer
        write_frames(1, json.dumps(header).encode(), output)


if __name__ == "__main__":
    main(sys.argv)

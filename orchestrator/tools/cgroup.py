"""Cgroups for sandbox workers: memory and pids limits for a call as a whole (standard library only).

``detect()`` finds where this process may make child cgroups with the memory and pids controllers:
cgroup v2 with both delegated to our own cgroup (listed in its ``cgroup.subtree_control``), else cgroup v1
with writable ``memory`` and ``pids`` hierarchies, else none (with the reason). ``create()`` makes one
cgroup per sandbox worker (per hierarchy on v1) and returns the ``CgroupFiles`` its zygote opens before
its file system turns read-only: it sets the call's limits there before each call (calls on a worker run
one at a time and everything is killed between them), moves the call's child in, and reads the OOM-kill
counter after the call. ``remove()`` deletes a worker's cgroups once its processes are gone, and
``remove_abandoned()`` those of pools whose process died.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["CGROUP_PREFIX", "CgroupFiles", "CgroupSupport", "create", "detect", "remove", "remove_abandoned"]

CgroupKind = Literal["v2", "v1", "none"]
CGROUP_PREFIX = "orch-sandbox-"  # + the pool's PID + "-w" + worker index + "-" + a counter
REMOVE_SECONDS = 3.0  # for the processes of a killed worker to leave its cgroup
_counter = iter(range(1 << 62))


@dataclass(frozen=True)
class CgroupSupport:
    """Where worker cgroups go: ``parents`` (v2: one directory; v1: the memory then the pids one)."""

    kind: CgroupKind
    parents: tuple[str, ...] = ()
    because: str = ""  # why there is none


@dataclass(frozen=True)
class CgroupFiles:
    """One worker's cgroup control files, as its zygote uses them (JSON on its command line)."""

    kind: CgroupKind
    directories: tuple[str, ...]  # removed, deepest first, when the worker stops
    procs: tuple[str, ...]  # the call's child writes "0" to each: it and all it forks are inside
    memory_limits: tuple[str, ...]  # the memory limit, then (v1 memsw / none on v2) memory plus swap
    swap_max: str  # v2: memory.swap.max, set to 0 once; "" on v1 (memsw above stands for it)
    pids_max: str
    oom_events: str  # v1 memory.oom_control, v2 memory.events: their "oom_kill N" line counts OOM kills
    peak: str  # memory.max_usage_in_bytes (v1, reset per call) or memory.peak (v2); "" if absent

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of each cgroup mount in ``mountinfo``."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return found


def _own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """Controller (or "" for the v2 unified hierarchy) to our cgroup path, from /proc/self/cgroup."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _directory(mount_root: str, mount_point: str, path: str) -> str:
    inside = path[len(mount_root) :] if mount_root != "/" and path.startswith(mount_root) else path
    return os.path.join(mount_point, inside.lstrip("/"))


def _writable_child(parent: str) -> str:
    """'' when a child cgroup can be made (and removed) in ``parent``, else why not."""
    probe = os.path.join(parent, f"{CGROUP_PREFIX}probe-{os.getpid()}-{next(_counter)}")
    try:
        os.mkdir(probe)
    except OSError as error:
        return f"cannot make a child cgroup in {parent}: {error.strerror}"
    with contextlib.suppress(OSError):
        os.rmdir(probe)
    return ""


def detect(
    mountinfo_path: str = "/proc/self/mountinfo", cgroup_path: str = "/proc/self/cgroup"
) -> CgroupSupport:
    """Where this process may make worker cgroups with memory and pids limits, v2 before v1."""
    try:
        with open(mountinfo_path) as file:
            mounts = _mounts(file.read())
        with open(cgroup_path) as file:
            own = _own_cgroups(file.read())
    except OSError as error:
        return CgroupSupport("none", because=f"cannot read the cgroup mounts: {error}")
    reasons = []
    for root, point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        parent = _directory(root, point, own[""])
        try:
            with open(os.path.join(parent, "cgroup.subtree_control")) as file:
                delegated = set(file.read().split())
        except OSError as error:
            reasons.append(f"v2: {error.strerror} reading {parent}/cgroup.subtree_control")
            continue
        if not {"memory", "pids"} <= delegated:
            reasons.append(f"v2: memory and pids are not both in {parent}/cgroup.subtree_control")
            continue
        why = _writable_child(parent)
        if not why:
            return CgroupSupport("v2", (parent,))
        reasons.append(f"v2: {why}")
    parents = []
    for controller in ("memory", "pids"):
        mount = next((m for m in mounts if m[2] == "cgroup" and controller in m[3]), None)
        if mount is None or controller not in own:
            reasons.append(f"v1: no {controller} hierarchy mounted")
            break
        parent = _directory(mount[0], mount[1], own[controller])
        why = _writable_child(parent)
        if why:
            reasons.append(f"v1: {why}")
            break
        parents.append(parent)
    if len(parents) == 2:
        return CgroupSupport("v1", tuple(parents))
    return CgroupSupport("none", because="; ".join(reasons) or "no cgroup hierarchy mounted")


def create(support: CgroupSupport, worker: int) -> CgroupFiles | None:
    """Make the cgroup(s) of sandbox worker ``worker``; None where ``support`` has none. OSError if the
    directories cannot be made (what was made is removed)."""
    if support.kind == "none":
        return None
    name = f"{CGROUP_PREFIX}{os.getpid()}-w{worker}-{next(_counter)}"
    directories = tuple(os.path.join(parent, name) for parent in support.parents)
    made: list[str] = []
    try:
        for directory in directories:
            os.mkdir(directory, 0o700)
            made.append(directory)
    except OSError:
        remove(tuple(made), wait=0.0)
        raise
    if support.kind == "v2":
        (cgroup,) = directories
        peak = os.path.join(cgroup, "memory.peak")
        swap = os.path.join(cgroup, "memory.swap.max")
        return CgroupFiles(
            kind="v2",
            directories=directories,
            procs=(os.path.join(cgroup, "cgroup.procs"),),
            memory_limits=(os.path.join(cgroup, "memory.max"),),
            swap_max=swap if os.path.exists(swap) else "",
            pids_max=os.path.join(cgroup, "pids.max"),
            oom_events=os.path.join(cgroup, "memory.events"),
            peak=peak if os.path.exists(peak) else "",
        )
    memory, pids = directories
    memsw = os.path.join(memory, "memory.memsw.limit_in_bytes")
    return CgroupFiles(
        kind="v1",
        directories=directories,
        procs=(os.path.join(memory, "cgroup.procs"), os.path.join(pids, "cgroup.procs")),
        memory_limits=(
            os.path.join(memory, "memory.limit_in_bytes"),
            *([memsw] if os.path.exists(memsw) else []),
        ),
        swap_max="",
        pids_max=os.path.join(pids, "pids.max"),
        oom_events=os.path.join(memory, "memory.oom_control"),
        peak=os.path.join(memory, "memory.max_usage_in_bytes"),
    )


def remove(directories: tuple[str, ...], wait: float = REMOVE_SECONDS) -> list[str]:
    """Remove cgroup ``directories``, retrying for up to ``wait`` seconds while processes are still leaving
    them; those left behind."""
    deadline = time.monotonic() + wait
    left = [directory for directory in directories if os.path.isdir(directory)]
    while left:
        for directory in list(left):
            try:
                os.rmdir(directory)
                left.remove(directory)
            except FileNotFoundError:
                left.remove(directory)
            except OSError:
                pass
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return left


def remove_abandoned(support: CgroupSupport) -> list[str]:
    """Remove the worker cgroups of pools whose process is gone (e.g. SIGKILLed); the removed paths."""
    removed = []
    for parent in support.parents:
        for entry in Path(parent).glob(f"{CGROUP_PREFIX}*-*"):
            pid = entry.name.removeprefix(CGROUP_PREFIX).split("-", 1)[0]
            if not pid.isdigit() or Path(f"/proc/{pid}").exists():
                continue
            if not remove((str(entry),), wait=0.0):
                removed.append(str(entry))
    return removed

"""A cgroup per sandbox worker holds each call as a whole to its memory and processes limits: the probe
that had four children hold 1,640 MiB under a 512 MiB limit gets "memory" now, a fork loop stops at the
limit for the call, and a worker's cgroup goes with the worker. The detection is tested on fake mounts."""

from __future__ import annotations

import glob
import os
import signal
from pathlib import Path

import pytest

from orchestrator.tools import cgroup as cgroups
from orchestrator.tools.api import Limits
from orchestrator.tools.sandbox import SandboxError, SandboxPool
from tests.conftest import run_async as run

MiB = 2**20
FOUR_CHILDREN = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        block = bytearray(200 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(2)
        os._exit(0)
    children.append(pid)
print([os.waitpid(child, 0)[1] for child in children])
"""
FORK_LOOP = """
import os, time
made = 0
try:
    while made < 100:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        made += 1
except OSError as error:
    print(made, error.errno)
"""


async def _pool_with_cgroup() -> SandboxPool:
    """A started one-worker pool whose calls run in a cgroup; skips, saying why, where there is none."""
    try:
        pool = SandboxPool(1)
        await pool.start()
    except SandboxError as error:
        pytest.skip(f"no sandbox with namespaces here: {error}")
    if pool.stats.cgroup == "none":
        because = pool.stats.cgroup_because
        await pool.close()
        pytest.skip(f"no writable cgroup (v2 with memory+pids delegated, or v1 memory+pids) here: {because}")
    assert pool.stats.isolation == "strong", pool.stats
    return pool


def _peak(directories: tuple[str, ...]) -> int | None:
    """The call cgroup's memory peak in bytes, where the kernel keeps one."""
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        path = os.path.join(directories[0], name)
        if os.path.exists(path):
            return int(Path(path).read_text())
    return None


def test_four_children_are_held_to_the_call_memory_limit_together() -> None:
    async def body() -> None:
        pool = await _pool_with_cgroup()
        try:
            result = await pool.execute(FOUR_CHILDREN, Limits(memory_bytes=512 * MiB, wall_seconds=20))
            assert result.verdict == "memory", result  # each child alone is far below its RLIMIT_AS
            peak = _peak(pool.cgroup_directories[0])
            if peak is not None:
                assert peak <= 512 * MiB + 16 * MiB, peak / MiB
            fine = await pool.execute("print(sum(range(10)))")  # the next call gets the whole limit again
            assert (fine.verdict, fine.stdout) == ("ok", "45\n")
            small = await pool.execute(FOUR_CHILDREN, Limits(memory_bytes=1024 * MiB, wall_seconds=20))
            assert small.verdict == "ok" and small.stdout == "[0, 0, 0, 0]\n", small  # 800 MiB fit in 1 GiB
        finally:
            await pool.close()

    run(body)


def test_a_fork_loop_stops_at_the_call_processes_limit() -> None:
    async def body() -> None:
        pool = await _pool_with_cgroup()
        try:
            result = await pool.execute(FORK_LOOP, Limits(processes=6, wall_seconds=20))
            made, errno_ = result.stdout.split()
            assert result.verdict == "ok" and int(made) == 5 and int(errno_) == 11, (
                result
            )  # 6 with the call's
            pids = pool.cgroup_directories[0][-1]
            if os.path.exists(os.path.join(pids, "pids.peak")):
                assert int(Path(pids, "pids.peak").read_text()) <= 6
            assert Path(pids, "pids.max").read_text().strip() == "6"
        finally:
            await pool.close()

    run(body)


def test_a_worker_restart_and_the_pool_close_remove_its_cgroups() -> None:
    async def body() -> None:
        pool = await _pool_with_cgroup()
        try:
            first = pool.cgroup_directories[0]
            assert all(os.path.isdir(directory) for directory in first)
            pid = pool.worker_pids[0]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the zygote dies: the next call replaces it
            lost = await pool.execute("print(1)")  # abandoned if sent before the pool saw the death
            result = await pool.execute("print(1)") if lost.verdict == "killed" else lost
            assert result.verdict == "ok" and pool.stats.worker_restarts == 1, result
            second = pool.cgroup_directories[0]
            assert second != first and all(os.path.isdir(directory) for directory in second)
            assert not any(os.path.exists(directory) for directory in first)
        finally:
            await pool.close()
        assert not any(os.path.exists(directory) for directory in second)
        parents = {os.path.dirname(directory) for directory in second}
        mine = [
            path
            for parent in parents
            for path in glob.glob(f"{parent}/{cgroups.CGROUP_PREFIX}{os.getpid()}-*")
        ]
        assert mine == []

    run(body)


def _fake_mounts(tmp_path: Path, subtree: str) -> tuple[str, str]:
    """A mountinfo and a /proc/self/cgroup for a cgroup2 mount at tmp_path/unified (our cgroup: /svc)."""
    (tmp_path / "unified" / "svc").mkdir(parents=True)
    (tmp_path / "unified" / "svc" / "cgroup.subtree_control").write_text(subtree)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 25 0:26 / {tmp_path}/unified rw,relatime shared:4 - cgroup2 cgroup2 rw\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/svc\n")
    return str(mountinfo), str(own)


def test_detect_takes_v2_only_with_memory_and_pids_delegated(tmp_path: Path) -> None:
    mountinfo, own = _fake_mounts(tmp_path, "cpu memory pids\n")
    support = cgroups.detect(mountinfo, own)
    assert support == cgroups.CgroupSupport("v2", (f"{tmp_path}/unified/svc",))
    files = cgroups.create(support, 3)
    assert files is not None and files.kind == "v2"
    assert files.memory_limits == (f"{files.directories[0]}/memory.max",)
    assert files.pids_max == f"{files.directories[0]}/pids.max"
    assert cgroups.remove(files.directories, wait=0.0) == [] and not os.path.exists(files.directories[0])

    (tmp_path / "unified" / "svc" / "cgroup.subtree_control").write_text("cpu memory\n")
    support = cgroups.detect(mountinfo, own)
    assert support.kind == "none" and "memory and pids are not both in" in support.because
    assert "v1: no memory hierarchy mounted" in support.because


def test_remove_abandoned_takes_only_cgroups_of_dead_pools(tmp_path: Path) -> None:
    dead = tmp_path / f"{cgroups.CGROUP_PREFIX}999999999-w0-1"
    live = tmp_path / f"{cgroups.CGROUP_PREFIX}{os.getpid()}-w0-1"
    dead.mkdir()
    live.mkdir()
    removed = cgroups.remove_abandoned(cgroups.CgroupSupport("v2", (str(tmp_path),)))
    assert removed == [str(dead)] and not dead.exists() and live.exists()

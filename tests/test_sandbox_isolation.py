"""The sandbox fails closed: weak isolation is refused unless allowed, and the four ways a probe escaped
the weak mode (a program run past the network block, PostgreSQL's Unix socket in /run, the service's
/proc/PID/environ, the service's own package files) are contained with namespaces, as root and, through an
unprivileged user namespace, as nobody."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.tools import sandbox, zygote
from orchestrator.tools.sandbox import SandboxError, SandboxPool
from tests.conftest import run_async as run
from tests.sandbox_probes import SECRET, check_contained, probe_all

ROOT = Path(__file__).resolve().parents[1]


def test_weak_isolation_is_refused_unless_allowed() -> None:
    async def body() -> None:
        with pytest.raises(SandboxError, match=r"isolation is weak here: refused.*--allow-weak-isolation"):
            async with SandboxPool(1, network="block"):
                pass
        async with SandboxPool(1, network="block", allow_weak_isolation=True) as pool:
            assert pool.stats.isolation == "weak" and "no network namespace" in pool.stats.weak_because

    run(body)


def test_with_namespaces_the_weak_modes_escapes_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_ISOLATION_TEST", SECRET)

    async def body() -> None:
        try:
            pool = SandboxPool(1)
            await pool.start()
        except SandboxError as error:
            pytest.skip(f"no namespaces here: {error}")
        try:
            assert pool.stats.isolation in ("strong", "namespaces") and pool.stats.weak_because == ""
            with socket.create_server(("127.0.0.1", 0)) as server:
                server.setblocking(False)
                found = await probe_all(pool, server.getsockname()[1])
                with pytest.raises(BlockingIOError):
                    server.accept()
        finally:
            await pool.close()
        check_contained(found)

    before = [Path(path).read_bytes() for path in (zygote.__file__, sandbox.__file__)]
    run(body)
    assert [Path(path).read_bytes() for path in (zygote.__file__, sandbox.__file__)] == before


AS_NOBODY = """
import asyncio, json, os, socket, sys
sys.path.insert(0, {root!r})
from orchestrator.tools.sandbox import SandboxPool
from tests.sandbox_probes import probe_all

async def main():
    async with SandboxPool(1) as pool:
        with socket.create_server(("127.0.0.1", 0)) as server:
            found = await probe_all(pool, server.getsockname()[1])
        stats = pool.stats
        fork_bomb = await pool.execute("import os\\nwhile True:\\n    os.fork()")
        after = await pool.execute("print('alive')")
    print(json.dumps({{"stats": [stats.isolation, stats.separate_uids], "found": found,
                      "fork_bomb": fork_bomb.verdict, "after": after.stdout}}))

asyncio.run(main())
"""


def test_as_nobody_a_user_namespace_gives_the_same_isolation(tmp_path: Path) -> None:
    """Not root: the pool reaches "namespaces" through an unprivileged user namespace (or refuses)."""
    python = next(
        (
            p
            for p in (sys.executable, shutil.which("python3", path="/usr/bin:/bin"))
            if p and _runs_as_nobody(p)
        ),
        None,
    )
    if os.geteuid() != 0 or python is None:
        pytest.skip("needs root (to become nobody) and a python nobody may run")
    secret_env = {"PATH": "/usr/bin:/bin", "ORCH_ISOLATION_TEST": SECRET, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [python, "-c", AS_NOBODY.format(root=str(ROOT))],
        user=65534, group=65534, extra_groups=[], cwd="/", env=secret_env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if "isolation is weak here: refused" in result.stderr:
        pytest.skip("this kernel refuses unprivileged user namespaces: the pool refused, as it must")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["stats"] == ["namespaces", False]
    check_contained(answer["found"])
    assert answer["fork_bomb"] in ("error", "timeout", "killed") and answer["after"] == "alive\n"


def _runs_as_nobody(python: str) -> bool:
    try:
        probe = subprocess.run(
            [python, "-c", "import asyncio, json"], user=65534, group=65534, extra_groups=[], cwd="/",
            env={"PATH": "/usr/bin:/bin"}, capture_output=True,
        )  # fmt: skip
    except OSError:  # e.g. a pyenv Python under /root
        return False
    return probe.returncode == 0

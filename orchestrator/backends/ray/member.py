"""The actor behind one workload member: it launches the member's process and reports on it.

The process runs in its own session (so its whole process group can be killed), with the member's env and
the GPUs Ray assigned to the actor as ``CUDA_VISIBLE_DEVICES``; stdout and stderr go to one log file. The
kernel kills the process if the actor dies (``PR_SET_PDEATHSIG``), so a lost actor leaves no orphan.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

__all__ = ["NAMESPACE", "MemberActor", "MemberProcess"]

NAMESPACE = "orch"  # the Ray namespace of every member actor

PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class MemberProcess:
    """One member's process and its log; plain Python, so tests can drive it without Ray."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], log_path: str, gpu_ids: Sequence[str]
    ) -> None:
        self.log_path = log_path
        self.gpu_ids = [str(each) for each in gpu_ids]
        full_env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids)}
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def status(self) -> dict[str, Any]:
        """``pid``, ``running``, ``exit_code`` (negative: the killing signal), ``gpu_ids``, ``log_path``."""
        code = self.process.poll()
        return {
            "pid": self.process.pid,
            "running": code is None,
            "exit_code": code,
            "gpu_ids": self.gpu_ids,
            "log_path": self.log_path,
        }

    def stop(self, grace_s: float = 5.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; returns the exit code."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while self.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.process.poll() is not None and not self._group_alive():
                break
        return self.process.wait()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


def _host_gpus(host: str, timeout_s: float = 600.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(ray.get(ray.get_actor(host, namespace=NAMESPACE).status.remote())["gpu_ids"])
        except ValueError:  # not registered yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@ray.remote(max_restarts=0, max_concurrency=1)
class MemberActor:
    """A detached named actor supervising one member's process (see ``MemberProcess``)."""

    def __init__(
        self,
        info: Mapping[str, str],
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: str,
        host: str | None = None,
    ) -> None:
        """``host``: the member whose GPUs a colocated engine shares (waited for; it starts first)."""
        self.info = dict(info)
        ids = ray.get_gpu_ids() if host is None else _host_gpus(host)
        self.member = MemberProcess(argv, env, log_path, [str(each) for each in ids])

    def status(self) -> dict[str, Any]:
        node_id = ray.get_runtime_context().get_node_id()
        return {**self.info, **self.member.status(), "node_id": node_id}

    def stop(self, grace_s: float = 5.0) -> int | None:
        return self.member.stop(grace_s)

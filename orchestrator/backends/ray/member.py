"""The actor behind one workload member: it launches the member's process and reports on it.

The process runs in its own session (so its whole process group can be killed), with the member's env and
the GPUs Ray assigned to the actor as ``CUDA_VISIBLE_DEVICES``; stdout and stderr go to one log file. The
kernel kills the process if the thread that started it dies (``PR_SET_PDEATHSIG``), so a lost actor
leaves no orphan.

An engine's process is restarted when it exits (``RestartPolicy``, as a Kubernetes pod with
``restartPolicy: Always`` is): its requests were already handed to the other engines by the trainer's
balancer, and the engine comes back without tearing the gang down. An engine that keeps exiting
(``max_restarts`` within ``window_s``) is given up and observed as failed, which is a gang failure. A
trainer's process is never restarted here: its exit is the gang's failure, resumed from a checkpoint.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from orchestrator.core.restarts import RestartPolicy, restart_delay

__all__ = ["NAMESPACE", "MemberActor", "MemberProcess", "RestartPolicy", "restart_delay"]

NAMESPACE = "orch"  # the Ray namespace of every member actor

PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class MemberProcess:
    """One member's process and its log; plain Python, so tests can drive it without Ray.

    With a ``restart`` policy a supervisor thread starts the process again when it exits (see the
    module docstring); ``status()`` then counts the restarts and reports the last exit.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: str,
        gpu_ids: Sequence[str],
        restart: RestartPolicy | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.gpu_ids = [str(each) for each in gpu_ids]
        self.env = {**os.environ, **env, "CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids)}
        self.restart = restart
        self.restarts = 0
        self.last_exit: int | None = None
        self.gave_up = False
        self._exits: list[float] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        self.process = self._start()
        self._supervisor: threading.Thread | None = None
        if restart is not None:
            self._supervisor = threading.Thread(target=self._supervise, name="member-supervisor", daemon=True)
            self._supervisor.start()

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _supervise(self) -> None:
        assert self.restart is not None
        while True:
            code = self.process.wait()
            if self._stopping.is_set():
                return
            now = time.monotonic()
            self._exits.append(now)
            delay = restart_delay(self._exits, now, self.restart)
            self._note(
                f"exited with {_exit_text(code)}; "
                + ("given up: it keeps exiting" if delay is None else f"restarting in {delay:g} s")
            )
            with self._lock:
                self.last_exit = code
                if delay is None:
                    self.gave_up = True
                    return
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                # Started from this thread, which lives as long as the process: PR_SET_PDEATHSIG follows
                # the thread that forked, so the child still dies with the actor.
                self.process = self._start()
                self.restarts += 1

    def _note(self, text: str) -> None:
        with open(self.log_path, "ab") as log:
            log.write(f"[orch] {' '.join(self.argv[:3])}: {text}\n".encode())

    def status(self) -> dict[str, Any]:
        """``pid``, ``running``, ``exit_code`` (negative: the killing signal), ``restarts``,
        ``gpu_ids``, ``log_path``. A restartable process waiting for its next start counts as running."""
        with self._lock:
            code = self.process.poll()
            supervised = self.restart is not None and not self.gave_up and not self._stopping.is_set()
            running = code is None or supervised
            return {
                "pid": self.process.pid,
                "running": running,
                "exit_code": None if running else (code if code is not None else self.last_exit),
                "restarts": self.restarts,
                "last_exit": self.last_exit,
                "gpu_ids": self.gpu_ids,
                "log_path": self.log_path,
            }

    def stop(self, grace_s: float = 5.0) -> int | None:
        """No more restarts; SIGTERM the process group, SIGKILL it after ``grace_s``; the exit code."""
        with self._lock:
            self._stopping.set()
            process = self.process
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is not None and not _group_alive(process.pid):
                break
        code = process.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        return code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"


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
        restart: RestartPolicy | None = None,
    ) -> None:
        """``host``: the member whose GPUs a colocated engine shares (waited for; it starts first).
        ``restart``: how the process is restarted when it exits (None: never)."""
        self.info = dict(info)
        ids = ray.get_gpu_ids() if host is None else _host_gpus(host)
        self.member = MemberProcess(argv, env, log_path, [str(each) for each in ids], restart)

    def status(self) -> dict[str, Any]:
        node_id = ray.get_runtime_context().get_node_id()
        return {**self.info, **self.member.status(), "node_id": node_id}

    def stop(self, grace_s: float = 5.0) -> int | None:
        return self.member.stop(grace_s)

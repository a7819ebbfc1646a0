"""Engines colocated with a trainer, started inside the trainer's own container (Kubernetes).

A colocated engine shares its host trainer's GPUs and takes turns with the learner (it sleeps while the
learner runs). Containers of one pod cannot share a device-plugin GPU, so on Kubernetes such an engine gets
no pod of its own: the trainer pod's container runs this launcher, which

1. reads ``ORCH_COLOCATED_ENGINE_COMMANDS`` (JSON, written by the pod builder ``kube.objects.pod_manifest``
   from ``spec.launch.engine_launch``): per hosted engine its argv, env, port, health path and startup
   timeout;
2. starts each engine in a process group of its own, with the container's env less its ``ORCH_*``
   variables (those are the trainer's) plus the engine's own, ``$(VAR)`` in its argv expanded from that env
   as Kubernetes expands an engine pod's command; an engine that exits is started again (``RestartPolicy``,
   the bound of engine pods and of Ray), and one that keeps exiting ends the launcher with a failure, so
   the trainer pod fails and the gang is replaced, as a crash-looping engine pod is;
3. waits until every engine answers its health path (at most the longest startup timeout), then runs
   the trainer's command (after ``--``) in a process group of its own, forwarding SIGTERM/SIGINT to it;
4. when the trainer exits, stops the engines (SIGTERM, SIGKILL after a grace) and exits with the trainer's
   exit status (128 + N for signal N).

Every child dies with the launcher (``PR_SET_PDEATHSIG``). The trainer image must therefore contain the
engine (vLLM or SGLang) as well as orch and ``python3``.

    python3 -m orchestrator.worker.colocated -- orch worker
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.restarts import RestartPolicy, restart_delay
from orchestrator.errors import OrchError

__all__ = [
    "COMMANDS_ENV",
    "LAUNCHER",
    "ColocatedEngines",
    "EngineCommand",
    "decode_commands",
    "encode_commands",
    "expand_references",
    "main",
]

COMMANDS_ENV = "ORCH_COLOCATED_ENGINE_COMMANDS"
LAUNCHER = ("python3", "-m", "orchestrator.worker.colocated")  # then "--" and the trainer's argv
PR_SET_PDEATHSIG = 1  # prctl(2)
POLL_S = 0.1
STOP_GRACE_S = 10.0
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


@dataclass(frozen=True)
class EngineCommand:
    """How to start one colocated engine and know it serves."""

    name: str
    argv: tuple[str, ...]
    port: int
    health_path: str
    startup_timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)


def encode_commands(commands: Sequence[EngineCommand]) -> str:
    """The value of ``ORCH_COLOCATED_ENGINE_COMMANDS`` for ``commands``."""
    return json.dumps(
        [
            {
                "name": c.name,
                "argv": list(c.argv),
                "env": dict(c.env),
                "port": c.port,
                "health_path": c.health_path,
                "startup_timeout_s": c.startup_timeout_s,
            }
            for c in commands
        ],
        sort_keys=True,
    )


def decode_commands(text: str) -> list[EngineCommand]:
    """The engines ``ORCH_COLOCATED_ENGINE_COMMANDS`` describes; ``OrchError`` naming it if malformed."""
    try:
        items = json.loads(text)
        if not isinstance(items, list) or not items:
            raise ValueError("not a non-empty JSON list")
        return [
            EngineCommand(
                name=str(item["name"]),
                argv=tuple(str(word) for word in item["argv"]),
                port=int(item["port"]),
                health_path=str(item["health_path"]),
                startup_timeout_s=float(item["startup_timeout_s"]),
                env={str(k): str(v) for k, v in dict(item.get("env") or {}).items()},
            )
            for item in items
        ]
    except (ValueError, KeyError, TypeError) as error:
        raise OrchError(
            f"{COMMANDS_ENV}: {error}; it is written by orch's pod builder (a JSON list of "
            "{name, argv, env, port, health_path, startup_timeout_s}), set it there, not by hand"
        ) from error


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``, the rest stays."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(one, text)


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn(argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _note(text: str) -> None:
    print(f"[orch colocated] {text}", file=sys.stderr, flush=True)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_all(processes: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM each process group, SIGKILL them after ``grace_s``; reap them."""
    for process in processes:
        _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    for process in processes:
        _signal_group(process.pid, signal.SIGKILL)  # its children too, even if the leader is gone
        process.wait()


@dataclass
class _Engine:
    command: EngineCommand
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    exits: list[float] = field(default_factory=list)
    restart_at: float | None = None
    restarts: int = 0


class ColocatedEngines:
    """The engines of one trainer container: started, restarted on exit (bounded), and stopped."""

    def __init__(
        self,
        commands: Sequence[EngineCommand],
        base_env: Mapping[str, str],
        policy: RestartPolicy | None = None,
    ) -> None:
        inherited = {k: v for k, v in base_env.items() if not k.startswith("ORCH_")}
        self.policy = policy or RestartPolicy()
        self.engines = []
        for command in commands:
            env = {**inherited, **command.env}
            argv = [expand_references(word, env) for word in command.argv]
            self.engines.append(_Engine(command, argv, env))
        self.gave_up: str | None = None  # the engine that kept exiting, and how

    def start(self) -> None:
        for engine in self.engines:
            engine.process = _spawn(engine.argv, engine.env)
            _note(f"{engine.command.name}: started (pid {engine.process.pid}) on port {engine.command.port}")

    def poll(self, now: float) -> None:
        """Notice exits, start again those whose back-off has passed; set ``gave_up`` on a crash loop."""
        for engine in self.engines:
            if engine.process is not None:
                code = engine.process.poll()
                if code is None:
                    continue
                _signal_group(engine.process.pid, signal.SIGKILL)  # what it left behind
                engine.process = None
                engine.exits.append(now)
                delay = restart_delay(engine.exits, now, self.policy)
                how = f"signal {-code}" if code < 0 else f"code {code}"
                if delay is None:
                    self.gave_up = f"{engine.command.name} exited with {how} {len(engine.exits)} times"
                    _note(f"{self.gave_up}: given up")
                    return
                _note(f"{engine.command.name}: exited with {how}; restarting in {delay:g} s")
                engine.restart_at = now + delay
            elif engine.restart_at is not None and now >= engine.restart_at:
                engine.process = _spawn(engine.argv, engine.env)
                engine.restart_at = None
                engine.restarts += 1
                _note(f"{engine.command.name}: restarted (pid {engine.process.pid})")

    def unhealthy(self) -> list[str]:
        """Names of the engines not answering 200 on their health path yet."""
        waiting = []
        for engine in self.engines:
            url = f"http://127.0.0.1:{engine.command.port}{engine.command.health_path}"
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    ok = 200 <= answer.status < 300
            except OSError:
                ok = False
            if not ok:
                waiting.append(engine.command.name)
        return waiting

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        processes = [e.process for e in self.engines if e.process is not None]
        for engine in self.engines:
            engine.process, engine.restart_at = None, None
        _stop_all(processes, grace_s)


class _Signals:
    """SIGTERM/SIGINT: remembered, and forwarded to the trainer's process group once it runs."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.trainer: subprocess.Popen[bytes] | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, sig: int, _frame: Any) -> None:
        self.received = sig
        if self.trainer is not None:
            _signal_group(self.trainer.pid, sig)


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def run(
    trainer_argv: Sequence[str],
    commands: Sequence[EngineCommand],
    env: Mapping[str, str],
    policy: RestartPolicy | None = None,
) -> int:
    """Start the engines, wait for their health, run the trainer, stop the engines; the exit status."""
    signals = _Signals()
    engines = ColocatedEngines(commands, env, policy)
    engines.start()
    try:
        deadline = time.monotonic() + max(c.startup_timeout_s for c in commands)
        while waiting := engines.unhealthy():
            engines.poll(time.monotonic())
            if engines.gave_up:
                _note(f"an engine never came up: {engines.gave_up}")
                return 1
            if signals.received is not None:
                return 128 + signals.received
            if time.monotonic() > deadline:
                _note(f"{', '.join(waiting)} did not answer their health path within the startup timeout")
                return 1
            time.sleep(POLL_S)
        _note(f"{len(commands)} engine(s) serving; starting the trainer: {' '.join(trainer_argv)}")
        trainer_env = {k: v for k, v in env.items() if k != COMMANDS_ENV}
        trainer = signals.trainer = _spawn(trainer_argv, trainer_env)
        if signals.received is not None:
            _signal_group(trainer.pid, signals.received)
        while (code := trainer.poll()) is None:
            engines.poll(time.monotonic())
            if engines.gave_up:
                _note(f"stopping the trainer: {engines.gave_up}")
                _stop_all([trainer], STOP_GRACE_S)
                return 1
            time.sleep(POLL_S)
        _signal_group(trainer.pid, signal.SIGKILL)  # the trainer's leftovers (e.g. its learner)
        return _status(code)
    finally:
        engines.stop()
        signals.restore()


def main(argv: Sequence[str] | None = None) -> int:
    """``python3 -m orchestrator.worker.colocated -- <trainer argv>`` (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args or not args[args.index("--") + 1 :]:
        _note("usage: python3 -m orchestrator.worker.colocated -- <trainer command>")
        return 2
    trainer_argv = args[args.index("--") + 1 :]
    try:
        commands = decode_commands(os.environ.get(COMMANDS_ENV, ""))
    except OrchError as error:
        _note(str(error))
        return 2
    return run(trainer_argv, commands, dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())

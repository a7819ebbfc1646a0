"""What a Ray member runs: its argv and env, from the run spec (pure).

- a trainer runs ``trainer.command`` (split as a shell would) with ``trainer.env``, its attempt's mailbox
  as ``ORCH_MAILBOX_DIR`` and the run's engine URLs as ``ORCH_ENGINE_URLS``;
- engine ``i`` runs ``engine_launch(spec, stage)`` (``orchestrator.rollout.launch``) on port
  ``rollout.engine.port + i``, so the engines of one box never share a port, with ``rollout.engine.env``
  and the variables orch adds (``EngineLaunch.env``).

The engines bind loopback and their URLs are ``http://127.0.0.1:<port>``: one box. ``ORCH_COMMAND`` in a
workload's env (a shell command line) overrides the spec's command: tests and ad-hoc members use it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.members import TRAINER
from orchestrator.errors import OrchError
from orchestrator.records import Workload
from orchestrator.rollout.launch import engine_launch
from orchestrator.spec import RunSpec
from orchestrator.worker.session import ENGINES_ENV
from orchestrator.worker.transport import MAILBOX_ENV

__all__ = ["COMMAND_ENV", "MemberLaunch", "engine_urls", "member_launch"]

COMMAND_ENV = "ORCH_COMMAND"
ENGINE_HOST = "127.0.0.1"


@dataclass(frozen=True)
class MemberLaunch:
    """The process one member's actor starts."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def engine_urls(spec: RunSpec) -> list[str]:
    """The base URLs of the run's engines, by index."""
    base = spec.rollout.engine.port
    return [f"http://{ENGINE_HOST}:{base + index}" for index in range(spec.rollout.engines)]


def member_launch(
    workload: Workload, spec: RunSpec | None, *, stage_index: int = 0, mailbox: str | Path | None = None
) -> MemberLaunch:
    """The argv and env of ``workload`` (see the module docstring); ``mailbox`` is its attempt's."""
    env = dict(workload.env)
    if workload.role == TRAINER and mailbox is not None:
        env[MAILBOX_ENV] = str(mailbox)
    if spec is not None and workload.role == TRAINER:
        env = {**spec.trainer.env, **env, ENGINES_ENV: ",".join(engine_urls(spec))}
    override = env.get(COMMAND_ENV, "")
    if override.strip():
        return MemberLaunch(tuple(shlex.split(override)), env)
    if spec is None:
        raise OrchError(f"{workload.name}: no command to run (no run spec, and no {COMMAND_ENV} in its env)")
    if workload.role == TRAINER:
        return MemberLaunch(tuple(shlex.split(spec.trainer.command)), env)
    launch = engine_launch(
        spec, stage_index, host=ENGINE_HOST, port=spec.rollout.engine.port + workload.index
    )
    return MemberLaunch(launch.argv, {**launch.env, **env})

"""What a Ray member runs: its argv and env, from the run spec (pure).

- a trainer runs ``trainer.command`` (split as a shell would) with ``trainer.env``, its attempt's mailbox
  as ``ORCH_MAILBOX_DIR`` and the run's engine URLs as ``ORCH_ENGINE_URLS``; where the run's tools are an
  ``orch tools serve`` (``tools.service: http…``), also the controller's tool-service token as
  ``ORCH_TOOLS_TOKEN`` (``tools_token``: never in the spec, which is stored in the database);
- engine ``i`` runs ``engine_launch(spec, stage)`` (``orchestrator.spec.launch``) on the port the
  placement gave it (``ORCH_ENGINE_PORT``, ``orchestrator.core.ports``: no two live engines of one node
  share one; without it ``rollout.engine.port + i``), with ``rollout.engine.env`` and the variables orch
  adds (``EngineLaunch.env``).

The engines bind loopback and their URLs are ``http://127.0.0.1:<port>``: one box. ``ORCH_COMMAND`` in a
workload's env (a shell command line) overrides the spec's command: tests and ad-hoc members use it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.members import TRAINER
from orchestrator.core.ports import ENGINE_PORT_ENV, ENGINE_PORTS_ENV
from orchestrator.errors import OrchError
from orchestrator.records import Workload
from orchestrator.spec import RunSpec
from orchestrator.spec.launch import engine_launch
from orchestrator.tools.client import TOKEN_ENV as TOOLS_TOKEN_ENV
from orchestrator.worker.session import ENGINES_ENV
from orchestrator.worker.transport import MAILBOX_ENV

__all__ = ["COMMAND_ENV", "TOOLS_TOKEN_ENV", "MemberLaunch", "engine_urls", "member_launch"]

COMMAND_ENV = "ORCH_COMMAND"
ENGINE_HOST = "127.0.0.1"


@dataclass(frozen=True)
class MemberLaunch:
    """The process one member's actor starts."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


def engine_urls(spec: RunSpec, ports: str = "") -> list[str]:
    """The base URLs of the run's engines, by index: on the ports the placement gave them
    (``ORCH_ENGINE_PORTS``, comma-separated), else ``rollout.engine.port + index``."""
    numbers = [int(port) for port in ports.split(",") if port.strip()]
    if not numbers:
        numbers = [spec.rollout.engine.port + index for index in range(spec.rollout.engines)]
    return [f"http://{ENGINE_HOST}:{port}" for port in numbers]


def member_launch(
    workload: Workload,
    spec: RunSpec | None,
    *,
    stage_index: int = 0,
    mailbox: str | Path | None = None,
    tools_token: str | None = None,
) -> MemberLaunch:
    """The argv and env of ``workload`` (see the module docstring); ``mailbox`` is its attempt's;
    ``tools_token`` the controller's ``ORCH_TOOLS_TOKEN`` (a trainer using a tool service gets it)."""
    env = dict(workload.env)
    if workload.role == TRAINER and mailbox is not None:
        env[MAILBOX_ENV] = str(mailbox)
    if spec is not None and workload.role == TRAINER:
        urls = engine_urls(spec, env.get(ENGINE_PORTS_ENV, ""))
        env = {**spec.trainer.env, **env, ENGINES_ENV: ",".join(urls)}
        if tools_token is not None and spec.tools.service.startswith(("http://", "https://")):
            env[TOOLS_TOKEN_ENV] = tools_token
    override = env.get(COMMAND_ENV, "")
    if override.strip():
        return MemberLaunch(tuple(shlex.split(override)), env)
    if spec is None:
        raise OrchError(f"{workload.name}: no command to run (no run spec, and no {COMMAND_ENV} in its env)")
    if workload.role == TRAINER:
        return MemberLaunch(tuple(shlex.split(spec.trainer.command)), env)
    port = env.get(ENGINE_PORT_ENV, "")
    launch = engine_launch(
        spec,
        stage_index,
        host=ENGINE_HOST,
        port=int(port) if port.isdigit() else spec.rollout.engine.port + workload.index,
    )
    return MemberLaunch(launch.argv, {**launch.env, **env})

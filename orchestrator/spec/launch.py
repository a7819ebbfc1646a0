"""The command line that starts one inference engine, from the run spec, for one curriculum stage.

Pure: it builds an argv list, an environment and a readiness URL path; a backend runs them. The flag names
per engine kind, and the release each was read in, are in ``orchestrator.spec.engines`` (the spec needs
them too, to refuse ``rollout.engine.args`` that would override them); this module puts them in order.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.spec.engines import ENGINE_CLIS
from orchestrator.spec.models import RunSpec

__all__ = ["EngineLaunch", "engine_launch"]


@dataclass(frozen=True)
class EngineLaunch:
    """How to start one engine and know it is ready."""

    argv: tuple[str, ...]
    image: str
    port: int
    health_path: str  # GET http://HOST:port{health_path} answers 200 once the engine serves
    env: Mapping[str, str] = field(default_factory=dict)


def engine_launch(
    spec: RunSpec, stage_index: int, *, host: str = "127.0.0.1", port: int | None = None
) -> EngineLaunch:
    """The launch of each engine of ``spec`` in curriculum stage ``stage_index``.

    The context length is the longest prompt plus the stage's ``max_response_tokens``; the tensor
    parallel size is ``rollout.gpus_per_engine``. ``host`` is the address the engine binds (loopback
    unless the backend needs it reachable from other nodes); ``port`` replaces ``rollout.engine.port``
    (a backend running several engines on one host gives each its own). When the spec is colocated the
    engine gets the flag that lets it free its GPU memory for the learner (vLLM ``--enable-sleep-mode``,
    SGLang ``--enable-memory-saver``); a vLLM engine always gets ``VLLM_SERVER_DEV_MODE=1``, without which
    it serves neither ``/collective_rpc`` (the weight reload) nor ``/sleep``.
    """
    if not 0 <= stage_index < len(spec.curriculum):
        raise IndexError(f"stage {stage_index} is not in the curriculum (0..{len(spec.curriculum) - 1})")
    engine = spec.rollout.engine
    model = engine.model or spec.model.name
    port = engine.port if port is None else port
    values = {
        "host": host,
        "port": str(port),
        "model": model,
        "tp": str(spec.rollout.gpus_per_engine),
        "max_model_len": str(spec.max_model_len(stage_index)),
    }
    env = dict(engine.env)
    if engine.kind == "command":
        assert engine.command is not None  # the spec refuses kind command without one
        # Split first, then fill in: a model path with a space stays one argument.
        argv = tuple(word.format(**values) for word in shlex.split(engine.command))
        health = "/health"
    else:
        cli = ENGINE_CLIS[engine.kind]
        model_args = (model,) if cli.model is None else (cli.model, model)
        argv = (
            *cli.launcher,
            *model_args,
            cli.host,
            host,
            cli.port,
            values["port"],
            cli.tensor_parallel,
            values["tp"],
            cli.max_model_len,
            values["max_model_len"],
            *cli.always,
            *(cli.colocated if spec.colocated else ()),
        )
        health = cli.health_path
        env.update(cli.env)
    return EngineLaunch(
        argv=(*argv, *engine.args),
        image=engine.image or spec.image,
        port=port,
        health_path=health,
        env=env,
    )

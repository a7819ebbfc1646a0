"""The servers ``orch`` starts: the GPU telemetry ``agent``, the rollout ``router``, the ``tools`` service."""

from __future__ import annotations

import click

from orchestrator import service
from orchestrator.commands.common import port_option
from orchestrator.errors import SpecError
from orchestrator.spec import HYPHENATED_POLICIES, resolve_dispatch_policy

__all__ = ["agent", "router", "tools"]

# ---- GPU telemetry agent ----------------------------------------------------------------------


def _interval(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from orchestrator.telemetry.exporter import parse_interval

    try:
        return parse_interval(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@click.command()
@click.option("--port", type=int, default=9400, show_default=True, help="serve /metrics on this port")
@click.option("--host", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option("--interval", default="1s", show_default=True, callback=_interval, help="1s, 500ms or 0.1")
@click.option("--node", envvar="NODE_NAME", default=None, help="node label (default $NODE_NAME or hostname)")
@click.option("--simulate", is_flag=True, help="read 8 simulated H100-80GB GPUs instead of NVML")
@click.option("--dcgm", "dcgm_url", default=None, help="read a dcgm-exporter's /metrics URL instead of NVML")
@click.option("--once", is_flag=True, help="print one scrape's metrics to stdout and exit")
def agent(
    port: int, host: str, interval: float, node: str | None, simulate: bool, dcgm_url: str | None, once: bool
) -> None:
    """Export this node's GPU telemetry (NVML, dcgm-exporter or simulated) for Prometheus."""
    import socket

    node = node or socket.gethostname()
    gpu_agent = service.gpu_agent(node, interval, simulate=simulate, dcgm_url=dcgm_url)
    if once:
        click.echo(service.scrape_once(gpu_agent), nl=False)
        return

    def ready(url: str, gpus: int) -> None:
        click.echo(f"serving {gpus} GPUs of {node} on {url} every {interval:g}s")

    with port_option("--port"):
        service.serve_agent(gpu_agent, port, host, ready)


# ---- rollout router ---------------------------------------------------------------------------


def _dispatch_policy(value: str, param: click.Parameter) -> str:
    try:
        return resolve_dispatch_policy(value)
    except SpecError as error:
        raise click.BadParameter(str(error), param=param) from error


@click.command()
@click.option(
    "--engine",
    "engines",
    multiple=True,
    required=True,
    help="base URL of an OpenAI-compatible vLLM/SGLang engine (repeat for each engine)",
)
@click.option(
    "--policy",
    default="kv-aware",
    show_default=True,
    callback=lambda ctx, param, value: _dispatch_policy(value, param),
    help=f"dispatch policy: {', '.join(HYPHENATED_POLICIES)}, or a policy file "
    "(policies/dispatch/*.yaml; the router forwards whole requests, so the file's chunk_tokens is unused)",
)
@click.option("--port", type=int, default=8000, show_default=True, help="port to serve the router on")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--kv-tokens",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="KV-cache tokens per engine where its /metrics does not say (vLLM without cache_config_info)",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "vllm", "sglang"]),
    default="auto",
    show_default=True,
    help="engine flavour, for reading /metrics",
)
@click.option(
    "--max-tokens",
    "max_tokens",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="max_tokens for requests that set none",
)
@click.option(
    "--gpu",
    "gpus",
    multiple=True,
    metavar="AGENT_METRICS_URL#GPU",
    help="the GPU of each engine, in --engine order (an orch agent's /metrics and the GPU's index or UUID): "
    "its NVML utilization places requests where the engine reports no load of its own",
)
def router(
    engines: tuple[str, ...],
    policy: str,
    port: int,
    host: str,
    kv_tokens: int,
    kind: str,
    max_tokens: int,
    gpus: tuple[str, ...],
) -> None:
    """Serve one OpenAI-compatible endpoint that queues and balances requests over inference engines."""
    import asyncio
    from contextlib import suppress

    from orchestrator.rollout.engine_gpu import parse_engine_gpu
    from orchestrator.rollout.router import serve_router

    if gpus and len(gpus) != len(engines):
        raise click.BadParameter(
            f"{len(gpus)} given for {len(engines)} --engine; give one per engine", param_hint="--gpu"
        )
    try:
        engine_gpus = [parse_engine_gpu(text) for text in gpus] if gpus else None
    except ValueError as error:
        raise click.BadParameter(str(error).split(": ", 1)[1], param_hint="--gpu") from error

    def ready(url: str) -> None:
        click.echo(f"routing {url}/v1/completions over {len(engines)} engine(s) with {policy}")

    with suppress(KeyboardInterrupt), port_option("--port"):
        asyncio.run(
            serve_router(
                engines,
                policy=policy,
                host=host,
                port=port,
                kv_total_tokens=kv_tokens,
                max_new_tokens_default=max_tokens,
                kind=kind,  # type: ignore[arg-type]
                ready=ready,
                gpus=engine_gpus,
            )
        )


# ---- tool-execution service -------------------------------------------------------------------


@click.group()
def tools() -> None:
    """The sandboxed code-execution service for tool calls and reward checks."""


@tools.command("serve")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8900, show_default=True, help="port to listen on"
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="warm sandbox workers (default: this machine's CPU count)",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="run one sandbox pool per node of this Ray cluster ('auto': the cluster this node belongs to)",
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    default=65_536,
    show_default=True,
    help="accepted, unanswered calls; beyond it callers get 429 busy, retry after",
)
@click.option(
    "--allow-weak-isolation",
    is_flag=True,
    help="run even where the sandbox gets no namespaces (not root, no user namespaces): weak, see README",
)
def tools_serve(
    port: int,
    host: str,
    workers: int | None,
    ray_address: str | None,
    max_pending: int,
    allow_weak_isolation: bool,
) -> None:
    """Serve POST /v1/exec, /v1/exec/batch, /v1/verify, GET /v1/results/ID and /metrics."""
    import asyncio
    import os
    from contextlib import suppress

    from orchestrator.tools.server import serve_tools

    count = workers or os.cpu_count() or 1

    def ready(url: str, service: object) -> None:
        where = f"Ray cluster {ray_address}" if ray_address else f"{count} sandbox workers"
        click.echo(f"serving tool calls on {url} with {where}")

    with suppress(KeyboardInterrupt), port_option("--port"):
        asyncio.run(
            serve_tools(
                host=host,
                port=port,
                workers=count,
                ray_address=ray_address,
                max_pending=max_pending,
                allow_weak_isolation=allow_weak_isolation,
                ready=ready,
            )
        )

"""The servers ``orch`` starts: the GPU telemetry ``agent``, the rollout ``router``, the ``tools`` service."""

from __future__ import annotations

from typing import Any

import click

from orchestrator import service
from orchestrator.commands.common import endpoint_options, guard_from_options, port_option
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
@endpoint_options("ORCH_AGENT_TOKEN", "/metrics")
@click.option("--interval", default="1s", show_default=True, callback=_interval, help="1s, 500ms or 0.1")
@click.option("--node", envvar="NODE_NAME", default=None, help="node label (default $NODE_NAME or hostname)")
@click.option("--simulate", is_flag=True, help="read 8 simulated H100-80GB GPUs instead of NVML")
@click.option("--dcgm", "dcgm_url", default=None, help="read a dcgm-exporter's /metrics URL instead of NVML")
@click.option("--once", is_flag=True, help="print one scrape's metrics to stdout and exit")
def agent(
    port: int,
    host: str,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    interval: float,
    node: str | None,
    simulate: bool,
    dcgm_url: str | None,
    once: bool,
) -> None:
    """Export this node's GPU telemetry (NVML, dcgm-exporter or simulated) for Prometheus.

    /metrics needs the token when one is set (Prometheus sends it); /healthz is open and says only ok."""
    import socket

    guard = None if once else guard_from_options("ORCH_AGENT_TOKEN", host, token_file, allowed_hosts)
    node = node or socket.gethostname()
    gpu_agent = service.gpu_agent(node, interval, simulate=simulate, dcgm_url=dcgm_url)
    if once:
        click.echo(service.scrape_once(gpu_agent), nl=False)
        return

    def ready(url: str, gpus: int) -> None:
        click.echo(f"serving {gpus} GPUs of {node} on {url} every {interval:g}s")

    with port_option("--port"):
        service.serve_agent(gpu_agent, port, host, ready, guard)


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
@endpoint_options("ORCH_ROUTER_TOKEN", "the router")
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
    "its NVML utilization places requests where the engine reports no load of its own; an agent with a "
    "token is sent $ORCH_AGENT_TOKEN (or the file $ORCH_AGENT_TOKEN_FILE names)",
)
def router(
    engines: tuple[str, ...],
    policy: str,
    port: int,
    host: str,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    kv_tokens: int,
    kind: str,
    max_tokens: int,
    gpus: tuple[str, ...],
) -> None:
    """Serve one OpenAI-compatible endpoint that queues and balances requests over inference engines.

    Every path needs the token when one is set; /health is open and without it says only ok."""
    import asyncio
    from contextlib import suppress

    from orchestrator.httpguard import client_token
    from orchestrator.rollout.engine_gpu import parse_engine_gpu
    from orchestrator.rollout.router import serve_router

    if gpus and len(gpus) != len(engines):
        raise click.BadParameter(
            f"{len(gpus)} given for {len(engines)} --engine; give one per engine", param_hint="--gpu"
        )
    try:
        agent_token = client_token("ORCH_AGENT_TOKEN") if gpus else None
        engine_gpus = [parse_engine_gpu(text, agent_token) for text in gpus] if gpus else None
    except ValueError as error:
        raise click.BadParameter(str(error).split(": ", 1)[1], param_hint="--gpu") from error

    guard = guard_from_options("ORCH_ROUTER_TOKEN", host, token_file, allowed_hosts)

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
                guard=guard,
            )
        )


# ---- tool-execution service -------------------------------------------------------------------


def _max_limits(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> object:
    """``--max-limit NAME=VALUE`` (repeated) over the service's default maxima, as ``Limits``."""
    from dataclasses import fields

    from orchestrator.tools.api import MAX_LIMITS, SERVICE_MAX_LIMITS

    kinds = {
        field.name: type(getattr(SERVICE_MAX_LIMITS, field.name)) for field in fields(SERVICE_MAX_LIMITS)
    }
    overrides: dict[str, int | float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in kinds:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE with NAME one of {', '.join(kinds)}")
        try:
            overrides[name] = kinds[name](text)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {name} must be a {kinds[name].__name__}") from None
    try:
        chosen = SERVICE_MAX_LIMITS.merged(overrides)
        chosen.check_within(MAX_LIMITS)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return chosen


def _max_limit_help() -> str:
    from dataclasses import asdict

    from orchestrator.tools.api import SERVICE_MAX_LIMITS

    defaults = ", ".join(f"{name}={value}" for name, value in asdict(SERVICE_MAX_LIMITS).items())
    return (
        "the most a call may ask for (repeat per limit; above it: 400; a lower maximum lowers the "
        f"default with it). Defaults: {defaults}"
    )


@click.group()
def tools() -> None:
    """The sandboxed code-execution service for tool calls and reward checks."""


@tools.command("serve")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8900, show_default=True, help="port to listen on"
)
@endpoint_options("ORCH_TOOLS_TOKEN", "the tool service")
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
    help="accepted calls not answered, or answered and not fetched; beyond it callers get 429, retry after",
)
@click.option(
    "--max-limit",
    "max_limits",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_max_limits,
    help=_max_limit_help(),
)
@click.option(
    "--result-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help='seconds an unfetched answer of a "wait": false call is kept',
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=64 * 2**20,
    show_default=True,
    help="largest request body of /v1/exec*; above it: 413",
)
@click.option(
    "--max-verify-bytes",
    type=click.IntRange(min=1),
    default=8 * 2**20,
    show_default=True,
    help="largest request body of /v1/verify*; above it: 413",
)
@click.option(
    "--body-bytes-in-flight",
    type=click.IntRange(min=1),
    default=256 * 2**20,
    show_default=True,
    help="request-body bytes read and checked at once, all callers; beyond it: 429, retry after",
)
@click.option(
    "--allow-weak-isolation",
    is_flag=True,
    help="run even where the sandbox gets no namespaces (not root, no user namespaces): weak, see README",
)
def tools_serve(
    port: int,
    host: str,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    workers: int | None,
    ray_address: str | None,
    max_pending: int,
    max_limits: Any,
    result_ttl: float,
    max_body_bytes: int,
    max_verify_bytes: int,
    body_bytes_in_flight: int,
    allow_weak_isolation: bool,
) -> None:
    """Serve POST /v1/exec, /v1/exec/batch, /v1/verify, GET /v1/results/ID and /metrics.

    Every path needs the token when one is set; /healthz is open and without it says only ok."""
    import asyncio
    import os
    from contextlib import suppress

    from orchestrator.tools.http_api import BodyLimits
    from orchestrator.tools.server import serve_tools

    guard = guard_from_options("ORCH_TOOLS_TOKEN", host, token_file, allowed_hosts)
    try:
        body_limits = BodyLimits(max_body_bytes, max_verify_bytes, body_bytes_in_flight)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--body-bytes-in-flight") from None

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
                max_limits=max_limits,
                keep_results_s=result_ttl,
                body_limits=body_limits,
                allow_weak_isolation=allow_weak_isolation,
                ready=ready,
                guard=guard,
            )
        )

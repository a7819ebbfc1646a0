"""``orch``: click commands that parse, call ``orchestrator.service`` / the controller, and print."""

from __future__ import annotations

import json
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import yaml
from prometheus_client import REGISTRY
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import service, views
from orchestrator.backends import make_backend
from orchestrator.controller import Controller
from orchestrator.embedded import run_to_completion
from orchestrator.errors import OrchError, SpecError
from orchestrator.health import HealthServer, LoopHeartbeat
from orchestrator.records import Event, Run
from orchestrator.spec import HYPHENATED_POLICIES, load_spec_data, resolve_dispatch_policy
from orchestrator.state.store import Store
from orchestrator.telemetry.exporter import GpuCollector
from orchestrator.telemetry.latest import latest_samples
from orchestrator.telemetry.rollout_metrics import RolloutMetrics
from orchestrator.telemetry.scheduler import SchedulerCollector

OUTPUT = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
    help="table for people, json or yaml for machines",
)
console = Console()
errors = Console(stderr=True)


class Context:
    def __init__(self, database_url: str | None, debug: bool) -> None:
        self.database_url = database_url
        self.debug = debug
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.database_url)
        return self._store

    def close(self) -> None:
        """Dispose of the engine, so no pooled connection outlives the command."""
        if self._store is not None:
            self._store.close()
            self._store = None


pass_context = click.make_pass_decorator(Context)


class OrchGroup(click.Group):
    """Turns every ``OrchError`` into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OrchError as error:
            if ctx.params.get("debug"):
                raise
            for line in str(error).splitlines() or [""]:  # a SpecError names every problem, one a line
                errors.print(f"error: {line}", markup=False, highlight=False, soft_wrap=True)
            ctx.exit(error.exit_code)


@click.group(cls=OrchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--database-url", envvar="ORCH_DATABASE_URL", help="SQLAlchemy URL (default: a SQLite file)")
@click.option("--debug", is_flag=True, help="show tracebacks and controller logs")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, debug: bool) -> None:
    """orch: keeps every GPU busy while running agentic RL training."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(name)s: %(message)s")
    if not debug:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = Context(database_url, debug)
    ctx.call_on_close(ctx.obj.close)


def emit(data: Any, output: str, table: Callable[[], Table | str]) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False))
    else:
        console.print(table())


def run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "phase": run.phase.value,
        "stage": run.stage_index + 1,
        "step": run.steps_done,
        "attempt": run.attempt,
        "queue": run.queue,
        "priority": run.priority,
        "gpu_busy_fraction": round(run.gpu_busy_fraction, 4),
        "message": run.message,
    }


# Columns a reader copies or greps: never cut to "quick…" on a narrow terminal or in a pipe.
WHOLE_COLUMNS = frozenset({"id", "name", "phase", "reason"})


def rows_table(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title)
    for column in rows[0] if rows else ["(none)"]:
        whole = column in WHOLE_COLUMNS
        width = max(len(column), *(len(str(row[column])) for row in rows)) if whole else None
        table.add_column(column.replace("_", " "), no_wrap=whole, min_width=width)
    for row in rows:
        table.add_row(*(str(value) if value is not None else "-" for value in row.values()))
    return table


# ---- specs and runs ---------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check a run spec without storing it."""
    spec = service.validate(file)
    click.echo(
        f"{file}: valid: run {spec.name}, {len(spec.curriculum)} stages, {spec.total_steps} steps, "
        f"{spec.trainer.gpus} trainer GPUs, {spec.rollout.engines} engines"
    )


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="run the controller embedded until the run finishes")
@click.option(
    "--pace",
    type=float,
    default=None,
    help="simulated pool only: virtual seconds per wall second, so `orch top` can watch (default: flat out)",
)
@click.option("--backend", envvar="ORCH_BACKEND", default="sim", show_default=True, help="cluster backend")
@OUTPUT
@pass_context
def submit(obj: Context, file: str, wait: bool, pace: float | None, backend: str, output: str) -> None:
    """Store a run spec as a new run (and with --wait, run it to the end)."""
    spec = service.validate(file)
    run = service.submit(obj.store, file)
    if not wait:
        emit(run_row(run), output, lambda: f"submitted {run.id} ({spec.total_steps} steps)")
        return
    run = _run_embedded(obj.store, run, backend, pace, quiet=output != "table")
    summary = service.report(obj.store, run.id).as_dict()
    emit(summary, output, lambda: _summary_table(summary))
    if run.phase.value != "Succeeded":
        sys.exit(1)


def _run_embedded(store: Store, run: Run, backend: str, pace: float | None, *, quiet: bool) -> Run:
    total = sum(s.planned_steps or 0 for s in store.stages(run.id))
    started = time.monotonic()
    with _progress(quiet) as progress:
        task = progress.add_task("starting", total=total)

        def show(current: Run) -> None:
            progress.update(
                task,
                completed=current.steps_done,
                description=f"stage {current.stage_index + 1} · step {current.steps_done}/{total} · "
                f"GPU busy {current.gpu_busy_fraction:.0%} · {current.phase.value}",
            )

        final = run_to_completion(store, run.id, backend=backend, sim_pace=pace, on_progress=show)
    if not quiet:
        console.print(f"{final.id}: {final.phase.value} in {time.monotonic() - started:.1f}s wall time")
    return final


@contextmanager
def _progress(quiet: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    with progress:
        yield progress


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"run {summary['id']}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    hours = float(summary["simulated_seconds"]) / 3600
    for label, value in (
        ("phase", summary["phase"]),
        ("steps", f"{summary['steps_done']} of {summary['steps_planned']}"),
        ("stage", f"{summary['stage']} ({summary['stage_name']})"),
        ("stage changes", summary["stage_changes"]),
        ("checkpoints", ", ".join(map(str, summary["checkpoints"])) or "-"),
        ("attempts", summary["attempt"]),
        ("steps redone after failures", summary["superseded_steps"]),
        ("GPU busy fraction", f"{float(summary['gpu_busy_fraction']):.1%}"),
        ("idle GPU-hours", f"{summary['idle_gpu_hours']} {summary['idle_gpu_hours_by_role'] or ''}".rstrip()),
        ("simulated time", f"{summary['simulated_seconds']}s ({hours:.2f} h)"),
        ("message", summary["message"]),
        ("last step's engines", _engines_line(summary["last_step_engines"], summary["last_step_queue_peak"])),
    ):
        table.add_row(label, str(value))
    return table


def _engines_line(engines: list[dict[str, Any]], queue_peak: int) -> str:
    """Busy share and KV headroom of each engine in the last step, one compact line."""
    if not engines:
        return "-"
    busy = " ".join(f"{e['busy_ratio']:.0%}" for e in engines)
    headroom = min(e["kv_free_ratio"] for e in engines)
    return f"busy {busy}; min KV headroom {headroom:.0%}; queue peak {queue_peak}"


@main.command("list")
@OUTPUT
@pass_context
def list_runs(obj: Context, output: str) -> None:
    """List runs."""
    rows = [run_row(run) for run in obj.store.list_runs()]
    emit(rows, output, lambda: rows_table(rows))


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def status(obj: Context, run: str, output: str) -> None:
    """Show one run: phase, stage, steps, checkpoints, GPU busy fraction."""
    summary = service.report(obj.store, run).as_dict()
    emit(summary, output, lambda: _summary_table(summary))


def _event_row(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": time.strftime("%H:%M:%S", time.localtime(event.at)),
        "reason": event.reason,
        "message": event.message,
    }


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def events(obj: Context, run: str, output: str) -> None:
    """Show a run's events, oldest first."""
    rows = [_event_row(event) for event in service.events(obj.store, run)]
    emit(rows, output, lambda: rows_table(rows))


@main.command()
@click.argument("run")
@pass_context
def cancel(obj: Context, run: str) -> None:
    """Cancel a run and release its GPUs."""
    done = service.cancel_run(obj.store, run)
    click.echo(f"{done.id}: {done.phase.value}")


@main.command()
@click.argument("run")
@pass_context
def resume(obj: Context, run: str) -> None:
    """Resume a Suspended or Failed run from its last checkpoint."""
    done = service.resume_run(obj.store, run)
    click.echo(f"{done.id}: {done.phase.value}: {done.message}")


@main.command()
@click.argument("run")
@click.option("--advance", is_flag=True, help="end the current stage at the next step boundary")
@OUTPUT
@pass_context
def stage(obj: Context, run: str, advance: bool, output: str) -> None:
    """Show a run's curriculum stages, or advance to the next one."""
    if advance:
        done = service.advance_stage(obj.store, run)
        click.echo(f"{done.id}: {done.message}")
        return
    summary = service.report(obj.store, run).as_dict()
    rows = summary["stages"]
    emit(rows, output, lambda: rows_table(rows, title=f"{summary['id']}: stage {summary['stage']} current"))


# ---- GPU telemetry ----------------------------------------------------------------------------


@main.command()
@OUTPUT
@pass_context
def gpus(obj: Context, output: str) -> None:
    """Show the newest sample of every GPU."""
    samples = latest_samples(obj.store)
    emit(views.gpu_records(samples), output, lambda: views.gpu_table(samples))


TOP_HISTORY = 60  # utilization points kept per GPU for the sparkline


def _read_quit(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for input on ``fd``; True when it is ``q``/``Q`` or end of input."""
    ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
    if not ready:
        return False
    data = os.read(fd, 64)
    return not data or b"q" in data.lower()


@contextmanager
def _quit_keys(stream: Any) -> Iterator[Callable[[float], bool]]:
    """Yields ``wait(seconds) -> quit?``. On a TTY: cbreak mode, keys polled with select, terminal restored
    on the way out. Otherwise: a plain sleep (Ctrl-C or ``--iterations`` end the loop)."""
    if not stream.isatty():
        yield lambda seconds: bool(time.sleep(seconds))
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield lambda seconds: _read_quit(fd, seconds)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch_top(
    store: object,
    out: Console,
    wait: Callable[[float], bool],
    *,
    interval: float,
    iterations: int | None = None,
) -> int:
    """Refresh the top view every ``interval`` until ``wait`` says quit or ``iterations`` refreshes ran."""
    history: dict[str, deque[float | None]] = {}
    refreshes = 0
    with Live(console=out, auto_refresh=False) as live:
        while True:
            samples = latest_samples(store)
            for sample in samples:
                key = views.sample_key(sample)
                history.setdefault(key, deque(maxlen=TOP_HISTORY)).append(sample.utilization_ratio)
            live.update(views.top_view(samples, history), refresh=True)
            refreshes += 1
            if iterations is not None and refreshes >= iterations:
                return refreshes
            if wait(interval):
                return refreshes


@main.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="seconds between refreshes",
)
@click.option(
    "--iterations",
    type=click.IntRange(min=1),
    default=None,
    help="stop after this many refreshes (default: until q or Ctrl-C)",
)
@pass_context
def top(obj: Context, interval: float, iterations: int | None) -> None:
    """Live per-GPU utilization bars and sparklines; q or Ctrl-C quits."""
    try:
        with _quit_keys(sys.stdin) as wait:
            watch_top(obj.store, console, wait, interval=interval, iterations=iterations)
    except KeyboardInterrupt:
        pass


# ---- controller and database ------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="run one reconcile pass and exit")
@click.option("--backend", envvar="ORCH_BACKEND", default="sim", show_default=True, help="cluster backend")
@click.option("--id", "identity", default=None, help="controller identity for leases (default host-pid)")
@click.option("--lease-seconds", default=15.0, show_default=True, help="how long a run's lease lasts")
@click.option("--exit-when-idle", is_flag=True, help="exit once no unfinished run is left")
@click.option("--http-port", type=int, default=None, help="serve /healthz, /readyz and /metrics on this port")
@pass_context
def controller(
    obj: Context,
    once: bool,
    backend: str,
    identity: str | None,
    lease_seconds: float,
    exit_when_idle: bool,
    http_port: int | None,
) -> None:
    """Run the reconcile loop (Ctrl-C stops it cleanly)."""
    rollout_metrics = RolloutMetrics(REGISTRY) if http_port is not None else None
    parts = make_backend(backend, rollout_metrics=rollout_metrics)
    ctl = Controller(
        obj.store,
        parts.cluster,
        parts.executor,
        identity=identity,
        lease_seconds=lease_seconds,
        sources=parts.sources,
        telemetry=parts.telemetry,
    )
    if once:
        report = ctl.reconcile_once()
        ctl.store.release_leases(ctl.identity)
        parts.close()
        click.echo(f"reconciled {report.runs} run(s), {report.changes} change(s)")
        return
    stop = threading.Event()
    until = (lambda: not obj.store.list_runs(active_only=True)) if exit_when_idle else (lambda: False)
    heartbeat = LoopHeartbeat(stale_after_s=max(60.0, 4 * lease_seconds))
    health = None
    if http_port is not None:
        REGISTRY.register(SchedulerCollector(obj.store))
        REGISTRY.register(GpuCollector(obj.store.latest_gpu_samples))
        health = HealthServer(http_port, heartbeat, obj.store.ping).start()
    try:
        ctl.run(until=until, stop=stop, after_pass=heartbeat.beat)
    except KeyboardInterrupt:
        stop.set()
    finally:
        parts.close()
        if health is not None:
            health.stop()


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@pass_context
def upgrade(obj: Context) -> None:
    """Apply migrations up to the newest schema."""
    store = Store(obj.database_url, migrate=False)
    try:
        revision = store.upgrade()
    finally:
        store.close()
    click.echo(f"database at revision {revision}")


# ---- GPU telemetry agent ----------------------------------------------------------------------


def _interval(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from orchestrator.telemetry.exporter import parse_interval

    try:
        return parse_interval(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@main.command()
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
    import signal
    import socket

    from prometheus_client import generate_latest

    from orchestrator.telemetry.exporter import Agent

    node = node or socket.gethostname()
    if simulate:
        from orchestrator.telemetry.simulated import SimulatedGpuSource

        source: Any = SimulatedGpuSource(node)
    elif dcgm_url:
        from orchestrator.telemetry.dcgm import DcgmSource

        source = DcgmSource(dcgm_url, node)
    else:
        from orchestrator.telemetry.nvml import NvmlSource

        source = NvmlSource(node)
    gpu_agent = Agent(source, interval=interval)
    if once:
        gpu_agent.sample_once()
        click.echo(generate_latest(gpu_agent.registry).decode(), nl=False)
        gpu_agent.stop()
        return
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a DaemonSet pod's stop: shut down cleanly
    try:
        gpu_agent.start()
        server = gpu_agent.serve(port, host)
        click.echo(f"serving {len(gpu_agent.latest())} GPUs of {node} on {server.url} every {interval:g}s")
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        gpu_agent.stop()


# ---- rollout router ---------------------------------------------------------------------------


def _dispatch_policy(value: str, param: click.Parameter) -> str:
    try:
        return resolve_dispatch_policy(value)
    except SpecError as error:
        raise click.BadParameter(str(error), param=param) from error


@main.command()
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

    with suppress(KeyboardInterrupt):
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


@main.group()
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
def tools_serve(port: int, host: str, workers: int | None, ray_address: str | None, max_pending: int) -> None:
    """Serve POST /v1/exec, /v1/exec/batch, /v1/verify, GET /v1/results/ID and /metrics."""
    import asyncio
    import os
    from contextlib import suppress

    from orchestrator.tools.serve import serve_tools

    count = workers or os.cpu_count() or 1

    def ready(url: str, service: object) -> None:
        where = f"Ray cluster {ray_address}" if ray_address else f"{count} sandbox workers"
        click.echo(f"serving tool calls on {url} with {where}")

    with suppress(KeyboardInterrupt):
        asyncio.run(
            serve_tools(
                host=host,
                port=port,
                workers=count,
                ray_address=ray_address,
                max_pending=max_pending,
                ready=ready,
            )
        )


# ---- Kubernetes manifests ---------------------------------------------------------------------


@main.group()
def manifests() -> None:
    """Kubernetes manifests: the TrainingRun CRD, controller, NVML agent, RBAC."""


@manifests.command("render")
@click.option(
    "--overlay",
    type=click.Choice(["base", "dev", "production"]),
    default="base",
    show_default=True,
    help="which kustomization under manifests/ to render",
)
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="orch's manifests folder (default: the one in this source checkout)",
)
def manifests_render(overlay: str, root: Path | None) -> None:
    """Print the rendered multi-document YAML, ready for `kubectl apply -f -`.

    Uses `kubectl kustomize` when kubectl is on PATH. Without it, only the base can be rendered, by
    concatenating its files in kustomization order (each already names its namespace).
    """
    from orchestrator.crd import MANIFESTS, render_manifests

    click.echo(render_manifests(root or MANIFESTS, overlay), nl=False)


@manifests.command("crd")
def manifests_crd() -> None:
    """Print the TrainingRun CRD, generated from the run spec (manifests/base/crd-trainingruns.yaml)."""
    from orchestrator.crd import dump_yaml, training_run_crd

    click.echo(dump_yaml(training_run_crd(), "orch manifests crd"), nl=False)


@manifests.command("trainingrun")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="object name (default: the spec's name)")
@click.option("--namespace", default="orch", show_default=True, help="namespace the controller watches")
def manifests_trainingrun(file: str, name: str | None, namespace: str) -> None:
    """Print a run spec, validated, as a TrainingRun object for `kubectl apply -f -`."""
    from orchestrator.crd import dump_yaml, training_run

    service.validate(file)  # one clear error line naming the file and field, before anything is printed
    data = load_spec_data(file)  # a policy file it names is written in: the object stands on its own
    click.echo(dump_yaml(training_run(data, name, namespace), f"orch manifests trainingrun {file}"), nl=False)


if __name__ == "__main__":
    main()

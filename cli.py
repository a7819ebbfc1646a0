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
from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import orchestrator
from orchestrator import service, views
from orchestrator.backends import check_backend_name, make_backend
from orchestrator.backends.base import Backend
from orchestrator.controller import (
    DB_OUTAGE_SECONDS,
    Controller,
    DatabaseOutage,
    nothing_to_drive,
    with_database,
)
from orchestrator.embedded import run_to_completion
from orchestrator.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_SUSPENDED,
    OrchError,
    PortUnavailable,
    SpecError,
)
from orchestrator.health import HealthServer, LoopHeartbeat
from orchestrator.records import Event, Phase, Run
from orchestrator.spec import HYPHENATED_POLICIES, load_spec_data, resolve_dispatch_policy
from orchestrator.state.store import Store
from orchestrator.telemetry.exporter import GpuCollector
from orchestrator.telemetry.latest import latest_readings
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


@contextmanager
def port_option(option: str) -> Iterator[None]:
    """When a server cannot listen, say which option picks another port."""
    try:
        yield
    except PortUnavailable as error:
        raise OrchError(f"{error}; choose another port with {option}") from error


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


def package_version(distribution: str = "orch") -> str:
    """The installed package's version, else the source tree's (``orchestrator.__version__``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return orchestrator.__version__


@click.group(cls=OrchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "-V", "--version", prog_name="orch")
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


def run_row(run: Run, now: float | None = None) -> dict[str, Any]:
    """A run as plain data for ``-o json|yaml``; ``controller`` is the lease holder at ``now``."""
    now = time.time() if now is None else now
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
        "controller": views.lease_holder(run, now),
        "lease_expires_at": views.iso_time(run.lease_expires_at) if run.lease_owner else None,
    }


def runs_table(runs: Sequence[Run], now: float, width: int) -> Table:
    """``orch list`` for people: the columns that fit 80 terminal columns, one line a run (the message is cut
    to the width left; ``orch status`` shows it whole)."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    cells = [
        (
            run.id,
            run.phase.value,
            str(run.stage_index + 1),
            str(run.steps_done),
            f"{run.gpu_busy_fraction:.0%}",
            views.controller_cell(run, now),
        )
        for run in runs
    ]
    columns = (("id", "left"), ("phase", "left"), ("stage", "right"), ("step", "right"), ("busy", "right"))
    used = 0
    for position, (header, justify) in enumerate((*columns, ("controller", "left"))):
        column_width = max([len(header), *(len(row[position]) for row in cells)])
        used += column_width + 2  # rich pads every column by one space on each side
        table.add_column(header, justify=justify, no_wrap=True, min_width=column_width)  # type: ignore[arg-type]
    left = max(len("message"), width - used - 1)
    table.add_column("message", no_wrap=True, overflow="ellipsis", max_width=left)
    for run, row in zip(runs, cells, strict=True):
        table.add_row(*row, run.message or "-")
    if not runs:
        table.add_row("(none)", *[""] * 6)
    return table


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
    backend = check_backend_name(backend)
    if not wait:
        run = service.submit(obj.store, file)
        emit(run_row(run), output, lambda: f"submitted {run.id} ({spec.total_steps} steps)")
        return
    parts = make_backend(backend, sim_pace=pace)  # a bad setting fails here, before the run is stored
    try:
        run = service.submit(obj.store, file)
        _note_other_runs(service.other_runs(obj.store, run.id), run)
        try:
            run = _run_embedded(obj.store, run, parts, quiet=output != "table")
        except KeyboardInterrupt:
            _say_where_it_stands(obj.store.get_run(run.id), spec.total_steps)
            sys.exit(EXIT_INTERRUPTED)
    finally:
        parts.close()
    summary = service.report(obj.store, run.id).as_dict()
    emit(summary, output, lambda: _summary_table(summary))
    if run.phase is not Phase.SUCCEEDED:
        _say_where_it_stands(run, spec.total_steps)
        sys.exit(WAIT_EXIT_CODES.get(run.phase, 1))


WAIT_EXIT_CODES = {
    Phase.FAILED: EXIT_RUN_FAILED,
    Phase.CANCELLED: EXIT_RUN_CANCELLED,
    Phase.SUSPENDED: EXIT_RUN_SUSPENDED,
}


def _note(text: str) -> None:
    errors.print(text, markup=False, highlight=False, soft_wrap=True)


def _driver(other: service.OtherRun) -> str:
    return f"driven by {other.controller}" if other.controller else "no controller drives it"


def _note_other_runs(others: Sequence[service.OtherRun], run: Run) -> None:
    """One line naming the unfinished runs this --wait leaves alone (it drives its own run only)."""
    if not others:
        return
    named = ", ".join(f"{o.run.id} ({o.run.phase.value}, {_driver(o)})" for o in others)
    _note(f"note: --wait drives {run.id} only; other unfinished runs: {named}; `orch controller` runs them")


def _note_gpu_holders(others: Sequence[service.OtherRun], run: Run) -> None:
    """One line naming the runs whose GPUs this run waits for, and whether anything drives them."""
    holders = [o for o in others if o.gpus]
    named = ", ".join(f"{o.run.id} ({o.gpus} GPUs, {o.run.phase.value}, {_driver(o)})" for o in holders)
    advice = (
        "; `orch controller` drives them, `orch cancel RUN` frees their GPUs"
        if any(o.controller is None for o in holders)
        else ""
    )
    _note(
        f"note: {run.id} waits for GPUs held by {named or 'no run in this database'}{advice}: {run.message}"
    )


def _say_where_it_stands(run: Run, total: int) -> None:
    """The run's phase, why it is there, and the commands that take it on."""
    _note(f"{run.id}: {run.phase.value} at step {run.steps_done} of {total}: {run.message or '-'}")
    if run.phase in (Phase.SUSPENDED, Phase.FAILED):
        _note(
            f"to continue from its last checkpoint: `orch resume {run.id}`, then "
            f"`orch controller --exit-when-idle`; `orch events {run.id}` shows what happened"
        )
    elif run.phase is Phase.CANCELLED:
        _note("a cancelled run stays cancelled: submit the spec again to start over")
    elif not run.phase.terminal:
        _note(
            "nothing drives it now (its lease is released): `orch controller --exit-when-idle` runs it to "
            f"the end, `orch cancel {run.id}` stops it"
        )


def _run_embedded(store: Store, run: Run, parts: Backend, *, quiet: bool) -> Run:
    total = sum(s.planned_steps or 0 for s in store.stages(run.id))
    started = time.monotonic()
    noted = ""
    with _progress(quiet) as progress:
        task = progress.add_task("starting", total=total)

        def show(current: Run) -> None:
            nonlocal noted
            if current.message.startswith("waiting for GPUs") and current.message != noted:
                noted = current.message
                _note_gpu_holders(service.other_runs(store, current.id), current)
            progress.update(
                task,
                completed=current.steps_done,
                description=f"stage {current.stage_index + 1} · step {current.steps_done}/{total} · "
                f"GPU busy {current.gpu_busy_fraction:.0%} · {current.phase.value}",
            )

        final = run_to_completion(store, run.id, parts, on_progress=show)
    if not quiet:
        console.print(f"{final.id}: {final.phase.value} in {time.monotonic() - started:.1f}s wall time")
    return final


@contextmanager
def _progress(
    quiet: bool, out: Console = console, get_time: Callable[[], float] | None = None
) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=out,
        disable=quiet,
        get_time=get_time,
    )
    with progress:
        yield progress


def _summary_table(summary: dict[str, Any], controller: str | None = None) -> Table:
    """``orch status`` for people: one labelled line each, readable at 80 columns, no raw dicts or lists."""
    table = Table(title=f"run {summary['id']}", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    hours = float(summary["simulated_seconds"]) / 3600
    engines = views.engines_line(summary["last_step_engines"], summary["last_step_queue_peak"])
    for label, value in (
        ("phase", summary["phase"]),
        ("steps", f"{summary['steps_done']} of {summary['steps_planned']}"),
        ("stage", f"{summary['stage']} ({summary['stage_name']})"),
        ("stage changes", summary["stage_changes"]),
        ("checkpoints", views.step_list(summary["checkpoints"])),
        ("attempts", summary["attempt"]),
        ("steps redone after failures", summary["superseded_steps"]),
        ("GPU busy fraction", f"{float(summary['gpu_busy_fraction']):.1%}"),
        ("idle GPU-hours", views.hours_by_role(summary["idle_gpu_hours"], summary["idle_gpu_hours_by_role"])),
        ("simulated time", f"{summary['simulated_seconds']}s ({hours:.2f} h)"),
        ("message", summary["message"] or "-"),
        ("last step's engines", engines),
    ):
        table.add_row(label, str(value))
    if controller is not None:
        table.add_row("controller", controller)
    return table


@main.command("list")
@OUTPUT
@pass_context
def list_runs(obj: Context, output: str) -> None:
    """List runs."""
    now = time.time()
    runs = obj.store.list_runs()
    emit([run_row(run, now) for run in runs], output, lambda: runs_table(runs, now, console.width))


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def status(obj: Context, run: str, output: str) -> None:
    """Show one run: phase, stage, steps, checkpoints, GPU busy fraction."""
    now = time.time()
    report = service.report(obj.store, run)
    summary = report.as_dict(now)
    emit(summary, output, lambda: _summary_table(summary, views.controller_line(report.run, now)))


def _event_row(event: Event, *, for_people: bool) -> dict[str, Any]:
    """An event; its time as ``2026-12-02 12:04:47`` (local) for people, ISO 8601 (UTC) for machines."""
    return {
        "id": event.id,
        "time": views.local_time(event.at) if for_people else views.iso_time(event.at),
        "reason": event.reason,
        "message": event.message,
    }


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def events(obj: Context, run: str, output: str) -> None:
    """Show a run's events, oldest first."""
    found = service.events(obj.store, run)
    rows = [_event_row(event, for_people=output == "table") for event in found]
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


STALE_SECONDS = click.option(
    "--stale-seconds",
    type=click.FloatRange(min=0, min_open=True),
    envvar=views.STALE_SECONDS_ENV,
    default=views.DEFAULT_STALE_SECONDS,
    show_default=True,
    help=f"a GPU without a sample for this long is shown stale; a node silent for "
    f"{views.DROP_AFTER_STALE_WINDOWS}x as long is not shown (env {views.STALE_SECONDS_ENV})",
)
NODES = click.option(
    "--node",
    "nodes",
    multiple=True,
    metavar="PATTERN",
    help="only nodes whose name matches this shell pattern (repeat for more)",
)


@main.command()
@STALE_SECONDS
@NODES
@OUTPUT
@pass_context
def gpus(obj: Context, stale_seconds: float, nodes: tuple[str, ...], output: str) -> None:
    """Show the newest sample of every GPU, with its age."""
    shown, dropped = views.gpu_views(latest_readings(obj.store), time.time(), stale_seconds, nodes)
    emit(views.gpu_records(shown), output, lambda: views.gpu_table(shown, dropped, stale_seconds))


TOP_HISTORY = 60  # utilization points kept per GPU and per node for the sparklines
QUIT, NEXT_PAGE, PREVIOUS_PAGE = "quit", "next", "previous"
# What a key press sends, in a terminal in cbreak mode: ↓ PgDn j space page on, ↑ PgUp k back.
PAGE_KEYS = ((b"\x1b[B", NEXT_PAGE), (b"\x1b[6~", NEXT_PAGE), (b"\x1b[A", PREVIOUS_PAGE))
PAGE_KEYS += ((b"\x1b[5~", PREVIOUS_PAGE), (b"j", NEXT_PAGE), (b" ", NEXT_PAGE), (b"k", PREVIOUS_PAGE))


def key_command(data: bytes) -> str:
    """What a chunk read from the terminal asks ``orch top`` to do: quit, page, or nothing (``""``)."""
    if not data or b"q" in data.lower():
        return QUIT
    for sequence, command in PAGE_KEYS:
        if sequence in data:
            return command
    return ""


def _read_key(fd: int, timeout: float) -> str:
    """Wait up to ``timeout`` seconds for input on ``fd``; the command it sends (see ``key_command``)."""
    ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
    if not ready:
        return ""
    return key_command(os.read(fd, 64))


@contextmanager
def _keys(stream: Any) -> Iterator[Callable[[float], str]]:
    """Yields ``wait(seconds) -> command``. On a TTY: cbreak mode, keys polled with select, terminal
    restored on the way out. Otherwise: a plain sleep (Ctrl-C or ``--iterations`` end the loop)."""
    if not stream.isatty():

        def sleep(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield sleep
        return
    import termios
    import tty

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)
    try:
        yield lambda seconds: _read_key(fd, seconds)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def watch_top(
    store: object,
    out: Console,
    wait: Callable[[float], str],
    *,
    interval: float,
    iterations: int | None = None,
    stale_after_s: float = views.DEFAULT_STALE_SECONDS,
    nodes: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> int:
    """Refresh the top view every ``interval`` until ``wait`` says quit or ``iterations`` refreshes ran.

    Each frame fits ``out``'s size: as many whole nodes as fit its height; ``wait`` returning
    ``NEXT_PAGE`` / ``PREVIOUS_PAGE`` moves between screens."""
    history: dict[str, deque[float | None]] = {}
    refreshes = page = 0
    with Live(console=out, auto_refresh=False) as live:
        while True:
            shown, dropped = views.gpu_views(latest_readings(store), clock(), stale_after_s, nodes)
            ratios = {views.sample_key(v.sample): v.sample.utilization_ratio for v in shown}
            for key, ratio in {**ratios, **views.node_utilization(shown)}.items():
                history.setdefault(key, deque(maxlen=TOP_HISTORY)).append(ratio)
            width, height = out.size
            page = min(page, views.top_page_count(shown, height) - 1)
            frame = views.top_view(shown, history, width=width, height=height, page=page, dropped=dropped)
            live.update(frame, refresh=True)
            refreshes += 1
            if iterations is not None and refreshes >= iterations:
                return refreshes
            command = wait(interval)
            if command == QUIT:
                return refreshes
            page = max(0, page + {NEXT_PAGE: 1, PREVIOUS_PAGE: -1}.get(command, 0))


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
@STALE_SECONDS
@NODES
@pass_context
def top(
    obj: Context, interval: float, iterations: int | None, stale_seconds: float, nodes: tuple[str, ...]
) -> None:
    """Live per-node and per-GPU utilization, bars and sparklines; ↓/PgDn ↑/PgUp page; q or Ctrl-C quits."""
    try:
        with _keys(sys.stdin) as wait:
            watch_top(
                obj.store,
                console,
                wait,
                interval=interval,
                iterations=iterations,
                stale_after_s=stale_seconds,
                nodes=nodes,
            )
    except KeyboardInterrupt:
        pass


# ---- controller and database ------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="run one reconcile pass and exit")
@click.option("--backend", envvar="ORCH_BACKEND", default="sim", show_default=True, help="cluster backend")
@click.option("--id", "identity", default=None, help="controller identity for leases (default host-pid)")
@click.option("--lease-seconds", default=15.0, show_default=True, help="how long a run's lease lasts")
@click.option("--exit-when-idle", is_flag=True, help="exit once no unfinished run is left but Suspended ones")
@click.option("--http-port", type=int, default=None, help="serve /healthz, /readyz and /metrics on this port")
@click.option(
    "--db-outage-seconds",
    type=click.FloatRange(min=0),
    default=DB_OUTAGE_SECONDS,
    show_default=True,
    help="retry an unreachable database this long before exiting",
)
@pass_context
def controller(
    obj: Context,
    once: bool,
    backend: str,
    identity: str | None,
    lease_seconds: float,
    exit_when_idle: bool,
    http_port: int | None,
    db_outage_seconds: float,
) -> None:
    """Run the reconcile loop (Ctrl-C stops it cleanly)."""
    rollout_metrics = RolloutMetrics(REGISTRY) if http_port is not None else None
    parts = make_backend(backend, rollout_metrics=rollout_metrics)
    if once and parts.in_process:
        parts.close()
        raise OrchError(
            f"orch controller --once cannot make progress on the {backend!r} backend: its simulated pool "
            "lives in this process and its workloads die when the pass ends; run "
            "`orch controller --exit-when-idle` or `orch submit FILE --wait` instead"
        )
    outage = DatabaseOutage(db_outage_seconds)
    ctl = Controller(
        with_database(lambda: obj.store, outage),
        parts.cluster,
        parts.executor,
        identity=identity,
        lease_seconds=lease_seconds,
        sources=parts.sources,
        telemetry=parts.telemetry,
        transient=parts.transient,
    )
    if once:
        report = ctl.reconcile_once()
        ctl.store.release_leases(ctl.identity)
        parts.close()
        click.echo(f"reconciled {report.runs} run(s), {report.changes} change(s)")
        return
    stop = threading.Event()
    until = (lambda: nothing_to_drive(obj.store)) if exit_when_idle else (lambda: False)
    heartbeat = LoopHeartbeat(stale_after_s=max(60.0, 4 * lease_seconds))
    health = None
    try:
        if http_port is not None:
            REGISTRY.register(SchedulerCollector(obj.store))
            REGISTRY.register(GpuCollector(obj.store.latest_gpu_samples))
            with port_option("--http-port"):
                health = HealthServer(http_port, heartbeat, obj.store.ping).start()
        ctl.run(until=until, stop=stop, after_pass=heartbeat.beat, outage=outage)
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
        from orchestrator.sim.gpu_source import SimulatedGpuSource

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
        with port_option("--port"):
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

    with suppress(KeyboardInterrupt), port_option("--port"):
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
    from orchestrator.kube.manifests import MANIFESTS, render_manifests

    click.echo(render_manifests(root or MANIFESTS, overlay), nl=False)


@manifests.command("crd")
def manifests_crd() -> None:
    """Print the TrainingRun CRD, generated from the run spec (manifests/base/crd-trainingruns.yaml)."""
    from orchestrator.kube.crd import training_run_crd
    from orchestrator.kube.manifests import dump_yaml

    click.echo(dump_yaml(training_run_crd(), "orch manifests crd"), nl=False)


@manifests.command("trainingrun")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", default=None, help="object name (default: the spec's name)")
@click.option("--namespace", default="orch", show_default=True, help="namespace the controller watches")
def manifests_trainingrun(file: str, name: str | None, namespace: str) -> None:
    """Print a run spec, validated, as a TrainingRun object for `kubectl apply -f -`."""
    from orchestrator.kube.crd import training_run
    from orchestrator.kube.manifests import dump_yaml

    service.validate(file)  # one clear error line naming the file and field, before anything is printed
    data = load_spec_data(file)  # a policy file it names is written in: the object stands on its own
    click.echo(dump_yaml(training_run(data, name, namespace), f"orch manifests trainingrun {file}"), nl=False)


if __name__ == "__main__":
    main()

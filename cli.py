"""``orch``: commands that parse, call ``orchestrator.service`` and show with ``orchestrator.render``."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import click

import orchestrator
from orchestrator import service
from orchestrator.backends import check_backend_name, make_backend
from orchestrator.commands.common import (
    OUTPUT,
    Context,
    endpoint_options,
    guard_from_options,
    pass_context,
    port_option,
)
from orchestrator.commands.doctor import doctor
from orchestrator.commands.gpus import gpus, top
from orchestrator.commands.logs import logs
from orchestrator.commands.manifests import manifests
from orchestrator.commands.queues import queues
from orchestrator.commands.servers import agent, router, tools
from orchestrator.commands.worker import worker
from orchestrator.controller import DB_OUTAGE_SECONDS
from orchestrator.errors import (
    EXIT_INTERRUPTED,
    EXIT_RUN_CANCELLED,
    EXIT_RUN_FAILED,
    EXIT_RUN_SUSPENDED,
    OrchError,
)
from orchestrator.records import Phase
from orchestrator.render import runs as run_view
from orchestrator.render import wait as wait_view
from orchestrator.render.output import console, emit, errors
from orchestrator.render.text import controller_line

WAIT_EXIT_CODES = {
    Phase.FAILED: EXIT_RUN_FAILED,
    Phase.CANCELLED: EXIT_RUN_CANCELLED,
    Phase.SUSPENDED: EXIT_RUN_SUSPENDED,
}


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


BACKEND = click.option(
    "--backend",
    envvar="ORCH_BACKEND",
    default="sim",
    show_default=True,
    help="cluster backend: sim, kube or ray",
)


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
@BACKEND
@OUTPUT
@pass_context
def submit(obj: Context, file: str, wait: bool, pace: float | None, backend: str, output: str) -> None:
    """Store a run spec as a new run (and with --wait, run it to the end)."""
    spec = service.validate(file)
    backend = check_backend_name(backend)
    if not wait:
        run = service.submit(obj.store, spec)
        emit(
            run_view.run_row(run, time.time()),
            output,
            lambda: f"submitted {run.id} ({spec.total_steps} steps)",
        )
        return
    parts = make_backend(backend, sim_pace=pace)  # a bad setting fails here, before the run is stored
    try:
        run = service.submit(obj.store, spec)
        wait_view.note_other_runs(service.other_runs(obj.store, run.id), run)
        total = service.planned_steps(obj.store, run.id)
        try:
            with wait_view.progress_bar(output != "table") as bar:
                shown = wait_view.WaitProgress(bar, total, lambda ref: service.other_runs(obj.store, ref))
                run = service.run_to_completion(obj.store, run.id, parts, on_progress=shown.show)
            if output == "table":
                console.print(shown.finished(run))
        except KeyboardInterrupt:
            wait_view.say_where_it_stands(obj.store.get_run(run.id), spec.total_steps)
            sys.exit(EXIT_INTERRUPTED)
    finally:
        parts.close()
    summary = run_view.report_record(service.report(obj.store, run.id), time.time())
    emit(summary, output, lambda: run_view.summary_table(summary))
    if run.phase is not Phase.SUCCEEDED:
        wait_view.say_where_it_stands(run, spec.total_steps)
        sys.exit(WAIT_EXIT_CODES.get(run.phase, 1))


@main.command("list")
@click.option("--queue", default=None, metavar="NAME", help="only the runs of this queue")
@OUTPUT
@pass_context
def list_runs(obj: Context, queue: str | None, output: str) -> None:
    """List runs."""
    now = time.time()
    runs = service.list_runs(obj.store, queue=queue)
    rows = [run_view.run_row(run, now) for run in runs]
    emit(rows, output, lambda: run_view.runs_table(runs, now, console.width))


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def status(obj: Context, run: str, output: str) -> None:
    """Show one run: phase, stage, steps, checkpoints, GPU busy fraction; its queue, its place in line
    and why it waits, who preempted it."""
    now = time.time()
    report = service.report(obj.store, run)
    summary = run_view.report_record(report, now)
    emit(summary, output, lambda: run_view.summary_table(summary, controller_line(report.run, now)))


@main.command()
@click.argument("run")
@OUTPUT
@pass_context
def events(obj: Context, run: str, output: str) -> None:
    """Show a run's events, oldest first."""
    found = service.events(obj.store, run)
    rows = [run_view.event_row(event, for_people=output == "table") for event in found]
    emit(rows, output, lambda: run_view.rows_table(rows))


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
    summary = run_view.report_record(service.report(obj.store, run), time.time())
    rows = summary["stages"]
    title = f"{summary['id']}: stage {summary['stage']} current"
    emit(rows, output, lambda: run_view.rows_table(rows, title=title))


# ---- controller and database ------------------------------------------------------------------


@main.command()
@click.option("--once", is_flag=True, help="run one reconcile pass and exit")
@BACKEND
@click.option("--id", "identity", default=None, help="controller identity for leases (default host-pid)")
@click.option("--lease-seconds", default=15.0, show_default=True, help="how long a run's lease lasts")
@click.option("--exit-when-idle", is_flag=True, help="exit once no unfinished run is left but Suspended ones")
@click.option("--http-port", type=int, default=None, help="serve /healthz, /readyz and /metrics on this port")
@endpoint_options("ORCH_CONTROLLER_TOKEN", "--http-port")
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
    host: str,
    token_file: str | None,
    allowed_hosts: tuple[str, ...],
    db_outage_seconds: float,
) -> None:
    """Run the reconcile loop (Ctrl-C stops it cleanly).

    With --http-port, /metrics needs the token when one is set; /healthz and /readyz are open (ok, not ok)."""
    guard = None
    if http_port is not None:
        guard = guard_from_options("ORCH_CONTROLLER_TOKEN", host, token_file, allowed_hosts)
    with port_option("--http-port"):
        report = service.run_controller(
            lambda: obj.store,
            backend,
            once=once,
            identity=identity,
            lease_seconds=lease_seconds,
            exit_when_idle=exit_when_idle,
            http_port=http_port,
            http_guard=guard,
            db_outage_seconds=db_outage_seconds,
        )
    if report is not None:
        click.echo(f"reconciled {report.runs} run(s), {report.changes} change(s)")


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@pass_context
def upgrade(obj: Context) -> None:
    """Apply migrations up to the newest schema."""
    click.echo(f"database at revision {service.upgrade_database(obj.database_url)}")


for command in (logs, gpus, top, agent, router, tools, manifests, worker, doctor, queues):
    main.add_command(command)

if __name__ == "__main__":
    main()

"""``orch logs``: print a run's member logs (the Ray backend's log files), optionally following them."""

from __future__ import annotations

import click

from orchestrator import service
from orchestrator.commands.common import Context, pass_context


@click.command()
@click.argument("run")
@click.option("--role", default=None, help="only this role's members (trainer, engine)")
@click.option("--index", type=click.IntRange(min=0), default=None, help="only the member of this index")
@click.option("--attempt", type=click.IntRange(min=0), default=None, help="this attempt (default: newest)")
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines until the run finishes")
@click.option("--tail", type=click.IntRange(min=0), default=None, help="only the last N lines of each log")
@click.option("--backend", envvar="ORCH_BACKEND", default="sim", show_default=True, help="sim, kube or ray")
@pass_context
def logs(
    obj: Context,
    run: str,
    role: str | None,
    index: int | None,
    attempt: int | None,
    follow: bool,
    tail: int | None,
    backend: str,
) -> None:
    """Print a run's member logs, prefixed with the member when several are shown."""
    found = service.run_logs(
        obj.store, run, backend=backend, role=role, index=index, attempt=attempt, tail=tail, follow=follow
    )
    if found.note:
        click.echo(found.note)
    try:
        for line in found.lines:
            click.echo(f"{line.member} | {line.text}" if found.several else line.text)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --follow quietly

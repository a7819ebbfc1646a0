"""``orch queues``: list the queues (quota, used, borrowed, pending, admitted), ``apply`` queue files,
``delete`` a queue."""

from __future__ import annotations

import click

from orchestrator import service
from orchestrator.commands.common import OUTPUT, Context, pass_context
from orchestrator.render import queues as queue_view
from orchestrator.render.output import emit

__all__ = ["queues"]


@click.group(invoke_without_command=True)
@OUTPUT
@click.pass_context
def queues(ctx: click.Context, output: str) -> None:
    """List the queues: per queue and pool, its quota (nominal GPUs), the most it may borrow from its
    cohort, the GPUs its admitted runs use and borrow, the runs pending (and the GPUs they ask for) and the
    runs admitted."""
    if ctx.invoked_subcommand is not None:
        return
    rows = service.queue_report(ctx.find_object(Context).store)
    emit([queue_view.queue_record(row) for row in rows], output, lambda: queue_view.queues_table(rows))


@queues.command()
@click.argument("files", nargs=-1, required=True, type=click.Path())
@pass_context
def apply(obj: Context, files: tuple[str, ...]) -> None:
    """Create or update queues from FILES (a folder: its *.yaml files); all are checked before any is
    written."""
    for line in queue_view.applied_lines(service.apply_queues(obj.store, files)):
        click.echo(line)


@queues.command()
@click.argument("name")
@pass_context
def delete(obj: Context, name: str) -> None:
    """Delete a queue no unfinished run names."""
    service.delete_queue(obj.store, name)
    click.echo(f"queue {name}: deleted")

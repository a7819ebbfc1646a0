"""``orch doctor``: is this Kubernetes cluster (and the database) ready for orch's controller?"""

from __future__ import annotations

import sys

import click

from orchestrator import service
from orchestrator.commands.common import OUTPUT, Context, pass_context
from orchestrator.render.doctor import check_line, check_rows
from orchestrator.render.output import emit
from orchestrator.service import doctor as checks

__all__ = ["doctor"]


@click.command()
@click.option(
    "--namespace",
    envvar=checks.NAMESPACE_ENV,
    default=checks.DEFAULT_NAMESPACE,
    show_default=True,
    help="the namespace orch's controller runs its workloads in",
)
@click.option(
    "--pool-label",
    envvar=checks.POOL_LABEL_ENV,
    default=checks.DEFAULT_POOL_LABEL,
    show_default=True,
    help="the node label whose value names a node's pool",
)
@click.option(
    "--image-pull-secret",
    envvar=checks.IMAGE_PULL_SECRET_ENV,
    default="",
    help="the docker-registry Secret pods pull orch's images with (unset: the check is skipped)",
)
@click.option(
    "--rbac-as",
    default=None,
    help="check RBAC as this user (default: the controller's ServiceAccount, by impersonation; "
    "'' for whoever runs this, e.g. inside the controller's pod)",
)
@OUTPUT
@pass_context
def doctor(
    obj: Context, namespace: str, pool_label: str, image_pull_secret: str, rbac_as: str | None, output: str
) -> None:
    """Preflight: API server, TrainingRun CRD, GPU nodes, the controller's RBAC, pull secret, database.

    One line per check, with the fix when it fails; exits non-zero when any check fails."""
    report = service.run_doctor(
        database_url=obj.database_url,
        namespace=namespace,
        pool_label=pool_label,
        image_pull_secret=image_pull_secret,
        rbac_as=rbac_as,
    )
    if output == "table":
        for check in report.checks:
            click.echo(check_line(check))
    else:
        emit(check_rows(report.checks), output, lambda: "")
    sys.exit(report.exit_code)

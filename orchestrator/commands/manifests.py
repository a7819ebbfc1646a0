"""``orch manifests``: the Kubernetes manifests, the TrainingRun CRD and TrainingRun objects."""

from __future__ import annotations

from pathlib import Path

import click

from orchestrator import service
from orchestrator.spec import load_spec_data

__all__ = ["manifests"]

# ---- Kubernetes manifests ---------------------------------------------------------------------


@click.group()
def manifests() -> None:
    """Kubernetes manifests: the TrainingRun CRD, controller, NVML agent, RBAC."""


@manifests.command("render")
@click.option(
    "--overlay",
    type=click.Choice(["base", "dev", "production", "no-monitoring", "gvisor"]),  # kube.manifests.OVERLAYS
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

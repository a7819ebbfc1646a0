"""Where rendered output goes: one table for people, or the same data as JSON or YAML for machines."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import yaml
from rich.console import Console, RenderableType

__all__ = ["FORMATS", "console", "emit", "errors", "note"]

FORMATS = ("table", "json", "yaml")
console = Console()
errors = Console(stderr=True)


def emit(data: Any, output: str, table: Callable[[], RenderableType]) -> None:
    """Print ``data`` as JSON or YAML, or (``table``) what ``table()`` renders for people."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
    elif output == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False))
    else:
        console.print(table())


def note(text: str) -> None:
    """One line on stderr, printed as written (no markup, no wrapping)."""
    errors.print(text, markup=False, highlight=False, soft_wrap=True)

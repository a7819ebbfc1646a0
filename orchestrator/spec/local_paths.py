"""Paths a spec file writes with a leading ``./`` or ``../``: read relative to the spec file.

``load_spec`` writes them in as absolute paths, so the members find them whatever their working directory
(a Ray actor's, a learner's step directory): ``rollout.engine.model``, and any word of
``rollout.engine.command``, ``trainer.command`` or ``trainer.learner_command``. A ``./`` path that does not
exist next to the spec file is left as written (it may name a file inside the trainer's image).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

__all__ = ["resolve_local_paths"]

_COMMANDS = (("rollout", "engine", "command"), ("trainer", "command"), ("trainer", "learner_command"))


def _local(word: str, spec_dir: Path) -> str:
    if not word.startswith(("./", "../")):
        return word
    path = (spec_dir / word).resolve()
    return str(path) if path.exists() else word


def _command(text: str, spec_dir: Path) -> str:
    try:
        words = shlex.split(text)
    except ValueError:
        return text  # the model's validation words it
    resolved = [_local(word, spec_dir) for word in words]
    return text if resolved == words else shlex.join(resolved)


def _section(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any] | None:
    for key in keys:
        data = data.get(key)  # type: ignore[assignment]
        if not isinstance(data, dict):
            return None
    return data


def resolve_local_paths(data: dict[str, Any], spec_dir: Path) -> dict[str, Any]:
    """``data`` with its ``./`` and ``../`` paths (see the module docstring) made absolute."""
    data = {**data}
    for section in ("rollout", "trainer"):
        if isinstance(data.get(section), dict):
            data[section] = {**data[section]}
    rollout = data.get("rollout")
    if isinstance(rollout, dict) and isinstance(rollout.get("engine"), dict):
        engine = rollout["engine"] = {**rollout["engine"]}
        if isinstance(engine.get("model"), str):
            engine["model"] = _local(engine["model"], spec_dir)
    for *where, key in _COMMANDS:
        section = _section(data, tuple(where))
        if section is not None and isinstance(section.get(key), str):
            section[key] = _command(section[key], spec_dir)
    return data

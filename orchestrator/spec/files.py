"""Spec and dispatch policy files: read them, turning an unreadable or broken file into one ``SpecError``
line, and write a policy file a spec names into the spec."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import SpecError
from orchestrator.spec.dataset import dataset_path, read_problems
from orchestrator.spec.local_paths import resolve_local_paths
from orchestrator.spec.models import (
    DISPATCH_POLICIES,
    HYPHENATED_POLICIES,
    DispatchPolicySpec,
    RunSpec,
    canonical_policy_name,
    is_policy_file,
)
from orchestrator.spec.problems import parse_spec, validate_mapping
from orchestrator.spec.queues import QueueSpec

__all__ = [
    "load_dispatch_policy",
    "load_queue_files",
    "load_spec",
    "load_spec_data",
    "resolve_dispatch_policy",
]


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError(f"{path}: cannot read the file ({error.strerror})") from error
    if b"\0" in data:
        raise SpecError(f"{path}: a binary file, not YAML text; give the path of a .yaml file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            "save the file as UTF-8"
        ) from error


def _read_yaml(path: Path) -> Any:
    text = _read_text(path)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise SpecError(f"{path}: broken YAML{where}: {problem}") from error


def load_dispatch_policy(path: str | Path) -> DispatchPolicySpec:
    """Read and validate a dispatch policy file (``policies/dispatch/*.yaml``)."""
    path = Path(path)
    return validate_mapping(DispatchPolicySpec, _read_yaml(path), str(path), "with a policy field")


def _queue_paths(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, a folder standing for the ``*.yaml`` and ``*.yml`` files in it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


def load_queue_files(paths: Sequence[str | Path]) -> list[QueueSpec]:
    """Read and validate queue files (``policies/queues/*.yaml``; a folder stands for its YAML files): a
    file holds one queue mapping or a list of them. Every problem in every file is one ``SpecError`` line
    naming the file and the field; a queue name defined twice is one."""
    problems: list[str] = []
    queues: list[QueueSpec] = []
    where: dict[str, str] = {}  # queue name -> where it was first defined
    files = _queue_paths(paths)
    if not files:
        raise SpecError(f"{', '.join(map(str, paths))}: no queue files (*.yaml) found")
    for path in files:
        try:
            data = _read_yaml(path)
        except SpecError as error:
            problems += error.problems
            continue
        items = data if isinstance(data, list) else [data]
        for index, item in enumerate(items):
            source = f"{path}[{index}]" if isinstance(data, list) else str(path)
            try:
                queue = validate_mapping(QueueSpec, item, source, "of queue settings")
            except SpecError as error:
                problems += error.problems
                continue
            if queue.name in where:
                problems.append(
                    f"{source}: name: queue {queue.name!r} is also defined in {where[queue.name]}; "
                    "define each queue once"
                )
                continue
            where[queue.name] = source
            queues.append(queue)
    if problems:
        raise SpecError(*problems)
    return queues


def resolve_dispatch_policy(text: str) -> str:
    """A policy name in either spelling, or a policy file's policy, as the dispatcher names it."""
    if is_policy_file(text):
        return load_dispatch_policy(text.strip()).policy
    name = canonical_policy_name(text)
    if name not in DISPATCH_POLICIES:
        raise SpecError(
            f"{text!r} is not a dispatch policy; choose one of {', '.join(HYPHENATED_POLICIES)}, "
            "or give a policy file (.yaml)"
        )
    return name


def _inline_policy_file(data: dict[str, Any], spec_dir: Path, source: str) -> dict[str, Any]:
    """Replace a ``rollout.dispatch`` that names a policy file with what the file says.

    The stored spec then stands on its own (a resumed run never reads the file again). A
    ``chunk_tokens`` written in the spec itself wins over the file's.
    """
    rollout = data.get("rollout")
    if not isinstance(rollout, dict) or not is_policy_file(rollout.get("dispatch")):
        return data
    try:
        policy = load_dispatch_policy(spec_dir / rollout["dispatch"].strip())
    except SpecError as error:
        raise SpecError(*(f"{source}: rollout.dispatch: {problem}" for problem in error.problems)) from error
    resolved = {**rollout, "dispatch": policy.policy}
    resolved.setdefault("chunk_tokens", policy.chunk_tokens)
    return {**data, "rollout": resolved}


def _check_dataset_file(data: dict[str, Any], spec_dir: Path, source: str) -> dict[str, Any]:
    """Read the file ``dataset.uri`` names (relative to the spec file), write its absolute path in, and
    take ``dataset.problems`` from its line count when the spec leaves it out."""
    dataset = data.get("dataset")
    uri = dataset.get("uri") if isinstance(dataset, dict) else None
    if not isinstance(uri, str) or ("://" in uri and not uri.startswith("file://")):
        return data  # absent, or not a local file: the model's validation words it
    path = dataset_path(uri)
    path = (spec_dir / path if not path.is_absolute() else path).resolve()
    try:
        count = len(read_problems(path))
    except SpecError as error:
        raise SpecError(*(f"{source}: dataset.uri: {problem}" for problem in error.problems)) from error
    given = dataset.get("problems", count)
    if given != count:
        raise SpecError(
            f"{source}: dataset.problems: {given!r} but {path} holds {count} problems; "
            "remove problems (it defaults to the file's count) or set it to "
            f"{count}"
        )
    return {**data, "dataset": {**dataset, "uri": str(path), "problems": count}}


def load_spec_data(path: str | Path) -> Any:
    """A spec file's YAML as written, with the dispatch policy file it names (if any) written in, its
    dataset file (if any) checked and named by absolute path, and its ``./`` paths made absolute
    (``orchestrator.spec.local_paths``)."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        return data
    data = _inline_policy_file(data, path.parent, str(path))
    data = resolve_local_paths(data, path.parent.resolve())
    return _check_dataset_file(data, path.parent, str(path))


def load_spec(path: str | Path) -> RunSpec:
    """Read and validate a run spec file (and the dispatch policy file it names, if any)."""
    return parse_spec(load_spec_data(path), source=str(path))

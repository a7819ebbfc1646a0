"""A dataset file: JSONL, one ``{"id", "prompt", "answer"}`` object a line, read and checked line by line.

Every problem is reported as ``<file>:<line>: <field>: <what is wrong>``, all of them in one ``SpecError``
(up to ``MAX_PROBLEMS`` lines). Other keys on a line are allowed and ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from orchestrator.errors import SpecError

__all__ = ["MAX_PROBLEMS", "Problem", "dataset_path", "parse_problems", "read_problems"]

MAX_PROBLEMS = 20  # lines of one SpecError: enough to see the pattern, short enough to read


@dataclass(frozen=True)
class Problem:
    """One problem: its id, the prompt the model sees, and the reference answer (integers as text)."""

    id: str
    prompt: str
    answer: str


def dataset_path(uri: str) -> Path:
    """The local file a ``dataset.uri`` names: a path, or a ``file://`` URI."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    return Path(uri)


def _problem(data: Any) -> Problem | str:
    """The problem on one line, or what is wrong with it (``<field>: <problem>``)."""
    if not isinstance(data, dict):
        return f'expected an object {{"id", "prompt", "answer"}}, found a {type(data).__name__}'
    for field in ("id", "prompt", "answer"):
        if field not in data:
            return f"{field}: required field is missing; add it"
    problem_id, prompt, answer = data["id"], data["prompt"], data["answer"]
    if not isinstance(problem_id, str) or not problem_id.strip():
        return f"id: got {problem_id!r}; it should be a non-empty string"
    if not isinstance(prompt, str) or not prompt.strip():
        return f"prompt: got {str(prompt)[:40]!r}; it should be a non-empty string"
    if isinstance(answer, bool) or not isinstance(answer, int | str) or str(answer).strip() == "":
        return f"answer: got {answer!r}; it should be an integer or a non-empty string"
    return Problem(problem_id, prompt, str(answer))


def parse_problems(lines: list[str], source: str) -> tuple[Problem, ...]:
    """The problems in JSONL ``lines`` (blank lines skipped); ``source`` names the file in errors."""
    problems: list[Problem] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            found = _problem(json.loads(line))
        except json.JSONDecodeError as error:
            found = f"not JSON ({error.msg} at column {error.colno})"
        if isinstance(found, Problem) and found.id in first_line:
            found = f"id: {found.id!r} is already the id of line {first_line[found.id]}; ids must be unique"
        if isinstance(found, str):
            errors.append(f"{source}:{number}: {found}")
        else:
            first_line[found.id] = number
            problems.append(found)
    if errors:
        more = len(errors) - MAX_PROBLEMS
        raise SpecError(*errors[:MAX_PROBLEMS], *([f"{source}: {more} more bad lines"] if more > 0 else []))
    if not problems:
        raise SpecError(f"{source}: no problems in the file; add one JSON object a line")
    return tuple(problems)


def read_problems(uri: str | Path) -> tuple[Problem, ...]:
    """Read and check a dataset file (a path or ``file://`` URI)."""
    path = dataset_path(str(uri))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot read the dataset ({error.strerror})") from error
    except UnicodeDecodeError as error:
        raise SpecError(f"{path}: not UTF-8 text (offset {error.start}); save the file as UTF-8") from error
    return parse_problems(text.splitlines(), str(path))

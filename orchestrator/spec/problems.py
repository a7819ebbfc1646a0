"""Pydantic's validation errors as ``SpecError`` lines: ``<source>: <field path>: <what is wrong>``, one per
problem; a misspelt key names the field it is nearest to."""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecError
from orchestrator.spec.models import RunSpec, closest

__all__ = ["parse_spec", "validate_mapping"]


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # A key a user typed may hold spaces or line breaks: quote it so the message stays one line.
            name = str(part) if re.fullmatch(r"[\w-]+", str(part)) else repr(str(part))
            path += f".{name}" if path else name
    return path


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _annotation_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None`` or ``Annotated[X, ...]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        for arg in get_args(annotation):
            found = _annotation_model(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that the mapping at ``loc`` (a pydantic error location) is validated as."""
    annotation: Any = model
    for part in loc:
        current = _annotation_model(annotation)
        if current is not None:
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) in (list, tuple) and isinstance(part, int):
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) is dict and isinstance(part, str):
            annotation = get_args(annotation)[1]
        else:
            return None
    return _annotation_model(annotation)


def _describe(detail: Any, message: str, path: str) -> list[str]:
    """One pydantic error as lines of ``<field path>: <what is wrong>``."""
    if detail["type"] == "missing":
        return [f"{path}: required field is missing; add it"]
    should = re.match(r"^(?:Input|String|List|Dictionary|Value) should (.+)$", message)
    if path and should:
        # pydantic says "Input should be greater than 0": name the value the user gave, too.
        return [f"{path}: got {_short(detail.get('input'))}; it should {should.group(1)}"]
    lines = []
    for line in message.splitlines():
        # Validators on a whole model already name the field inside their message.
        if not path or re.match(r"^[\w.\[\]-]+: ", line):
            lines.append(line if not path or line.startswith(path.split(".")[-1]) else f"{path}.{line}")
        else:
            lines.append(f"{path}: {line}")
    return lines


def _problems(model: type[BaseModel], error: ValidationError) -> list[str]:
    """Every problem pydantic found, one line each; a misspelt key names the field it was meant as."""
    details = error.errors()
    meant: set[tuple[Any, ...]] = set()  # locations of missing fields a misspelt key stands for
    lines: dict[int, list[str]] = {}
    for number, detail in enumerate(details):
        loc = tuple(detail["loc"])
        if detail["type"] != "extra_forbidden":
            continue
        parent = _model_at(model, loc[:-1])
        guess = closest(str(loc[-1]), parent.model_fields) if parent is not None else None
        path = _field_path(loc)
        if guess is None:
            lines[number] = [f"{path}: unknown field; remove it or check its spelling"]
        else:
            lines[number] = [f"{path}: unknown field; did you mean {guess}?"]
            meant.add((*loc[:-1], guess))
    for number, detail in enumerate(details):
        loc = tuple(detail["loc"])
        if number in lines or (detail["type"] == "missing" and loc in meant):
            continue
        message = re.sub(r"^(Value error|Assertion failed), ", "", detail["msg"])
        lines[number] = _describe(detail, message, _field_path(loc))
    return [line for number in sorted(lines) for line in lines[number]]


_Model = TypeVar("_Model", bound=BaseModel)


def validate_mapping(model: type[_Model], data: Any, source: str, expected: str) -> _Model:
    """``model`` from parsed YAML/JSON that must be a mapping; any problem is one ``SpecError`` line."""
    if not isinstance(data, dict):
        found = "an empty document" if data is None else f"a {type(data).__name__}"
        raise SpecError(f"{source}: expected a mapping {expected} at the top level, found {found}")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise SpecError(*(f"{source}: {line}" for line in _problems(model, error))) from error


def parse_spec(data: Any, source: str = "spec") -> RunSpec:
    """Validate already-parsed YAML/JSON data; a ``SpecError`` names every problem, one line each."""
    return validate_mapping(RunSpec, data, source, "of run settings")

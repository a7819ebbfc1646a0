"""The ``TrainingRun`` CustomResourceDefinition, generated from the run spec.

``RunSpec.model_json_schema()`` is JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema:
no ``$ref``, no ``anyOf`` with ``null``, no ``const``, a ``type`` on every node, ``exclusiveMinimum`` as a
boolean beside ``minimum``, and ``additionalProperties`` only for maps (unknown fields are pruned instead of
rejected). ``training_run_schema`` does that conversion, so the CRD can never drift from the pydantic models;
``orch manifests crd`` prints the result (via ``manifests.dump_yaml``) and a test checks the committed
``manifests/base`` copy against it.

The apiserver checks what the schema can say (types, bounds, enums, patterns, required fields); the
controller still validates every spec with ``orchestrator.spec.parse_spec`` for the cross-field rules.
"""

from __future__ import annotations

import copy
from typing import Any

from orchestrator.spec import RunSpec, parse_spec

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "status_schema",
    "training_run",
    "training_run_crd",
    "training_run_schema",
]

GROUP = "orch.dev"
VERSION = "v1alpha1"
KIND = "TrainingRun"
PLURAL = "trainingruns"
API_VERSION = f"{GROUP}/{VERSION}"

# Keys Kubernetes' JSONSchemaProps knows and a structural schema may carry on a node.
_KEPT = (
    "description",
    "type",
    "format",
    "default",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "multipleOf",
    "required",
)


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (siblings such as ``default`` or ``description`` win over the target's)."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    return {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one JSON Schema node (and everything below it) to a structural OpenAPI v3 node."""
    node = _resolve(node, defs)
    nullable = False
    variants = node.get("anyOf")
    if variants is not None:
        others = [v for v in variants if v != {"type": "null"}]
        if len(others) != 1:
            raise ValueError(f"cannot express anyOf {variants!r} in a structural schema")
        nullable = len(others) < len(variants)
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **_resolve(others[0], defs)}

    out: dict[str, Any] = {key: copy.deepcopy(node[key]) for key in _KEPT if key in node}
    if "const" in node:
        out["enum"] = [node["const"]]
    for bound, key in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:  # JSON Schema 2020: a number; OpenAPI v3: a boolean beside minimum/maximum.
            out[key] = node[bound]
            out[bound] = True
    if out.get("default", 0) is None:
        del out["default"]  # "no value" is what an absent nullable field already means
    if nullable:
        out["nullable"] = True

    if "properties" in node:
        out["properties"] = {name: _structural(sub, defs) for name, sub in node["properties"].items()}
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):  # a map such as ``pools``; ``false`` is what pruning already does
        out["additionalProperties"] = _structural(extra, defs)
    if "items" in node:
        out["items"] = _structural(node["items"], defs)
    if "type" not in out:
        raise ValueError(f"schema node without a type: {node!r}")
    return _ordered(out)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """``description`` and ``type`` first, children last, so the generated YAML reads top-down."""
    first, last = (
        ("description", "type", "nullable"),
        ("required", "properties", "additionalProperties", "items"),
    )
    middle = [key for key in node if key not in first + last]
    return {key: node[key] for key in (*first, *middle, *last) if key in node}


def training_run_schema() -> dict[str, Any]:
    """The run spec as a Kubernetes structural OpenAPI v3 schema (the ``spec`` of a TrainingRun)."""
    schema = RunSpec.model_json_schema()
    defs = schema.pop("$defs", {})
    return _structural(schema, defs)


def status_schema() -> dict[str, Any]:
    """What the controller writes to ``.status``: a mirror of the SQL run row, plus conditions."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    }
    return {
        "description": "Observed state, written by the controller from the run's SQL row.",
        "type": "object",
        "properties": {
            "phase": {"description": "lifecycle phase, e.g. Pending, Running, Succeeded", "type": "string"},
            "stage": {"description": "current curriculum stage, 1-based", "type": "integer", "minimum": 0},
            "step": {"description": "training steps done", "type": "integer", "minimum": 0},
            "attempt": {"description": "placement attempts (grows after a failure)", "type": "integer"},
            "runId": {"description": "the run's id in orch's SQL store", "type": "string"},
            "message": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
        },
    }


def training_run_crd() -> dict[str, Any]:
    """The ``trainingruns.orch.dev`` CustomResourceDefinition."""
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Stage", "type": "integer", "jsonPath": ".status.stage"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = {
        "description": "An agentic-RL training run, reconciled by orch's controller.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": training_run_schema(),
            "status": status_schema(),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "orch"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["tr"],
                "categories": ["orch"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def training_run(
    spec_dict: dict[str, Any], name: str | None = None, namespace: str = "orch"
) -> dict[str, Any]:
    """Wrap a run spec (as written, validated first) in a ``TrainingRun`` object."""
    spec = parse_spec(spec_dict)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name or spec.name, "namespace": namespace},
        "spec": copy.deepcopy(spec_dict),
    }

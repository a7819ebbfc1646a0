"""A wire-level fake Kubernetes API server for tests (stdlib only, plus orch's TrainingRun CRD names).

It speaks the apiserver's HTTP+JSON protocol closely enough that the unmodified `kubernetes` client
(CoreV1Api, CustomObjectsApi, kubernetes.watch.Watch) runs against it: list + watch with resourceVersion,
409 AlreadyExists / Conflict, 404, 410 Expired for stale watches, the status subresource, merge and JSON
patches, label and field selectors, owner-reference garbage collection and finalizers. It answers
SelfSubjectAccessReviews (allowed, unless a test called `deny` for that verb and resource).

Deliberate simplifications: namespaces need not exist before objects are created in them; deletion is
immediate (no grace period) unless finalizers are set; strategic-merge patches are applied as JSON merge
patches (lists are replaced, not merged by key); `limit`/`continue` are ignored; no admission, no defaulting
beyond what is documented on `_INITIAL_STATUS`. Nobody is authenticated and nothing is forbidden: a bearer
token is taken as the caller's ServiceAccount name and recorded with each request (`ApiRequest.user`), so a
test can check each caller's calls against the RBAC rules bound to its account.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
import select
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from orchestrator.kube import crd

if TYPE_CHECKING:
    import kubernetes.client

__all__ = [
    "ApiRequest",
    "FakeKubeServer",
    "FieldSelector",
    "LabelSelector",
    "ResourceType",
    "json_merge_patch",
    "json_patch",
]

Obj = dict[str, Any]
_WATCH_DEFAULT_TIMEOUT_S = 1800.0
_POLL_S = 0.1
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ----------------------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and how it behaves."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    delete_returns_object: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name the apiserver uses in messages: `pods`, `trainingruns.orch.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


@dataclass(frozen=True)
class ApiRequest:
    """One API call as RBAC sees it (verb in RBAC terms; group "" for core), and who made it: the bearer
    token, which the fake takes as the caller's ServiceAccount name ("" without one)."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    user: str = ""


@dataclass(frozen=True)
class _Event:
    rv: int
    type: str
    rt: ResourceType
    obj: Obj
    prev: Obj | None


@dataclass(frozen=True)
class _Target:
    rt: ResourceType
    namespace: str
    name: str
    subresource: str


class ApiError(Exception):
    """An error the server answers with a `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str) -> Obj:
    details: Obj = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    return details


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------------------------------------
# Selectors


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


_SET_TERM = re.compile(r"^([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_TERM = re.compile(r"^([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)$")
_EXISTS_TERM = re.compile(r"^(!?)\s*([^\s!=(),]+)$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


@dataclass(frozen=True)
class LabelSelector:
    """A parsed `labelSelector` (equality, inequality, existence, set terms; comma = AND)."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        return cls(tuple(_parse_label_term(term) for term in _split_top_level(text or "")))

    def matches(self, obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(req.matches(labels) for req in self.requirements)


def _parse_label_term(term: str) -> _Requirement:
    if match := _SET_TERM.match(term):
        values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
        return _Requirement(match.group(1), match.group(2), values)
    if match := _EQ_TERM.match(term):
        key, op, value = match.groups()
        return _Requirement(key, "notin" if op == "!=" else "in", frozenset({value}))
    if match := _EXISTS_TERM.match(term):
        return _Requirement(match.group(2), "!exists" if match.group(1) else "exists")
    raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label selector term {term!r}")


_COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})
_EXTRA_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset(
        {
            "spec.nodeName",
            "status.phase",
            "spec.schedulerName",
            "spec.restartPolicy",
            "spec.serviceAccountName",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    ("", "nodes"): frozenset({"spec.unschedulable"}),
    ("", "namespaces"): frozenset({"status.phase"}),
    ("", "events"): frozenset(
        {
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "reason",
            "type",
        }
    ),
}


@dataclass(frozen=True)
class FieldSelector:
    """A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma = AND."""

    terms: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None, rt: ResourceType) -> FieldSelector:
        terms = []
        for term in _split_top_level(text or ""):
            match = re.match(r"^([^!=]+)(==|=|!=)(.*)$", term)
            if not match:
                raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
            path, op, value = (part.strip() for part in match.groups())
            if path not in _COMMON_FIELDS | _EXTRA_FIELDS.get(rt.key, frozenset()):
                raise ApiError(400, "BadRequest", f'field label not supported: "{path}"')
            terms.append((path, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: Obj) -> bool:
        return all((_field_value(obj, path) == value) == equal for path, equal, value in self.terms)


def _field_value(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class _Selectors:
    labels: LabelSelector
    fields: FieldSelector

    def matches(self, obj: Obj | None) -> bool:
        return obj is not None and self.labels.matches(obj) and self.fields.matches(obj)


# ----------------------------------------------------------------------------------------------------------
# Patches


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value; inputs are not changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise ApiError(422, "Invalid", f"path not found: /{'/'.join(parts)}") from error
    return doc


def _json_patch_op(doc: Any, op: Obj) -> Any:
    parts = _pointer(op.get("path", ""))
    kind = op.get("op")
    if kind == "test":
        if _container(doc, parts) != op.get("value"):
            raise ApiError(422, "Invalid", f"test operation failed at {op.get('path')}")
        return doc
    if not parts:
        if kind in ("add", "replace"):
            return copy.deepcopy(op.get("value"))
        raise ApiError(422, "Invalid", f"unsupported JSON patch operation {kind!r} on the root")
    parent, last = _container(doc, parts[:-1]), parts[-1]
    if kind in ("add", "replace") and isinstance(parent, dict):
        if kind == "replace" and last not in parent:
            raise ApiError(422, "Invalid", f"replace operation does not apply: {op.get('path')} is missing")
        parent[last] = copy.deepcopy(op.get("value"))
    elif kind in ("add", "replace") and isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if kind == "add":
            parent.insert(index, copy.deepcopy(op.get("value")))
        else:
            parent[index] = copy.deepcopy(op.get("value"))
    elif kind == "remove":
        try:
            del parent[int(last) if isinstance(parent, list) else last]
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise ApiError(422, "Invalid", f"remove operation does not apply: {op.get('path')}") from error
    else:
        raise ApiError(422, "Invalid", f"unsupported JSON patch operation {kind!r}")
    return doc


def json_patch(target: Any, operations: list[Obj]) -> Any:
    """RFC 6902 JSON patch: add, replace, remove, test (returns a new value)."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        doc = _json_patch_op(doc, op)
    return doc


# ----------------------------------------------------------------------------------------------------------
# Validation and write preparation


def _validate(rt: ResourceType, obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name") or ""
    pattern = _DNS_LABEL if rt.plural in ("namespaces", "services") else _DNS_SUBDOMAIN
    limit = 63 if pattern is _DNS_LABEL else 253
    if not pattern.match(name) or len(name) > limit:
        raise ApiError(
            422,
            "Invalid",
            f'{rt.kind} "{name}" is invalid: metadata.name: Invalid value: '
            f'"{name}": a lowercase RFC 1123 name must consist of lower case alphanumeric '
            "characters, '-' or '.'",
            _details(rt, name),
        )
    for key, value in (meta.get("labels") or {}).items():
        if (
            not _label_key_ok(key)
            or not isinstance(value, str)
            or not _LABEL_VALUE.match(value)
            or len(value) > 63
        ):
            raise ApiError(
                422,
                "Invalid",
                f'{rt.kind} "{name}" is invalid: metadata.labels: Invalid value: "{key}={value}"',
                _details(rt, name),
            )


def _label_key_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return bool(_LABEL_NAME.match(name)) and len(name) <= 63


def _content(obj: Obj) -> Obj:
    """What `metadata.generation` tracks: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _without_rv(obj: Obj) -> Obj:
    clean = dict(obj)
    clean["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return clean


_PRESERVED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
)
# Status the apiserver fills on create for built-ins with a status subresource (custom resources get none).
_INITIAL_STATUS: dict[tuple[str, str], Obj] = {
    ("", "pods"): {"phase": "Pending"},
    ("", "namespaces"): {"phase": "Active"},
    ("", "services"): {"loadBalancer": {}},
}


# ----------------------------------------------------------------------------------------------------------
# The store


class _Store:
    """Objects, the global resourceVersion counter and the retained event history, under one condition."""

    def __init__(self, history: int) -> None:
        self.cond = threading.Condition()
        self.types: dict[tuple[str, str], ResourceType] = {}
        self.objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {}
        self.rv = 0
        self.min_watch_rv = 0
        self.history: deque[_Event] = deque(maxlen=max(1, history))
        self.closing = False
        self.open_watches = 0
        self._random = random.Random()

    # -- registry ------------------------------------------------------------------------------------------
    def register(self, rt: ResourceType) -> None:
        with self.cond:
            self.types[rt.key] = rt
            self.objects.setdefault(rt.key, {})

    def unregister(self, group: str, plural: str) -> None:
        with self.cond:
            self.types.pop((group, plural), None)
            self.objects.pop((group, plural), None)

    def type_for(self, group: str, plural: str) -> ResourceType:
        try:
            return self.types[(group, plural)]
        except KeyError:
            raise ApiError(404, "NotFound", "the server could not find the requested resource") from None

    def type_of(self, obj: Obj) -> ResourceType:
        group, _, version = (obj.get("apiVersion") or "").rpartition("/")
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.kind == obj.get("kind"):
                return rt
        raise KeyError(f"no resource registered for {obj.get('apiVersion')} {obj.get('kind')}")

    # -- commits -------------------------------------------------------------------------------------------
    def _commit(self, rt: ResourceType, obj: Obj, event: str, prev: Obj | None) -> Obj:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        key = (meta.get("namespace", ""), meta["name"])
        if event == "DELETED":
            self.objects[rt.key].pop(key, None)
        else:
            self.objects[rt.key][key] = obj
        if len(self.history) == self.history.maxlen:
            self.min_watch_rv = self.history[0].rv
        self.history.append(_Event(self.rv, event, rt, copy.deepcopy(obj), prev))
        self.cond.notify_all()
        return copy.deepcopy(obj)

    def _stored(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.objects[rt.key].get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise _not_found(rt, name)
        return obj

    # -- verbs ---------------------------------------------------------------------------------------------
    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self._stored(rt, namespace, name))

    def list(self, rt: ResourceType, namespace: str, selectors: _Selectors) -> tuple[list[Obj], int]:
        with self.cond:
            items = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self.objects[rt.key].items())
                if (not namespace or ns == namespace) and selectors.matches(obj)
            ]
            return items, self.rv

    def create(self, rt: ResourceType, namespace: str, body: Obj, *, keep_status: bool = False) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        self._place(rt, meta, namespace)
        if rt.status_subresource and not keep_status:
            obj.pop("status", None)
            if rt.key in _INITIAL_STATUS:
                obj["status"] = copy.deepcopy(_INITIAL_STATUS[rt.key])
        with self.cond:
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(rt, meta)
            if not meta.get("name"):
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rt.kind} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                    _details(rt, ""),
                )
            _validate(rt, obj)
            if (meta.get("namespace", ""), meta["name"]) in self.objects[rt.key]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{meta["name"]}" already exists',
                    _details(rt, meta["name"]),
                )
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                meta.pop(field, None)
            meta.update(
                uid=meta.get("uid") if keep_status and meta.get("uid") else str(uuid.uuid4()),
                creationTimestamp=_now(),
                generation=1,
            )
            return self._commit(rt, obj, "ADDED", None)

    def _place(self, rt: ResourceType, meta: Obj, namespace: str) -> None:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        meta["namespace"] = namespace or meta.get("namespace") or "default"

    def _generate_name(self, rt: ResourceType, meta: Obj) -> str:
        while True:
            name = meta["generateName"] + "".join(self._random.choices(_NAME_ALPHABET, k=5))
            if (meta.get("namespace", ""), name) not in self.objects[rt.key]:
                return name

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Obj,
        subresource: str = "",
        *,
        direct: bool = False,
    ) -> Obj:
        with self.cond:
            old = self._stored(rt, namespace, name)
            return self._write(rt, old, copy.deepcopy(body), subresource, direct=direct)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str = "",
    ) -> Obj:
        with self.cond:
            old = self._stored(rt, namespace, name)
            if content_type == "application/json-patch+json":
                new = json_patch(old, patch)
            elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                new = json_merge_patch(old, patch)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown "
                    f"format - accepted media types include: application/json-patch+json, "
                    f"application/merge-patch+json, application/strategic-merge-patch+json "
                    f"(got {content_type!r})",
                )
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patch did not produce an object")
            return self._write(rt, old, new, subresource, direct=False)

    def mutate(
        self, rt: ResourceType, namespace: str, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        with self.cond:
            try:
                old = self._stored(rt, namespace, name)
            except ApiError:
                return None
            new = copy.deepcopy(old)
            change(new)
            return self._write(rt, old, new, "", direct=True)

    def _write(self, rt: ResourceType, old: Obj, new: Obj, subresource: str, *, direct: bool) -> Obj:
        name = old["metadata"]["name"]
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})",
            )
        if meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.qualified} "{name}": the '
                "object has been modified; please apply your changes to the latest version and "
                "try again",
                _details(rt, name),
            )
        new = self._merge_subresource(rt, old, new, subresource, direct=direct)
        _validate(rt, new)
        if _without_rv(new) == _without_rv(old):
            return copy.deepcopy(old)
        prev = copy.deepcopy(old)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._finalize(rt, new, prev)
            return copy.deepcopy(new)
        return self._commit(rt, new, "MODIFIED", prev)

    @staticmethod
    def _merge_subresource(rt: ResourceType, old: Obj, new: Obj, subresource: str, *, direct: bool) -> Obj:
        if subresource == "status":
            merged = copy.deepcopy(old)
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            return merged
        if rt.status_subresource and not direct:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta, old_meta = new["metadata"], old["metadata"]
        for field in _PRESERVED_META:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if _content(new) != _content(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return new

    def delete(self, rt: ResourceType, namespace: str, name: str, propagation: str = "Background") -> Obj:
        with self.cond:
            obj = self._stored(rt, namespace, name)
            return self._delete(rt, obj, propagation)

    def delete_collection(self, rt: ResourceType, namespace: str, selectors: _Selectors) -> list[Obj]:
        with self.cond:
            victims = [
                obj
                for (ns, _), obj in sorted(self.objects[rt.key].items())
                if (not namespace or ns == namespace) and selectors.matches(obj)
            ]
            return [self._delete(rt, obj, "Background") for obj in victims]

    def _delete(self, rt: ResourceType, obj: Obj, propagation: str) -> Obj:
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(obj)
            new = copy.deepcopy(obj)
            new["metadata"].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0)
            return self._commit(rt, new, "MODIFIED", copy.deepcopy(obj))
        prev = copy.deepcopy(obj)
        self._finalize(rt, copy.deepcopy(obj), prev, propagation)
        return prev

    def _finalize(self, rt: ResourceType, obj: Obj, prev: Obj, propagation: str = "Background") -> None:
        """Remove the object for good, then its dependents (or orphan them); a namespace, its content."""
        self._commit(rt, obj, "DELETED", prev)
        uid = obj["metadata"].get("uid")
        for dep_rt, dep in self._dependents(uid):
            if propagation == "Orphan":
                self._orphan(dep_rt, dep, uid)
            elif self._still_stored(dep_rt, dep):
                self._delete(dep_rt, dep, propagation)
        if rt.key == ("", "namespaces"):
            self._empty_namespace(obj["metadata"]["name"])

    def _dependents(self, uid: str | None) -> list[tuple[ResourceType, Obj]]:
        found = []
        for key, objects in self.objects.items():
            for dep in list(objects.values()):
                refs = dep["metadata"].get("ownerReferences") or []
                if uid and any(ref.get("uid") == uid for ref in refs):
                    found.append((self.types[key], dep))
        return found

    def _still_stored(self, rt: ResourceType, obj: Obj) -> bool:
        meta = obj["metadata"]
        return self.objects[rt.key].get((meta.get("namespace", ""), meta["name"])) is obj

    def _orphan(self, rt: ResourceType, dep: Obj, uid: str | None) -> None:
        new = copy.deepcopy(dep)
        refs = dep["metadata"]["ownerReferences"]
        new["metadata"]["ownerReferences"] = [ref for ref in refs if ref.get("uid") != uid]
        if not new["metadata"]["ownerReferences"]:
            del new["metadata"]["ownerReferences"]
        self._commit(rt, new, "MODIFIED", copy.deepcopy(dep))

    def _empty_namespace(self, namespace: str) -> None:
        for key, objects in self.objects.items():
            rt = self.types[key]
            for (ns, _), obj in sorted(objects.items()):
                if rt.namespaced and ns == namespace and self._still_stored(rt, obj):
                    self._delete(rt, obj, "Background")

    # -- watch ---------------------------------------------------------------------------------------------
    def compact(self) -> None:
        with self.cond:
            self.history.clear()
            self.min_watch_rv = self.rv

    def close(self, grace_s: float) -> None:
        """End every watch; wait up to grace_s for their streams to finish cleanly."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.open_watches == 0, timeout=grace_s)

    @contextlib.contextmanager
    def watch_open(self) -> Iterator[None]:
        with self.cond:
            self.open_watches += 1
        try:
            yield
        finally:
            with self.cond:
                self.open_watches -= 1
                self.cond.notify_all()

    def events_since(self, cursor: int, wait_s: float) -> tuple[list[_Event] | None, int]:
        """Events with RV > cursor (waiting up to wait_s for one); None when cursor is too old."""
        with self.cond:
            if not self._has_events_after(cursor) and not self.closing:
                self.cond.wait(wait_s)
            if cursor < self.min_watch_rv:
                return None, cursor
            events = [event for event in self.history if event.rv > cursor]
            return events, max(cursor, self.rv)

    def _has_events_after(self, cursor: int) -> bool:
        return bool(self.history) and self.history[-1].rv > cursor


# ----------------------------------------------------------------------------------------------------------
# Discovery documents

_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _resource_list(types: Iterable[ResourceType], group_version: str) -> Obj:
    resources = []
    for rt in sorted(types, key=lambda t: t.plural):
        resources.append(
            {
                "name": rt.plural,
                "singularName": rt.kind.lower(),
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": _VERBS,
            }
        )
        if rt.status_subresource:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _group_list(types: Iterable[ResourceType]) -> Obj:
    versions: dict[str, str] = {rt.group: rt.version for rt in types if rt.group}
    groups = [
        {
            "name": group,
            "versions": [{"groupVersion": f"{group}/{version}", "version": version}],
            "preferredVersion": {"groupVersion": f"{group}/{version}", "version": version},
        }
        for group, version in sorted(versions.items())
    ]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


_ACCESS_REVIEWS = ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"]

_VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-orchfake",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}


# ----------------------------------------------------------------------------------------------------------
# HTTP


def _first(query: dict[str, list[str]], key: str, default: str = "") -> str:
    return query.get(key, [default])[0]


class _HTTPServer(ThreadingHTTPServer):
    """Tracks its connections so stop() can cut idle keep-alive sockets and open watches."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeKubeServer) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.connections_lock:
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by either side are normal for a test server; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid the 40 ms delayed ACK
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        try:
            body = self._read_body()
            result = self.server.fake._handle(method, parts.path, query, self.headers, body)
        except ApiError as error:
            self._send_json(error.code, error.status())
            return
        except Exception as error:  # a bug in the fake: answer 500 rather than dropping the connection
            self._send_json(500, ApiError(500, "InternalError", f"{type(error).__name__}: {error}").status())
            return
        if isinstance(result, _WatchRequest):
            self._stream_watch(result)
        else:
            self._send_json(*result)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise ApiError(400, "BadRequest", f"invalid JSON body: {error}") from None

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # -- watch streaming -----------------------------------------------------------------------------------
    def _stream_watch(self, watch: _WatchRequest) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with self.server.fake._store.watch_open(), contextlib.suppress(OSError):
            for line in watch.lines(self._client_gone):
                self._chunk(json.dumps(line).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True


class _WatchRequest:
    """One open watch: initial events, then live ones, until timeout, stop() or the client leaves."""

    def __init__(self, fake: FakeKubeServer, target: _Target, selectors: _Selectors, query: dict) -> None:
        self.fake, self.target, self.selectors = fake, target, selectors
        self.rv_param = _first(query, "resourceVersion")
        if self.rv_param not in ("", "0") and not self.rv_param.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resourceVersion {self.rv_param!r}")
        self.bookmarks = _first(query, "allowWatchBookmarks") in ("true", "1")
        timeout = _first(query, "timeoutSeconds")
        self.timeout_s = float(timeout) if timeout else _WATCH_DEFAULT_TIMEOUT_S

    def lines(self, client_gone: Callable[[], bool]) -> Iterator[Obj]:
        store = self.fake._store
        deadline = time.monotonic() + self.timeout_s
        cursor, initial = self._start(store)
        yield from initial
        if cursor is None:
            return
        last_sent = time.monotonic()
        while not store.closing and time.monotonic() < deadline and not client_gone():
            events, cursor = store.events_since(cursor, min(_POLL_S, max(0.0, deadline - time.monotonic())))
            if events is None:
                yield self._expired(cursor, store.min_watch_rv)
                return
            for line in filter(None, (self._translate(event) for event in events)):
                last_sent = time.monotonic()
                yield line
            if self.bookmarks and time.monotonic() - last_sent >= self.fake.bookmark_interval:
                last_sent = time.monotonic()
                yield self._bookmark(cursor)
        if self.bookmarks and not store.closing:
            yield self._bookmark(cursor)

    def _start(self, store: _Store) -> tuple[int | None, list[Obj]]:
        if self.rv_param in ("", "0"):
            items, rv = store.list(self.target.rt, self.target.namespace, self.selectors)
            return rv, [{"type": "ADDED", "object": item} for item in items]
        rv = int(self.rv_param)
        with store.cond:
            if rv < store.min_watch_rv:
                return None, [self._expired(rv, store.min_watch_rv)]
        return rv, []

    @staticmethod
    def _expired(rv: int, oldest: int) -> Obj:
        return {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "code": 410,
                "reason": "Expired",
                "message": f"too old resource version: {rv} ({oldest})",
            },
        }

    def _bookmark(self, cursor: int) -> Obj:
        rt = self.target.rt
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": rt.kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(cursor)},
            },
        }

    def _translate(self, event: _Event) -> Obj | None:
        """The event as this watch sees it: selector transitions become ADDED / DELETED (as the apiserver)."""
        if event.rt.key != self.target.rt.key:
            return None
        namespace = event.obj["metadata"].get("namespace", "")
        if self.target.namespace and namespace != self.target.namespace:
            return None
        now, before = self.selectors.matches(event.obj), self.selectors.matches(event.prev)
        if event.type == "DELETED":
            kind = "DELETED" if before else None
        elif now:
            kind = "MODIFIED" if before else "ADDED"
        else:
            kind = "DELETED" if before else None
        return {"type": kind, "object": event.obj} if kind else None


# ----------------------------------------------------------------------------------------------------------
# The server


_BUILTINS = (
    ResourceType("", "v1", "nodes", "Node", namespaced=False, delete_returns_object=False),
    ResourceType("", "v1", "pods", "Pod"),
    ResourceType("", "v1", "services", "Service"),
    ResourceType("", "v1", "configmaps", "ConfigMap", status_subresource=False, delete_returns_object=False),
    ResourceType("", "v1", "secrets", "Secret", status_subresource=False, delete_returns_object=False),
    ResourceType("", "v1", "events", "Event", status_subresource=False, delete_returns_object=False),
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, delete_returns_object=False),
    ResourceType(
        "coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False, delete_returns_object=False
    ),
    ResourceType(crd.GROUP, crd.VERSION, crd.PLURAL, crd.KIND),
)


class FakeKubeServer:
    """A fake kube-apiserver on a local port; see the module docstring for what it does and does not do."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, history: int = 1000, *, bookmark_interval: float = 1.0
    ) -> None:
        self.host, self.port = host, port
        self.bookmark_interval = bookmark_interval
        self._store = _Store(history)
        self._requests: list[ApiRequest] = []
        self._requests_lock = threading.Lock()
        # Test hooks called with each API request before it is served (on the server's thread): a test
        # changes the stored objects there to force a race, e.g. a 409 Conflict on the request's write.
        self.before_serve: list[Callable[[ApiRequest], None]] = []
        # (verb, group, resource[/subresource]) a SelfSubjectAccessReview answers "not allowed" for.
        self._denied: set[tuple[str, str, str]] = set()
        # What each SelfSubjectAccessReview asked: (the Impersonate-User header or "", resourceAttributes).
        self.access_reviews: list[tuple[str, Obj]] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for rt in _BUILTINS:
            self._store.register(rt)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FakeKubeServer:
        """Bind and serve in a background thread."""
        if self._httpd is not None:
            return self
        self._store.closing = False
        self._httpd = _HTTPServer((self.host, self.port), self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fake-kube-apiserver:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """End every watch, cut every connection, join every thread."""
        httpd, thread = self._httpd, self._thread
        if httpd is None or thread is None:
            return
        self._store.close(grace_s=0.5)
        httpd.shutdown()
        httpd.cut_connections()
        httpd.server_close()
        thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> FakeKubeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- client wiring -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configuration(self, user: str = "") -> kubernetes.client.Configuration:
        """A client Configuration pointing at this server; ``user``, if given, goes as the bearer token,
        which the request log records as the caller (``ApiRequest.user``)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.url
        if user:
            configuration.api_key = {"authorization": user}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return configuration

    def api_client(self, user: str = "") -> kubernetes.client.ApiClient:
        """A fresh ApiClient for this server, calling as ``user`` (see ``configuration``); the caller
        closes it."""
        from kubernetes import client

        return client.ApiClient(self.configuration(user))

    def write_kubeconfig(self, path: str | Path) -> Path:
        """Write a kubeconfig (JSON, which is YAML) whose only context points at this server."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "orch-fake", "cluster": {"server": self.url}}],
            "users": [{"name": "orch-fake", "user": {"token": "orch-fake-token"}}],
            "contexts": [
                {
                    "name": "orch-fake",
                    "context": {"cluster": "orch-fake", "user": "orch-fake", "namespace": "default"},
                }
            ],
            "current-context": "orch-fake",
        }
        path.write_text(json.dumps(config, indent=2))
        return path

    # -- registry and test hooks ---------------------------------------------------------------------------
    def register(
        self,
        group: str,
        version: str,
        plural: str,
        kind: str,
        namespaced: bool = True,
        status_subresource: bool = True,
    ) -> ResourceType:
        """Serve another resource (e.g. a custom resource definition's)."""
        rt = ResourceType(group, version, plural, kind, namespaced, status_subresource)
        self._store.register(rt)
        return rt

    def unregister(self, group: str, plural: str) -> None:
        """Stop serving a resource and forget its objects (e.g. a custom resource whose CRD was deleted)."""
        self._store.unregister(group, plural)

    def deny(self, verb: str, group: str, resource: str, subresource: str = "") -> None:
        """Make SelfSubjectAccessReviews of ``verb`` on ``group``/``resource``[/``subresource``] not allowed
        (in every namespace, for every user); the API calls themselves are still served."""
        self._denied.add((verb, group, f"{resource}/{subresource}" if subresource else resource))

    def compact(self) -> None:
        """Drop all retained history: any watch from an RV before now gets 410 Expired."""
        self._store.compact()

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._store.cond:
            return str(self._store.rv)

    @property
    def requests(self) -> list[ApiRequest]:
        """Every API call so far, in order (a copy). Discovery (/api, /apis, /version) is not logged."""
        with self._requests_lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._requests_lock:
            self._requests.clear()

    # -- direct helpers (no HTTP; thread-safe; bump RVs and emit watch events) ------------------------------
    def put_object(self, obj: Obj) -> Obj:
        """Create or replace `obj` (status included, no conflict check); returns the stored copy."""
        rt = self._store.type_of(obj)
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default") if rt.namespaced else ""
        with self._store.cond:
            if (namespace, meta.get("name")) in self._store.objects[rt.key]:
                body = copy.deepcopy(obj)
                body["metadata"].pop("resourceVersion", None)
                return self._store.update(rt, namespace, meta["name"], body, direct=True)
            return self._store.create(rt, namespace, obj, keep_status=True)

    def get_object(self, group: str, plural: str, namespace: str | None, name: str) -> Obj | None:
        """A copy of one stored object, or None."""
        rt = self._store.type_for(group, plural)
        try:
            return self._store.get(rt, namespace or "", name)
        except ApiError:
            return None

    def list_objects(self, group: str, plural: str, namespace: str | None = None) -> list[Obj]:
        """Copies of the stored objects of one resource (all namespaces when namespace is None)."""
        rt = self._store.type_for(group, plural)
        return self._store.list(rt, namespace or "", _Selectors(LabelSelector(), FieldSelector()))[0]

    def update_object(
        self, group: str, plural: str, namespace: str | None, name: str, change: Callable[[Obj], None]
    ) -> Obj | None:
        """Atomically apply `change` to a copy of the object and store it (status included); None if absent.

        A change that leaves the object as it was neither bumps the RV nor emits an event.
        """
        return self._store.mutate(self._store.type_for(group, plural), namespace or "", name, change)

    def delete_object(self, group: str, plural: str, namespace: str | None, name: str) -> bool:
        """Delete like the API does (finalizers, garbage collection); False if it was absent."""
        try:
            self._store.delete(self._store.type_for(group, plural), namespace or "", name)
        except ApiError:
            return False
        return True

    # -- request handling ----------------------------------------------------------------------------------
    def _handle(self, method: str, path: str, query: dict, headers: Any, body: Any) -> Any:
        segments = [segment for segment in path.split("/") if segment]
        discovery = self._discovery(segments)
        if discovery is not None:
            if method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return 200, discovery
        if segments == _ACCESS_REVIEWS:
            return self._access_review(method, headers, body)
        target = self._target(segments)
        verb = self._verb(method, target, query)
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        request = ApiRequest(
            verb,
            target.rt.group,
            target.rt.plural,
            target.subresource,
            target.namespace,
            target.name,
            token.strip() if scheme.lower() == "bearer" else "",
        )
        self._log(request)
        for hook in list(self.before_serve):
            hook(request)
        return self._serve(verb, target, query, headers, body)

    def _log(self, request: ApiRequest) -> None:
        with self._requests_lock:
            self._requests.append(request)

    def _access_review(self, method: str, headers: Any, body: Any) -> tuple[int, Obj]:
        """A SelfSubjectAccessReview (authorization.k8s.io/v1): allowed unless ``deny``-ed."""
        if method != "POST":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the resource")
        if not isinstance(body, dict) or body.get("kind") != "SelfSubjectAccessReview":
            raise ApiError(400, "BadRequest", "the request body must be a SelfSubjectAccessReview")
        attributes = (body.get("spec") or {}).get("resourceAttributes") or {}
        self._log(ApiRequest("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", ""))
        self.access_reviews.append((headers.get("Impersonate-User") or "", dict(attributes)))
        resource = attributes.get("resource", "")
        if attributes.get("subresource"):
            resource = f"{resource}/{attributes['subresource']}"
        denied = (attributes.get("verb", ""), attributes.get("group", ""), resource) in self._denied
        status = {"allowed": not denied}
        if denied:
            status["reason"] = "denied by the fake API server's deny()"
        return 201, {**body, "metadata": {"creationTimestamp": None}, "status": status}

    def _discovery(self, segments: list[str]) -> Obj | None:
        types = list(self._store.types.values())
        if segments == ["version"]:
            return dict(_VERSION_INFO)
        if segments == ["api"]:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            }
        if segments == ["apis"]:
            return _group_list(types)
        if segments == ["api", "v1"]:
            return _resource_list([rt for rt in types if not rt.group], "v1")
        if len(segments) == 3 and segments[0] == "apis":
            group, version = segments[1], segments[2]
            served = [rt for rt in types if rt.group == group and rt.version == version]
            if not served:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _resource_list(served, f"{group}/{version}")
        return None

    def _target(self, segments: list[str]) -> _Target:
        if segments[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", segments[2:]
        elif len(segments) > 3 and segments[0] == "apis":
            group, version, rest = segments[1], segments[2], segments[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and self._store.types.get((group, rest[2]), None):
            namespace, rest = rest[1], rest[2:]
        rt = self._store.type_for(group, rest[0])
        name, subresource = [*rest, "", ""][1:3]
        if (
            rt.version != version
            or len(rest) > 3
            or (namespace and not rt.namespaced)
            or (name and rt.namespaced and not namespace)
            or subresource not in ("", "status")
            or (subresource and not rt.status_subresource)
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _Target(rt, namespace, name, subresource)

    @staticmethod
    def _verb(method: str, target: _Target, query: dict) -> str:
        named = bool(target.name)
        if method == "GET":
            return "get" if named else ("watch" if _first(query, "watch") in ("true", "1") else "list")
        verbs = {
            ("POST", False): "create",
            ("PUT", True): "update",
            ("PATCH", True): "patch",
            ("DELETE", True): "delete",
            ("DELETE", False): "deletecollection",
        }
        if (method, named) not in verbs or (target.subresource and method in ("POST", "DELETE")):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the resource")
        return verbs[(method, named)]

    def _serve(self, verb: str, target: _Target, query: dict, headers: Any, body: Any) -> Any:
        store, rt, ns, name = self._store, target.rt, target.namespace, target.name
        if verb in ("list", "watch", "deletecollection"):
            selectors = _Selectors(
                LabelSelector.parse(_first(query, "labelSelector")),
                FieldSelector.parse(_first(query, "fieldSelector"), rt),
            )
            if verb == "watch":
                return _WatchRequest(self, target, selectors, query)
            if verb == "deletecollection":
                store.delete_collection(rt, ns, selectors)
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            items, rv = store.list(rt, ns, selectors)
            return 200, {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            }
        if verb == "get":
            return 200, store.get(rt, ns, name)
        if verb in ("create", "update", "patch") and body is None:
            raise ApiError(400, "BadRequest", "the request body is empty")
        if verb in ("create", "update") and not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be an object")
        if verb == "create":
            return 201, store.create(rt, ns, body)
        if verb == "update":
            return 200, store.update(rt, ns, name, body, target.subresource)
        if verb == "patch":
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
            return 200, store.patch(rt, ns, name, content_type, body, target.subresource)
        return 200, self._delete_response(target, store.delete(rt, ns, name, _propagation(query, body)))

    @staticmethod
    def _delete_response(target: _Target, deleted: Obj) -> Obj:
        if target.rt.delete_returns_object:
            return deleted
        details = _details(target.rt, target.name)
        details["uid"] = deleted["metadata"].get("uid", "")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def _propagation(query: dict, body: Any) -> str:
    policy = _first(query, "propagationPolicy")
    if not policy and isinstance(body, dict):
        policy = body.get("propagationPolicy") or ""
        if not policy and body.get("orphanDependents") is True:
            policy = "Orphan"
    return policy or "Background"

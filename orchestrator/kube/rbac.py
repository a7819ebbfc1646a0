"""Kubernetes RBAC, read from the shipped manifests: what may the controller's (or trainers') account do?

``rbac_allows`` matches one request against PolicyRule dicts the way the apiserver's RBAC authorizer does
(``*`` wildcards, ``*/subresource``, ``resourceNames``), so a test can replay every API call the kube backend
and the trainers made against a fake apiserver and prove the shipped Roles and ClusterRole are sufficient.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchestrator.kube.crd import GROUP, PLURAL
from orchestrator.kube.objects import TRAINER_SERVICE_ACCOUNT

__all__ = [
    "CONTROLLER_ACCOUNT",
    "CONTROLLER_PERMISSIONS",
    "TRAINER_ACCOUNT",
    "Permission",
    "granted_permissions",
    "load_rbac_rules",
    "rbac_allows",
]

CONTROLLER_ACCOUNT = "orch-controller"
TRAINER_ACCOUNT = TRAINER_SERVICE_ACCOUNT  # what trainer pods run as unless the controller is told otherwise


@dataclass(frozen=True)
class Permission:
    """One verb on one resource; ``cluster_wide`` for requests made in no namespace (all of them)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    cluster_wide: bool = False

    def __str__(self) -> str:
        kind = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = " (all namespaces)" if self.cluster_wide else ""
        return f"{self.verb} {kind}{f'.{self.group}' if self.group else ''}{where}"


def _permissions(scope_wide: bool, group: str, resource: str, *verbs: str) -> tuple[Permission, ...]:
    name, _, sub = resource.partition("/")
    return tuple(Permission(verb, group, name, sub, scope_wide) for verb in verbs)


# What the controller's calls need (the shipped manifests/base/rbac.yaml grants exactly this: a test checks).
CONTROLLER_PERMISSIONS: tuple[Permission, ...] = (
    *_permissions(True, "", "nodes", "list", "watch"),
    *_permissions(True, "", "pods", "list", "watch"),
    *_permissions(False, "", "pods", "create", "delete"),
    *_permissions(False, "", "services", "create"),
    *_permissions(False, "", "configmaps", "list", "watch", "create", "patch", "delete"),
    *_permissions(False, GROUP, PLURAL, "list", "watch"),
    *_permissions(False, GROUP, f"{PLURAL}/status", "patch"),
)


def granted_permissions(rules: dict[str, list[dict[str, Any]]]) -> set[Permission]:
    """Every verb × group × resource that explicit rules (``load_rbac_rules``' result) grant; wildcards are
    kept as written."""
    granted = set()
    for scope, scoped in rules.items():
        for rule in scoped:
            for verb in rule.get("verbs", ()):
                for group in rule.get("apiGroups", ()):
                    for resource in rule.get("resources", ()):
                        granted.update(_permissions(scope == "cluster", group, resource, verb))
    return granted


def _matches(values: Iterable[str], wanted: str) -> bool:
    return any(value in ("*", wanted) for value in values)


def _resource_matches(resources: Iterable[str], resource: str, subresource: str) -> bool:
    wanted = f"{resource}/{subresource}" if subresource else resource
    return any(
        rule in ("*", wanted) or (subresource != "" and rule == f"*/{subresource}") for rule in resources
    )


def rbac_allows(
    rules: Iterable[dict[str, Any]],
    verb: str,
    group: str,
    resource: str,
    subresource: str = "",
    *,
    name: str = "",
) -> bool:
    """Whether any rule allows ``verb`` on ``group``/``resource``[/``subresource``] (named ``name``, if any).

    ``group`` is ``""`` for the core API. A rule with ``resourceNames`` only allows requests for those names,
    so it never allows ``create``, ``list`` or ``watch``, which carry no name.
    """
    for rule in rules:
        if not (
            _matches(rule.get("verbs", ()), verb)
            and _matches(rule.get("apiGroups", ()), group)
            and _resource_matches(rule.get("resources", ()), resource, subresource)
        ):
            continue
        names = rule.get("resourceNames") or []
        if not names or name in names:
            return True
    return False


def _documents(path: Path) -> Iterator[dict[str, Any]]:
    files = (
        [path] if path.is_file() else sorted(p for p in path.glob("*.yaml") if p.name != "kustomization.yaml")
    )
    for file in files:
        yield from (doc for doc in yaml.safe_load_all(file.read_text()) if isinstance(doc, dict))


def load_rbac_rules(path: str | Path, account: str = CONTROLLER_ACCOUNT) -> dict[str, list[dict[str, Any]]]:
    """The rules bound to ServiceAccount ``account`` in a manifests folder (or one file).

    Returns ``{"cluster": [...], "namespace": [...]}``: rules of ClusterRoles bound by ClusterRoleBindings
    (they apply everywhere), and rules of roles bound by RoleBindings (they apply in the workload namespace).
    """
    docs = list(_documents(Path(path)))
    roles = {
        (doc["kind"], doc["metadata"]["name"]): doc.get("rules") or []
        for doc in docs
        if doc.get("kind") in ("Role", "ClusterRole")
    }
    found: dict[str, list[dict[str, Any]]] = {"cluster": [], "namespace": []}
    for doc in docs:
        if doc.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == account for s in doc.get("subjects", [])
        ):
            continue
        ref = doc["roleRef"]
        scope = "cluster" if doc["kind"] == "ClusterRoleBinding" else "namespace"
        found[scope].extend(roles.get((ref["kind"], ref["name"]), []))
    return found

"""``orch doctor``: the preflight of a Kubernetes install, each check one result with its fix."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.backends import IMAGE_PULL_SECRET_ENV, NAMESPACE_ENV, POOL_LABEL_ENV
from orchestrator.errors import OrchError
from orchestrator.kube.cluster import DEFAULT_NAMESPACE, DEFAULT_POOL_LABEL
from orchestrator.kube.doctor import cluster_checks, controller_user
from orchestrator.records import Check, CheckOutcome, checks_exit_code
from orchestrator.state.engine import DATABASE_URL_SETTING, shown_url
from orchestrator.state.store import Store

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_POOL_LABEL",
    "IMAGE_PULL_SECRET_ENV",
    "NAMESPACE_ENV",
    "POOL_LABEL_ENV",
    "DoctorReport",
    "controller_user",
    "database_check",
    "run_doctor",
]


@dataclass(frozen=True)
class DoctorReport:
    """Every check, in the order an operator fixes them, and the exit code they add up to."""

    checks: tuple[Check, ...]

    @property
    def exit_code(self) -> int:
        return checks_exit_code(self.checks)


def database_check(database_url: str | None) -> Check:
    """The database the controller uses answers a trivial query (no migration is run)."""
    if not database_url:
        return Check(
            "database",
            CheckOutcome.FAIL,
            "not configured: the controller would use a SQLite file of its own pod",
            f"set {DATABASE_URL_SETTING} to the PostgreSQL URL the controller's Secret holds",
        )
    try:
        store = Store(database_url, migrate=False)
    except OrchError as error:
        return Check("database", CheckOutcome.FAIL, str(error), f"correct {DATABASE_URL_SETTING}")
    try:
        store.ping()
    except OrchError as error:
        return Check(
            "database",
            CheckOutcome.FAIL,
            str(error),
            "start the database, or make it reachable from here (host, port, credentials in the URL)",
        )
    finally:
        store.close()
    return Check("database", CheckOutcome.PASS, f"{shown_url(database_url)} answers")


def run_doctor(
    *,
    database_url: str | None,
    namespace: str = DEFAULT_NAMESPACE,
    pool_label: str = DEFAULT_POOL_LABEL,
    image_pull_secret: str = "",
    rbac_as: str | None = None,
) -> DoctorReport:
    """The cluster's checks (``orchestrator.kube.doctor.cluster_checks``), then the database's."""
    checks = cluster_checks(
        namespace=namespace, pool_label=pool_label, image_pull_secret=image_pull_secret, rbac_as=rbac_as
    )
    return DoctorReport((*checks, database_check(database_url)))

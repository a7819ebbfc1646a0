"""The trainer's side of the Kubernetes mailbox (``orchestrator.kube.mailbox``) as a ``Transport``.

``TrainerSession.from_env`` builds it when ``ORCH_MAILBOX=configmap``, which orch sets on every trainer pod
(``objects.pod_manifest``) together with ``ORCH_RUN_ID``, ``ORCH_ATTEMPT`` and ``ORCH_NAMESPACE``.

Spec, plan and ``closed`` are read from the control ConfigMap through the API, not from its files mounted
at /etc/orch: the kubelet refreshes a mounted ConfigMap only on its sync period plus its cache's TTL (a
minute or more by default), which would add that much to every plan handed over and could let the 30 s
grace of a pod deletion pass before the trainer sees ``closed``. An API read is as fresh as the write. The
trainer needs the API anyway to write its results, since the mount is read-only. Reads of the control
ConfigMap within ``refresh_s`` of each other share one GET, so a polling ``work()`` loop (plan, then
closed) costs one request per poll.

Results go to ``{run}-a{attempt}-results``: created by the first result (labelled ``orch.dev/run=<run>``,
which the controller's informer selects on, and owned by the control ConfigMap like every object of the
run), then merge-patched key by key with the ``resourceVersion`` read as a precondition. A 409 (someone
else created it first, or changed it since the read) is answered by reading again and retrying, a bounded
number of times. Writing the text already recorded is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.errors import OrchError
from orchestrator.kube.api import CONFLICT, NOT_FOUND, api_client_from_environment, transient_kube_error
from orchestrator.kube.objects import (
    MERGE_PATCH,
    NAMESPACE_ENV,
    PLAN_KEY,
    RUN_LABEL,
    SPEC_KEY,
    closed_key,
    control_name,
    owner_reference,
    results_name,
)

__all__ = ["ConfigMapTransport"]

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_T = TypeVar("_T")


class ConfigMapTransport:
    """``Transport`` over the run's ConfigMaps (see the module docstring), for one run and attempt."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        run_id: str,
        attempt: int,
        *,
        refresh_s: float = 0.5,
        write_tries: int = 8,
        api_tries: int = 5,
        backoff_s: float = 0.2,
    ) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.run_id = run_id
        self.attempt = attempt
        self.refresh_s = refresh_s
        self.write_tries = write_tries
        self.api_tries = api_tries
        self.backoff_s = backoff_s
        self._control: tuple[float, dict[str, Any] | None] | None = None  # (read at, the ConfigMap)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **options: Any) -> ConfigMapTransport:
        """The transport of the trainer pod the environment describes: ``ORCH_RUN_ID``, ``ORCH_ATTEMPT``,
        ``ORCH_NAMESPACE`` (else the pod's service-account namespace), and in-cluster API access (else
        the kubeconfig in ``KUBECONFIG``)."""
        run_id = environ.get("ORCH_RUN_ID", "").strip()
        if not run_id:
            raise OrchError("ORCH_RUN_ID is not set: the ConfigMap mailbox needs the run (orch sets it)")
        try:
            attempt = int(environ.get("ORCH_ATTEMPT", ""))
        except ValueError:
            raise OrchError(
                f"ORCH_ATTEMPT must be the attempt number, not {environ.get('ORCH_ATTEMPT', '')!r} "
                "(orch sets it on the trainer pods)"
            ) from None
        namespace = environ.get(NAMESPACE_ENV, "").strip()
        if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        if not namespace:
            raise OrchError(f"{NAMESPACE_ENV} is not set: set it to the namespace of the run's ConfigMaps")
        return cls(api_client_from_environment(environ), namespace, run_id, attempt, **options)

    def __repr__(self) -> str:
        return f"ConfigMapTransport({self.namespace}/{control_name(self.run_id)}, attempt {self.attempt})"

    # ---- Transport ------------------------------------------------------------------------------

    def spec(self) -> str | None:
        return _data(self._read_control()).get(SPEC_KEY)

    def plan(self) -> str | None:
        return _data(self._read_control()).get(PLAN_KEY)

    def closed(self) -> bool:
        """The controller closed this attempt, or the run's control ConfigMap is gone (run swept)."""
        control = self._read_control()
        return control is None or closed_key(self.attempt) in _data(control)

    def result(self, attempt: int, key: str) -> str | None:
        _check_key(key)
        return _data(self._get(results_name(self.run_id, attempt))).get(key)

    def put_result(self, attempt: int, key: str, text: str) -> None:
        _check_key(key)
        name = results_name(self.run_id, attempt)
        for _ in range(self.write_tries):
            current = self._get(name)
            if current is None:
                if self._create_results(name, attempt, key, text):
                    return
                continue  # created by someone else meanwhile: read it and patch
            if _data(current).get(key) == text:
                return
            patch = {
                "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                "data": {key: text},
            }
            try:
                self._call(
                    lambda patch=patch: self.core.patch_namespaced_config_map(
                        name, self.namespace, patch, _content_type=MERGE_PATCH, _preload_content=False
                    )
                )
                return
            except ApiException as error:
                if error.status not in (CONFLICT, NOT_FOUND):
                    raise
        raise OrchError(
            f"{self!r}: could not record {key} in ConfigMap {name} in {self.write_tries} tries "
            "(it kept changing under the writes)"
        )

    # ---- the API --------------------------------------------------------------------------------

    def _create_results(self, name: str, attempt: int, key: str, text: str) -> bool:
        """Create the results ConfigMap holding ``key``; False when it already exists (409)."""
        control = self._read_control(fresh=True)
        if control is None:
            raise OrchError(f"{self!r}: the run's control ConfigMap is gone; the run is over")
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {RUN_LABEL: self.run_id},
                "ownerReferences": [owner_reference(control)],
            },
            "data": {key: text},
        }
        try:
            self._call(
                lambda: self.core.create_namespaced_config_map(self.namespace, body, _preload_content=False)
            )
        except ApiException as error:
            if error.status != CONFLICT:
                raise
            return False
        return True

    def _read_control(self, *, fresh: bool = False) -> dict[str, Any] | None:
        now = time.monotonic()
        if fresh or self._control is None or now - self._control[0] >= self.refresh_s:
            self._control = (now, self._get(control_name(self.run_id)))
        return self._control[1]

    def _get(self, name: str) -> dict[str, Any] | None:
        """The ConfigMap as the API server has it now, or None."""
        try:
            response = self._call(
                lambda: self.core.read_namespaced_config_map(name, self.namespace, _preload_content=False)
            )
        except ApiException as error:
            if error.status == NOT_FOUND:
                return None
            raise
        document: dict[str, Any] = response.json()
        # The API returns kind and apiVersion, which owner_reference copies; make sure of both.
        document.setdefault("apiVersion", "v1")
        document.setdefault("kind", "ConfigMap")
        return document

    def _call(self, request: Callable[[], _T]) -> _T:
        """``request()``, retried with backoff while the API server or the network fails (5xx, 429)."""
        for tried in range(1, self.api_tries + 1):
            try:
                return request()
            except Exception as error:
                if tried == self.api_tries or not transient_kube_error(error):
                    raise
                time.sleep(self.backoff_s * 2 ** (tried - 1))
        raise AssertionError("unreachable")


def _data(configmap: dict[str, Any] | None) -> dict[str, str]:
    return (configmap or {}).get("data") or {}


def _check_key(key: str) -> None:
    # ConfigMap keys: [-._a-zA-Z0-9]+ (what the API server validates); work keys always are.
    if not key or key.startswith(".") or not all(c.isascii() and (c.isalnum() or c in "-._") for c in key):
        raise ValueError(f"not a work key: {key!r}")

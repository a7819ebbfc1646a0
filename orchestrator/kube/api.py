"""Reaching the API server: the client's configuration, the errors worth retrying, the status codes.

Kept apart from ``cluster`` so that the trainer's transport (``trainer_transport``) needs none of the
controller's machinery.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from orchestrator.errors import OrchError

__all__ = [
    "CONFLICT",
    "NOT_FOUND",
    "TOO_MANY_REQUESTS",
    "api_client_from_environment",
    "transient_kube_error",
]

CONFLICT, NOT_FOUND, TOO_MANY_REQUESTS = 409, 404, 429


def api_client_from_environment(environ: Mapping[str, str] | None = None) -> client.ApiClient:
    """In-cluster config inside a pod, else the kubeconfig (``KUBECONFIG`` or ~/.kube/config).

    ``environ`` (default ``os.environ``) decides which, and names the kubeconfig."""
    env = os.environ if environ is None else environ
    configuration = client.Configuration()
    try:
        if env.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            # The client reads KUBECONFIG once, at import; read it now so a changed environment counts.
            config.load_kube_config(config_file=env.get("KUBECONFIG"), client_configuration=configuration)
    except config.ConfigException as error:
        raise OrchError(
            f"kubernetes: cannot load a configuration ({error}); set KUBECONFIG or run inside the cluster"
        ) from error
    return client.ApiClient(configuration)


def transient_kube_error(error: BaseException) -> bool:
    """The API server or the network failed (5xx, 429, no answer), not the request: worth retrying."""
    if isinstance(error, ApiException):
        return (
            error.status is None
            or error.status == 0
            or error.status == TOO_MANY_REQUESTS
            or error.status >= 500
        )
    return isinstance(error, HTTPError | ConnectionError | TimeoutError)

"""The Kubernetes backend assembled: the cluster, the trainer mailbox and the TrainingRun mirror."""

from __future__ import annotations

import os
from typing import Any

from orchestrator.backends.base import BackendParts
from orchestrator.httpguard import client_token
from orchestrator.kube.cluster import KubeCluster, transient_kube_error
from orchestrator.kube.mailbox import KubeExecutor
from orchestrator.kube.objects import TRAINER_SERVICE_ACCOUNT
from orchestrator.kube.training_runs import TrainingRunMirror
from orchestrator.telemetry.scrape import AGENT_TOKEN_ENV, AgentScrapeFeed

__all__ = ["AGENT_URLS_ENV", "make_kube_backend"]

AGENT_URLS_ENV = "ORCH_AGENT_URLS"  # comma-separated agent (or agent Service endpoint) URLs to scrape


def make_kube_backend(
    api_client: Any,
    *,
    namespace: str,
    pool_label: str,
    trainer_service_account: str = TRAINER_SERVICE_ACCOUNT,
    watch_timeout_s: int = 5,
) -> BackendParts:
    """The Kubernetes backend over an ``ApiClient``: pods, the trainer mailbox and TrainingRuns.

    Trainer pods run as ``trainer_service_account`` (``orch-trainer``, which manifests/base binds to the
    ConfigMap calls of their mailbox)."""
    cluster = KubeCluster(
        api_client,
        namespace,
        pool_label,
        trainer_service_account=trainer_service_account,
        watch_timeout_s=watch_timeout_s,
    )
    mirror = TrainingRunMirror(api_client, cluster)
    urls = [url for url in os.environ.get(AGENT_URLS_ENV, "").split(",") if url.strip()]
    feed = AgentScrapeFeed(urls, token=client_token(AGENT_TOKEN_ENV)) if urls else None
    return BackendParts(
        cluster,
        KubeExecutor(cluster),
        sources=(mirror,),
        closers=(mirror.close, cluster.close),
        telemetry=feed,
        transient=transient_kube_error,
    )

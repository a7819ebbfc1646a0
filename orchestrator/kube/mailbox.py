"""The trainer mailbox: how the controller hands work to a gang running in Kubernetes.

Controller → trainer: the run's control ConfigMap ``{run}-control`` (mounted at /etc/orch in
every member) holds ``spec.json`` (the run spec) and ``plan.json`` (the one piece of work wanted
now, a plan message of ``orchestrator.worker.protocol``: ``{"version": 1, "kind": "step" |
"checkpoint" | "filter", "attempt": n, ...}``).

Trainer (rank 0) → controller: the ConfigMap ``{run}-a{attempt}-results``, labelled
``orch.dev/run=<run>``, with one key per finished piece of work — ``step-<n>``,
``checkpoint-<n>``, ``filter-<stage>`` (``work_key``) — each the protocol's result message of
the plan's kind.

Controller → trainer, no more work: key ``closed-a{attempt}`` in the control ConfigMap, written by
``KubeCluster.delete_workload`` before it deletes a trainer pod of that attempt (a trainer also stops
when the control ConfigMap is gone). The trainer's side of all this is
``orchestrator.kube.trainer_transport.ConfigMapTransport``.

Both sides are idempotent: asking again for work already done returns the recorded result,
so a controller killed between "result written" and "result recorded in SQL" loses nothing.
"""

from __future__ import annotations

import json
from typing import TypeVar

from kubernetes.client.exceptions import ApiException

from orchestrator.backends.base import ExecutionInterrupted, WorkInProgress
from orchestrator.core.work import CheckpointPlan, FilterOutcome, FilterPlan, StepOutcome, StepPlan
from orchestrator.kube.cluster import KubeCluster
from orchestrator.kube.objects import (
    ATTEMPT_LABEL,
    MERGE_PATCH,
    PLAN_KEY,
    ROLE_LABEL,
    RUN_LABEL,
    SPEC_KEY,
    control_name,
    observe_pod,
    results_name,
)
from orchestrator.spec import RunSpec
from orchestrator.worker.protocol import (
    CheckpointResultMessage,
    FilterResultMessage,
    StepResultMessage,
    dump_message,
    load_result,
    plan_message,
    work_key,
)

__all__ = ["KubeExecutor"]

_Result = TypeVar("_Result", StepResultMessage, CheckpointResultMessage, FilterResultMessage)


class KubeExecutor:
    """``TrainingExecutor`` that posts plans to the control ConfigMap and reads results back."""

    def __init__(self, cluster: KubeCluster) -> None:
        self.cluster = cluster

    def execute_step(self, spec: RunSpec, plan: StepPlan) -> StepOutcome:
        return self._exchange(spec, plan, StepResultMessage).to_outcome()

    def save_checkpoint(self, spec: RunSpec, plan: CheckpointPlan) -> float:
        return self._exchange(spec, plan, CheckpointResultMessage).to_outcome()

    def evaluate_problems(self, spec: RunSpec, plan: FilterPlan) -> FilterOutcome:
        return self._exchange(spec, plan, FilterResultMessage).to_outcome()

    def _exchange(
        self, spec: RunSpec, plan: StepPlan | CheckpointPlan | FilterPlan, expected: type[_Result]
    ) -> _Result:
        run_id, attempt, key = plan.run_id, plan.attempt, work_key(plan)
        self._require_gang(run_id, attempt)
        results = self.cluster.configmaps.get(self.cluster.namespace, results_name(run_id, attempt))
        data = (results or {}).get("data") or {}
        if key in data:
            return load_result(data[key], expected)
        self._post(spec, run_id, dump_message(plan_message(plan)))
        raise WorkInProgress(f"run {run_id}: attempt {attempt} is working on {key}")

    def _require_gang(self, run_id: str, attempt: int) -> None:
        for pod in self.cluster.pods.items():
            labels = pod["metadata"]["labels"]
            if (labels[RUN_LABEL], labels.get(ATTEMPT_LABEL), labels.get(ROLE_LABEL)) != (
                run_id,
                str(attempt),
                "trainer",
            ):
                continue
            phase, reason = observe_pod(pod)
            if phase != "Running":
                raise ExecutionInterrupted(
                    f"run {run_id}: trainer {pod['metadata']['name']} is {phase} {reason}"
                )

    def _post(self, spec: RunSpec, run_id: str, plan: str) -> None:
        """Write spec and plan into the control ConfigMap, only when they changed."""
        control = self.cluster.ensure_control(run_id)
        wanted = {SPEC_KEY: json.dumps(spec.model_dump(mode="json"), sort_keys=True), PLAN_KEY: plan}
        current = control.get("data") or {}
        changed = {key: value for key, value in wanted.items() if current.get(key) != value}
        if not changed:
            return
        try:
            self.cluster.core.patch_namespaced_config_map(
                control_name(run_id), self.cluster.namespace, {"data": changed}, _content_type=MERGE_PATCH
            )
        except ApiException as error:
            raise ExecutionInterrupted(
                f"run {run_id}: cannot post the plan ({error.status} {error.reason})"
            ) from error

"""A scripted trainer for the fake cluster: the trainer side of ``orchestrator.kube.mailbox``.

Plugged into ``FakeKubelet.behaviors``: on every tick it reads each run's ``plan.json``; when the
plan's attempt has its rank-0 trainer pod Running, it does the work with the simulated physics
(``StepSimulator``) and writes the result into ``{run}-a{attempt}-results``, both as the messages of
``orchestrator.worker.protocol``. Like a real trainer it
starts from the resume step in its pod env and refuses to skip steps.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.core.work import CheckpointPlan, StepPlan
from orchestrator.kube.objects import RUN_LABEL, control_name, results_name
from orchestrator.sim.trainer import StepSimulator
from orchestrator.spec import RunSpec
from orchestrator.worker.protocol import (
    CheckpointResultMessage,
    FilterResultMessage,
    StepResultMessage,
    dump_message,
    load_plan,
    work_key,
)
from tests.kube_rig.api_server import FakeKubeServer

__all__ = ["ScriptedTrainer"]


def _env(pod: dict[str, Any]) -> dict[str, str]:
    container = pod["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container.get("env") or []}


class ScriptedTrainer:
    """Call with the server once per kubelet tick; ``done`` lists (run, attempt, work key) in order."""

    def __init__(self, namespace: str = "orch") -> None:
        self.namespace = namespace
        self.physics = StepSimulator()
        self.positions: dict[tuple[str, int], int] = {}
        self.done: list[tuple[str, int, str]] = []

    def __call__(self, server: FakeKubeServer) -> None:
        for control in server.list_objects("", "configmaps", self.namespace):
            name = control["metadata"]["name"]
            data = control.get("data") or {}
            if not name.endswith("-control") or "plan.json" not in data:
                continue
            run_id = name.removesuffix("-control")
            assert control_name(run_id) == name
            self._work(
                server,
                run_id,
                RunSpec.model_validate(json.loads(data["spec.json"])),
                data["plan.json"],
            )

    def _rank0(self, server: FakeKubeServer, run_id: str, attempt: int) -> dict[str, Any] | None:
        pod = server.get_object("", "pods", self.namespace, f"{run_id}-trainer-0-a{attempt}")
        if pod is None or (pod.get("status") or {}).get("phase") != "Running":
            return None
        return pod

    def _work(self, server: FakeKubeServer, run_id: str, spec: RunSpec, document: str) -> None:
        plan = load_plan(document).to_plan()
        pod = self._rank0(server, run_id, plan.attempt)
        if pod is None:
            return
        position = self.positions.setdefault((run_id, plan.attempt), int(_env(pod)["ORCH_RESUME_STEP"]))
        result: StepResultMessage | CheckpointResultMessage | FilterResultMessage
        if isinstance(plan, StepPlan):
            if plan.step != position + 1:
                return  # a real trainer cannot run a step out of order; the controller will see no result
            result = StepResultMessage.from_outcome(self.physics.step(spec, plan))
            self.positions[(run_id, plan.attempt)] = plan.step
        elif isinstance(plan, CheckpointPlan):
            result = CheckpointResultMessage(seconds=self.physics.checkpoint_seconds(spec))
        else:
            result = FilterResultMessage.from_outcome(self.physics.evaluate(spec, plan))
        self._write(server, run_id, plan.attempt, work_key(plan), dump_message(result))

    def _write(self, server: FakeKubeServer, run_id: str, attempt: int, key: str, result: str) -> None:
        name = results_name(run_id, attempt)
        current = server.get_object("", "configmaps", self.namespace, name)
        data = dict((current or {}).get("data") or {})
        if key in data:
            return
        data[key] = result
        server.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace, "labels": {RUN_LABEL: run_id}},
                "data": data,
            }
        )
        self.done.append((run_id, attempt, key))

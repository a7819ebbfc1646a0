"""A scripted trainer for the fake cluster: the trainer side of ``orchestrator.kube.mailbox``.

Plugged into ``FakeKubelet.behaviors``: on every tick it reads each run's ``plan.json``; when the
plan's attempt has its rank-0 trainer pod Running, it does the work with the simulated physics
(``StepSimulator``) and writes the result into ``{run}-a{attempt}-results``. Like a real trainer it
starts from the resume step in its pod env and refuses to skip steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from orchestrator.core.work import CheckpointPlan, FilterPlan, StepPlan
from orchestrator.kube.objects import RUN_LABEL, control_name, results_name
from orchestrator.sim.trainer import StepSimulator
from orchestrator.spec import RunSpec
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
                json.loads(data["plan.json"]),
            )

    def _rank0(self, server: FakeKubeServer, run_id: str, attempt: int) -> dict[str, Any] | None:
        pod = server.get_object("", "pods", self.namespace, f"{run_id}-trainer-0-a{attempt}")
        if pod is None or (pod.get("status") or {}).get("phase") != "Running":
            return None
        return pod

    def _work(self, server: FakeKubeServer, run_id: str, spec: RunSpec, plan: dict[str, Any]) -> None:
        kind, attempt = plan.pop("kind"), int(plan["attempt"])
        pod = self._rank0(server, run_id, attempt)
        if pod is None:
            return
        position = self.positions.setdefault((run_id, attempt), int(_env(pod)["ORCH_RESUME_STEP"]))
        if "dropped_problems" in plan:
            plan["dropped_problems"] = frozenset(plan["dropped_problems"])
        if kind == "step":
            step = StepPlan(**plan)
            key = f"step-{step.step}"
            if step.step != position + 1:
                return  # a real trainer cannot run a step out of order; the controller will see no result
            result: dict[str, Any] = asdict(self.physics.step(spec, step))
            self.positions[(run_id, attempt)] = step.step
        elif kind == "checkpoint":
            checkpoint = CheckpointPlan(**plan)
            key = f"checkpoint-{checkpoint.step}"
            result = {"seconds": self.physics.checkpoint_seconds(spec)}
        else:
            evaluation = self.physics.evaluate(spec, FilterPlan(**plan))
            key = f"filter-{plan['stage_index']}"
            result = {**asdict(evaluation), "correct": {str(k): v for k, v in evaluation.correct.items()}}
        self._write(server, run_id, attempt, key, result)

    def _write(
        self, server: FakeKubeServer, run_id: str, attempt: int, key: str, result: dict[str, Any]
    ) -> None:
        name = results_name(run_id, attempt)
        current = server.get_object("", "configmaps", self.namespace, name)
        data = dict((current or {}).get("data") or {})
        if key in data:
            return
        data[key] = json.dumps(result)
        server.put_object(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": self.namespace, "labels": {RUN_LABEL: run_id}},
                "data": data,
            }
        )
        self.done.append((run_id, attempt, key))

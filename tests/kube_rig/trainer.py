"""A scripted trainer for the fake cluster: the real trainer SDK over the real ConfigMap mailbox.

Plugged into ``FakeKubelet.behaviors``: on every tick, each Running rank-0 trainer pod gets (once) a
``TrainerSession`` over a ``ConfigMapTransport`` built from the pod's own env (``ORCH_RUN_ID``,
``ORCH_ATTEMPT``, ``ORCH_NAMESPACE``), calling the API server over HTTP as the pod's ServiceAccount (the
fake records it with each request, as a kubelet-mounted token would identify the pod). The session's
``work()`` hands out the posted plan; the trainer does it with the simulated physics (``StepSimulator``)
and ``complete``s it, which creates or patches ``{run}-a{attempt}-results`` as a real trainer would. Like a
real trainer it starts from the resume step in its pod env and refuses to skip steps.
"""

from __future__ import annotations

import contextlib
from typing import Any

from orchestrator.core.work import CheckpointPlan, StepPlan
from orchestrator.errors import OrchError
from orchestrator.kube.objects import INDEX_LABEL, ROLE_LABEL
from orchestrator.kube.trainer_transport import ConfigMapTransport
from orchestrator.sim.trainer import StepSimulator
from orchestrator.worker.protocol import CheckpointResultMessage, FilterResultMessage, StepResultMessage
from orchestrator.worker.session import TrainerSession, WorkItem
from tests.kube_rig.api_server import FakeKubeServer

__all__ = ["ScriptedTrainer"]


def _env(pod: dict[str, Any]) -> dict[str, str]:
    container = pod["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container.get("env") or []}


class ScriptedTrainer:
    """Call with the server once per kubelet tick; ``done`` lists (run, attempt, work key) in order.

    ``close()`` closes the API clients of the sessions still open.
    """

    def __init__(self, namespace: str = "orch", *, refresh_s: float = 0.05) -> None:
        self.namespace = namespace
        self.refresh_s = refresh_s
        self.physics = StepSimulator()
        self.positions: dict[tuple[str, int], int] = {}
        self.done: list[tuple[str, int, str]] = []
        self.sessions: dict[str, tuple[TrainerSession, Any]] = {}  # pod uid -> (session, ApiClient)

    def __call__(self, server: FakeKubeServer) -> None:
        running = {
            pod["metadata"]["uid"]: pod
            for pod in server.list_objects("", "pods", self.namespace)
            if pod["metadata"].get("labels", {}).get(ROLE_LABEL) == "trainer"
            and pod["metadata"]["labels"].get(INDEX_LABEL) == "0"
            and (pod.get("status") or {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        }
        for uid in set(self.sessions) - set(running):
            self._end(uid)
        for uid, pod in running.items():
            session = self.sessions.get(uid)
            if session is None:
                session = self.sessions[uid] = self._session(server, pod)
            # No waiting inside a tick: take what is posted now (already-done work is skipped), then return.
            try:
                for item in session[0].work(poll_s=0, idle_timeout_s=0):
                    self._do(pod, session[0], item)
            except OrchError:
                self._end(uid)  # the run's control ConfigMap is gone: a real trainer would exit here

    def close(self) -> None:
        for uid in list(self.sessions):
            self._end(uid)

    def _session(self, server: FakeKubeServer, pod: dict[str, Any]) -> tuple[TrainerSession, Any]:
        env = _env(pod)
        api_client = server.api_client(user=pod["spec"].get("serviceAccountName", "default"))
        transport = ConfigMapTransport(
            api_client,
            env["ORCH_NAMESPACE"],
            env["ORCH_RUN_ID"],
            int(env["ORCH_ATTEMPT"]),
            refresh_s=self.refresh_s,
        )
        return TrainerSession(transport), api_client

    def _end(self, uid: str) -> None:
        _, api_client = self.sessions.pop(uid)
        with contextlib.suppress(Exception):
            api_client.close()

    def _do(self, pod: dict[str, Any], session: TrainerSession, item: WorkItem) -> None:
        transport = session.transport
        assert isinstance(transport, ConfigMapTransport)
        run_id, attempt = transport.run_id, transport.attempt
        plan = item.plan
        if plan.attempt != attempt:
            return  # the plan of another attempt: this pod's trainer is not the one asked
        spec = session.spec
        position = self.positions.setdefault((run_id, attempt), int(_env(pod)["ORCH_RESUME_STEP"]))
        result: StepResultMessage | CheckpointResultMessage | FilterResultMessage
        if isinstance(plan, StepPlan):
            if plan.step != position + 1:
                return  # a real trainer cannot run a step out of order; the controller will see no result
            result = StepResultMessage.from_outcome(self.physics.step(spec, plan))
            self.positions[(run_id, attempt)] = plan.step
        elif isinstance(plan, CheckpointPlan):
            result = CheckpointResultMessage(seconds=self.physics.checkpoint_seconds(spec))
        else:
            result = FilterResultMessage.from_outcome(self.physics.evaluate(spec, plan))
        item.complete(result)
        self.done.append((run_id, attempt, item.key))

"""TrainingRun custom resources as a second door into orch: ``kubectl apply`` ≡ ``orch submit``.

Each pass, ``pull`` mirrors every TrainingRun not yet known into a SQL run (keyed by the
object's namespace/name/uid, so a restart never mirrors one twice), marks invalid ones, and
cancels SQL runs whose TrainingRun was deleted; ``publish`` writes each run's phase, stage and
step back to the object's ``.status``.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from orchestrator.core import commands
from orchestrator.errors import ConflictError, IllegalTransition, SpecError
from orchestrator.kube.cluster import KubeCluster
from orchestrator.kube.crd import API_VERSION, GROUP, KIND, PLURAL, VERSION
from orchestrator.kube.informer import Informer
from orchestrator.kube.objects import MERGE_PATCH
from orchestrator.records import Run
from orchestrator.spec import parse_spec
from orchestrator.state.store import Store

__all__ = ["TrainingRunMirror", "run_status"]


def _ref(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}/{meta['uid']}"


def run_status(run: Run, generation: int | None) -> dict[str, Any]:
    """The ``.status`` a TrainingRun shows for its SQL run."""
    return {"runId": run.id, **run.progress(), "observedGeneration": generation}


class TrainingRunMirror:
    """``RunSource`` for TrainingRuns in one namespace, fed by an informer."""

    def __init__(self, api_client: client.ApiClient, cluster: KubeCluster) -> None:
        self.api = client.CustomObjectsApi(api_client)
        self.cluster = cluster
        self.namespace = cluster.namespace
        self.objects = Informer(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            cluster.namespace,
            PLURAL,
            changes=cluster.changes,
        ).start()
        self.objects.wait_synced()

    def close(self) -> None:
        self.objects.stop()

    def pull(self, store: Store) -> int:
        changes = 0
        present = set()
        for obj in self.objects.items():
            ref = _ref(obj)
            present.add(ref)
            if store.find_run_by_ref(ref) is None:
                changes += self._mirror(store, obj, ref)
        for run in store.list_runs(active_only=True):
            if (
                run.external_ref
                and run.external_ref.startswith(f"{self.namespace}/")
                and run.external_ref not in present
            ):
                changes += self._cancel_orphan(store, run)
        return changes

    def _mirror(self, store: Store, obj: dict[str, Any], ref: str) -> int:
        meta = obj["metadata"]
        try:
            spec = parse_spec(obj.get("spec"), source=f"TrainingRun {meta['namespace']}/{meta['name']}")
        except SpecError as error:
            status = {"phase": "Invalid", "message": str(error), "observedGeneration": meta.get("generation")}
            return self._patch_status(obj, status)
        owner = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        try:
            run = store.create_run(spec, external_ref=ref)
        except ConflictError:
            return 0  # another controller mirrored it first
        except SpecError as error:  # it names a queue nobody applied
            status = {"phase": "Invalid", "message": str(error), "observedGeneration": meta.get("generation")}
            return self._patch_status(obj, status)
        self.cluster.ensure_control(run.id, owner)
        return 1

    @staticmethod
    def _cancel_orphan(store: Store, run: Run) -> int:
        try:
            store.apply(commands.cancel(run, store.workloads(run.id)))
        except (ConflictError, IllegalTransition):
            return 0
        return 1

    def publish(self, store: Store) -> int:
        changes = 0
        for obj in self.objects.items():
            run = store.find_run_by_ref(_ref(obj))
            if run is None:
                continue
            status = run_status(run, obj["metadata"].get("generation"))
            current = obj.get("status") or {}
            if any(current.get(key) != value for key, value in status.items()):
                changes += self._patch_status(obj, status)
        return changes

    def _patch_status(self, obj: dict[str, Any], status: dict[str, Any]) -> int:
        current = obj.get("status") or {}
        if all(current.get(key) == value for key, value in status.items()):
            return 0
        meta = obj["metadata"]
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                meta["namespace"],
                PLURAL,
                meta["name"],
                {"status": status},
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if error.status == 404:
                return 0  # deleted meanwhile; pull cancels its run on the next pass
            raise
        return 1

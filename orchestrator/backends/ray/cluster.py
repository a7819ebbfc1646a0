"""The cluster protocol on Ray: nodes from the cluster's resources, members as detached named actors.

- A node is an alive Ray node with a ``GPU`` resource or a pool label; its pool is its ``orch.dev/pool``
  node label (``ray start --labels='{"orch.dev/pool": "h100"}'``; key configurable), else the default pool
  (``ORCH_RAY_DEFAULT_POOL``, default ``default``). Labels, not a custom resource: a label costs no
  bookkeeping and Ray can pin a placement group bundle to it. Its name is ``<NodeName>-<NodeID[:8]>``.
- A gang (the members of one attempt created together) is one detached placement group ``{run}-a{attempt}``,
  one bundle per GPU member pinned to the node the pure placement chose (``bundle_label_selector`` on
  ``ray.io/node-id``); ``STRICT_PACK`` when all bundles share a node, else ``PACK``; all-or-nothing.
- A member is a detached actor named ``{run}-{role}-{index}-a{attempt}`` in namespace ``orch`` holding its
  GPUs in its bundle; it launches the member's process (``member.MemberProcess``). A create that finds the
  name taken is success; a colocated engine gets no GPU of its own but its host's ``CUDA_VISIBLE_DEVICES``.
  An engine's process that exits is restarted by its actor (``member.RestartPolicy``): the gang stays; a
  trainer's that exits is a member failure (the gang's next attempt resumes from its checkpoint).
- The argv and env come from the run spec (``launch.member_launch``: the trainer's command with its
  attempt's mailbox, ``mailbox.py``, and, where the run's tools are a tool service, this controller's
  ``ORCH_TOOLS_TOKEN`` / ``ORCH_TOOLS_TOKEN_FILE``; each engine's launch on its own port); ``ORCH_COMMAND``
  in a workload's env overrides the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from orchestrator.backends.base import ClusterEvent
from orchestrator.backends.ray.launch import TOOLS_TOKEN_ENV, member_launch
from orchestrator.backends.ray.mailbox import (
    close_mailbox,
    default_mailbox_root,
    mailbox_dir,
    sweep_mailboxes,
)
from orchestrator.backends.ray.member import NAMESPACE, MemberActor, RestartPolicy
from orchestrator.backends.ray.paths import MEMBER_NAME, default_log_dir, member_log_path, parse_member
from orchestrator.core.members import ENGINE, TRAINER
from orchestrator.core.placement import NodeView
from orchestrator.core.snapshot import ObservedWorkload
from orchestrator.httpguard import client_token
from orchestrator.records import Workload
from orchestrator.spec import PoolSpec, RunSpec

__all__ = [
    "DEFAULT_POOL_ENV",
    "NAMESPACE",
    "NODE_ID_LABEL",
    "POOL_LABEL",
    "RayCluster",
    "gang_name",
    "transient_ray_error",
]

POOL_LABEL = "orch.dev/pool"
NODE_ID_LABEL = "ray.io/node-id"
DEFAULT_POOL_ENV = "ORCH_RAY_DEFAULT_POOL"
STATUS_TIMEOUT_S = 2.0


def gang_name(run_id: str, attempt: int) -> str:
    """The placement group of one attempt's gang."""
    return f"{run_id}-a{attempt}"


def _gang_of(member: str) -> str | None:
    match = MEMBER_NAME.match(member)
    return gang_name(match["run"], int(match["attempt"])) if match else None


def transient_ray_error(error: BaseException) -> bool:
    """Ray itself (GCS, raylet, network) failed, not the run: worth retrying."""
    return isinstance(error, GetTimeoutError | ConnectionError | TimeoutError) or (
        isinstance(error, RayError) and not isinstance(error, RayActorError)
    )


class RayCluster:
    """``ClusterBackend`` over a connected Ray (``ray.init`` done by the caller)."""

    name = "ray"

    def __init__(
        self,
        *,
        pool_label: str = POOL_LABEL,
        default_pool: str | None = None,
        log_dir: str | None = None,
        mailbox_root: str | None = None,
    ) -> None:
        self.pool_label = pool_label
        self.default_pool = default_pool or os.environ.get(DEFAULT_POOL_ENV, "default")
        self.log_dir = log_dir or default_log_dir()
        self.mailbox_root = mailbox_root or default_mailbox_root()
        self._changed = threading.Condition()
        self._version = 0

    # ---- ClusterBackend -----------------------------------------------------------------------

    def prepare_pools(self, pools: Mapping[str, PoolSpec]) -> None:
        """Nothing to create: pools are labelled Ray nodes. Placement reports a pool with no nodes."""

    def list_nodes(self) -> list[NodeView]:
        views = []
        for node in ray.nodes():
            labels = node.get("Labels") or {}
            gpus = int(node.get("Resources", {}).get("GPU", 0))
            if not node.get("Alive") or not (gpus or self.pool_label in labels):
                continue
            pool = labels.get(self.pool_label, self.default_pool)
            views.append(NodeView(name=_node_name(node), pool=pool, gpus=gpus, ready=True))
        return sorted(views, key=lambda view: view.name)

    def list_workloads(self, run_id: str | None = None) -> list[ObservedWorkload]:
        names = [
            each["name"]
            for each in ray.util.list_named_actors(all_namespaces=True)
            if each["namespace"] == NAMESPACE and MEMBER_NAME.match(each["name"])
        ]
        if run_id is not None:
            names = [name for name in names if MEMBER_NAME.match(name)["run"] == run_id]  # type: ignore[index]
        statuses = self._statuses(names)
        nodes = {node["NodeID"]: _node_name(node) for node in ray.nodes()}
        return [_observe(name, statuses[name], nodes) for name in names]

    def create_workload(self, workload: Workload) -> bool:
        return self.create_workloads([workload]) == 1

    def create_workloads(
        self, workloads: Sequence[Workload], *, spec: RunSpec | None = None, stage_index: int = 0
    ) -> int:
        """Create a gang's members together: its placement group first (if new), then each member's actor,
        running what ``spec`` (their run's, at curriculum stage ``stage_index``) launches.

        Returns how many actors were created (members found by name count as success, not as created).
        """
        created = 0
        for gang, members in _by_gang(workloads).items():
            group, bundles = self._placement_group(gang, members)
            for workload in members:
                created += self._create_member(workload, group, bundles, spec, stage_index)
        if created:
            self._bump()
        return created

    def delete_workload(self, name: str) -> bool:
        """Stop and kill the member's actor; a trainer's attempt mailbox is closed first, so its
        ``work()`` loop ends cleanly within the stop's grace period."""
        member = parse_member(name)
        if member is not None and member.role == TRAINER:
            close_mailbox(self.mailbox_root, member.run_id, member.attempt)
        actor = _actor(name)
        if actor is None:
            return False
        # An actor not up yet (its gang still waits for GPUs) has no process: it is only killed. One gone
        # or stuck cannot stop its process, but the process dies with it (PR_SET_PDEATHSIG).
        ready, _ = ray.wait([actor.status.remote()], timeout=STATUS_TIMEOUT_S)
        if ready:
            with contextlib.suppress(RayError):
                ray.get(actor.stop.remote(), timeout=30)
        ray.kill(actor, no_restart=True)
        gang = _gang_of(name)
        if gang is not None and not any(
            _gang_of(other) == gang for other in self._member_names() if other != name
        ):
            _remove_group(gang)
        self._bump()
        return True

    def watch(self, since: int, timeout_s: float) -> tuple[int, list[ClusterEvent]]:
        """Wakes when this process changed something; otherwise the controller polls (level-triggered)."""
        with self._changed:
            if self._version <= since and timeout_s > 0:
                self._changed.wait(timeout_s)
            return self._version, []

    def sweep(self, finished_runs: Collection[str]) -> int:
        """Remove the placement groups of finished runs that no actor holds any more, and their mailbox
        directories (closed first; ``mailbox.sweep_mailboxes``). Their members' log files are kept."""
        names = self._member_names()
        live = {_gang_of(name) for name in names}
        live_runs = {member.run_id for member in map(parse_member, names) if member is not None}
        removed = sweep_mailboxes(self.mailbox_root, finished_runs, live_runs)
        for group in ray.util.placement_group_table().values():
            name = group.get("name", "")
            match = re.match(r"^(?P<run>.+)-a\d+$", name)
            if group.get("state") == "REMOVED" or not match or match["run"] not in finished_runs:
                continue
            if name not in live:
                _remove_group(name)
                removed += 1
        return removed

    # ---- the parts ----------------------------------------------------------------------------

    def log_path(self, workload: Workload) -> str:
        return str(member_log_path(self.log_dir, workload.run_id, workload.name))

    def _placement_group(
        self, gang: str, members: Sequence[Workload]
    ) -> tuple[PlacementGroup | None, dict[str, int]]:
        """The gang's placement group (found or created) and, when created now, each member's bundle."""
        holders = sorted((w for w in members if w.gpus and not w.colocated), key=lambda w: w.name)
        try:
            return _find_group(gang), {}
        except ValueError:
            pass
        if not holders:
            return None, {}
        node_ids = _node_ids()
        selectors = [{NODE_ID_LABEL: node_ids[w.node]} if w.node in node_ids else {} for w in holders]
        strategy = "STRICT_PACK" if len({w.node for w in holders}) == 1 else "PACK"
        group = placement_group(
            [{"GPU": float(w.gpus)} for w in holders],
            strategy=strategy,
            name=gang,
            lifetime="detached",
            bundle_label_selector=selectors if all(selectors) else None,
        )
        return group, {w.name: index for index, w in enumerate(holders)}

    def _create_member(
        self,
        workload: Workload,
        group: PlacementGroup | None,
        bundles: Mapping[str, int],
        spec: RunSpec | None,
        stage_index: int,
    ) -> int:
        if _actor(workload.name) is not None:
            return 0
        bundle = bundles.get(workload.name, -1)
        options: dict[str, Any] = {
            "name": workload.name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "num_cpus": 0,
            "num_gpus": 0 if workload.colocated else workload.gpus,
        }
        host = workload.env.get("ORCH_COLOCATED_WITH") if workload.colocated else None
        if host is not None:
            bundle = bundles.get(host, -1)  # share the host's bundle (its node), holding no GPU of its own
        if group is not None and (host is not None or workload.gpus):
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, bundle)
        info = {"run_id": workload.run_id, "role": workload.role, "node": workload.node}
        mailbox = mailbox_dir(self.mailbox_root, workload.run_id, workload.attempt)
        remote_tools = spec is not None and spec.tools.service.startswith(("http://", "https://"))
        token = client_token(TOOLS_TOKEN_ENV) if workload.role == TRAINER and remote_tools else None
        launch = member_launch(workload, spec, stage_index=stage_index, mailbox=mailbox, tools_token=token)
        try:
            MemberActor.options(**options).remote(
                info,
                list(launch.argv),
                dict(launch.env),
                self.log_path(workload),
                host,
                RestartPolicy() if workload.role == ENGINE else None,
            )
        except ValueError:
            return 0  # another controller created it between our look-up and our create
        return 1

    def _member_names(self) -> list[str]:
        return [
            each["name"]
            for each in ray.util.list_named_actors(all_namespaces=True)
            if each["namespace"] == NAMESPACE
        ]

    def _statuses(self, names: Sequence[str]) -> dict[str, dict[str, Any] | str]:
        """Each actor's status, ``"pending"`` while it is not up yet, or the error that killed it."""
        refs = {}
        result: dict[str, dict[str, Any] | str] = {}
        for name in names:
            actor = _actor(name)
            if actor is None:
                result[name] = "gone"
            else:
                refs[name] = actor.status.remote()
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=STATUS_TIMEOUT_S)
        done = set(ready)
        for name, ref in refs.items():
            if ref not in done:
                result[name] = "pending"
                continue
            try:
                result[name] = ray.get(ref)
            except RayActorError as error:
                result[name] = f"ActorDied: {str(error).splitlines()[0]}"
        return result

    def _bump(self) -> None:
        with self._changed:
            self._version += 1
            self._changed.notify_all()


def _observe(name: str, status: dict[str, Any] | str, nodes: Mapping[str, str]) -> ObservedWorkload:
    run = MEMBER_NAME.match(name)["run"]  # type: ignore[index]
    if status == "pending":
        return ObservedWorkload(name, run, "", "Pending")
    if isinstance(status, str):
        return ObservedWorkload(name, run, "", "Failed", status)
    node = nodes.get(status["node_id"], status.get("node", ""))
    if status["running"]:
        return ObservedWorkload(name, run, node, "Running")
    code = status["exit_code"]
    reason = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return ObservedWorkload(name, run, node, "Failed", f"{reason} (log: {status['log_path']})")


def _by_gang(workloads: Sequence[Workload]) -> dict[str, list[Workload]]:
    gangs: dict[str, list[Workload]] = {}
    for workload in workloads:
        gangs.setdefault(gang_name(workload.run_id, workload.attempt), []).append(workload)
    return gangs


def _node_name(node: Mapping[str, Any]) -> str:
    return f"{node.get('NodeName') or node['NodeManagerAddress']}-{node['NodeID'][:8]}"


def _node_ids() -> dict[str, str]:
    return {_node_name(node): node["NodeID"] for node in ray.nodes() if node.get("Alive")}


def _actor(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _find_group(name: str) -> PlacementGroup:
    """The live placement group of that name; ``ValueError`` if there is none."""
    for group_id, group in ray.util.placement_group_table().items():
        if group.get("name") == name and group.get("state") != "REMOVED":
            return PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id)))
    raise ValueError(name)


def _remove_group(name: str) -> None:
    with contextlib.suppress(ValueError):
        remove_placement_group(_find_group(name))

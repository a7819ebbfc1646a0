"""Whether a run fits the cluster's inventory: its pools exist there, hold its GPU type and could hold its
gang on empty nodes. Pure; ``orch validate`` asks it when it can read the inventory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.members import desired_members
from orchestrator.core.placement import NodeView, place_all
from orchestrator.spec import RunSpec

__all__ = ["inventory_problems"]


def inventory_problems(spec: RunSpec, nodes: Sequence[NodeView], gpu_types: Mapping[str, str]) -> list[str]:
    """One line per way ``spec`` does not fit ``nodes`` (``gpu_types``: pool → its GPU type)."""
    pools = sorted({node.pool for node in nodes})
    problems = []
    for field, name in (("trainer.pool", spec.trainer.pool), ("rollout.pool", spec.rollout.pool)):
        if name not in pools:
            problems.append(
                f"{field}: the cluster has no pool {name!r}; its pools are {', '.join(pools) or 'none'}"
            )
        elif gpu_types.get(name) and gpu_types[name] != spec.pools[name].gpu_type:
            problems.append(
                f"pools.{name}.gpu_type: the cluster's pool {name!r} has {gpu_types[name]} GPUs, not "
                f"{spec.pools[name].gpu_type}; set gpu_type: {gpu_types[name]}"
            )
    if problems:
        return problems
    empty = [NodeView(node.name, node.pool, node.gpus, True, node.zone, node.rack) for node in nodes]
    placement = place_all(desired_members(spec, "validate", 1), empty, {})
    if not placement.ok:
        problems.append(f"the gang can never fit the cluster, even empty: {placement.reason}")
    return problems

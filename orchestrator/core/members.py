"""The members of one attempt of a run: the trainer gang and its engines, with deterministic names."""

from __future__ import annotations

import math

from orchestrator.core.placement import MemberRequest
from orchestrator.spec import RunSpec

__all__ = ["ENGINE", "TRAINER", "desired_members", "workload_name"]

TRAINER = "trainer"
ENGINE = "engine"


def workload_name(run_id: str, role: str, index: int, attempt: int) -> str:
    """Deterministic: a restarted controller recreates the same names, never duplicates."""
    return f"{run_id}-{role}-{index}-a{attempt}"


def desired_members(spec: RunSpec, run_id: str, attempt: int) -> list[MemberRequest]:
    """The trainer gang (whole nodes first) and the rollout engines of one attempt."""
    pool = spec.pools[spec.trainer.pool]
    count = math.ceil(spec.trainer.gpus / pool.gpus_per_node)
    members: list[MemberRequest] = []
    remaining = spec.trainer.gpus
    for rank in range(count):
        gpus = min(pool.gpus_per_node, remaining)
        remaining -= gpus
        members.append(
            MemberRequest(
                workload_name(run_id, TRAINER, rank, attempt),
                spec.trainer.pool,
                gpus,
                role=TRAINER,
                index=rank,
            )
        )
    for index in range(spec.rollout.engines):
        name = workload_name(run_id, ENGINE, index, attempt)
        if spec.colocated:
            host = members[index * count // spec.rollout.engines].key
            members.append(
                MemberRequest(name, spec.rollout.pool, 0, same_node_as=host, role=ENGINE, index=index)
            )
        else:
            members.append(
                MemberRequest(name, spec.rollout.pool, spec.rollout.gpus_per_engine, role=ENGINE, index=index)
            )
    return members

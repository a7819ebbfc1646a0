"""What admitting a run writes, and what a waiting run is: pure, over one run's ``RunSnapshot``.

The admission pass (``orchestrator.core.admission``) decides who runs where across the cluster; these
functions turn its verdict on one run into that run's patch: the placed gang, recorded Pending with
its env and engine ports, and the run's move out of its queue (Pending → Admitted; a preempted run,
Suspended → Resuming from its last checkpoint as a new attempt).
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.core.lifecycle import check_transition
from orchestrator.core.members import ENGINE, TRAINER, desired_members
from orchestrator.core.placement import MemberRequest
from orchestrator.core.ports import ENGINE_PORT_ENV, ENGINE_PORTS_ENV, assign_engine_ports
from orchestrator.core.reconcile import checkpoint_uri, run_checkpoint_dir
from orchestrator.core.results import release_workloads, run_patch
from orchestrator.core.snapshot import RunSnapshot
from orchestrator.hardware import GPU_TYPE_ENV
from orchestrator.records import NewEvent, Phase, Run, RunPatch, Workload, WorkloadStatus
from orchestrator.spec import RunSpec

__all__ = ["PREEMPTED", "admission_attempt", "admit_patch", "gang", "member_env", "waits_in_queue"]

PREEMPTED = "preempted"  # the suspend reason of a run stopped for another's GPUs: it waits in its queue


def waits_in_queue(run: Run) -> bool:
    """Whether the run asks its queue for GPUs: new, resumed, or preempted back into its queue (a run
    whose gang failed asks for nodes only: it still holds its quota)."""
    if run.phase in (Phase.PENDING, Phase.RESUMING, Phase.ADMITTED):
        return True
    return run.phase is Phase.SUSPENDED and run.suspend_reason == PREEMPTED


def admission_attempt(run: Run) -> int:
    """The attempt a run's next placement creates: a preempted run comes back as a new attempt."""
    if run.phase is Phase.SUSPENDED:
        return run.attempt + 1
    return max(run.attempt, 1)


def gang(run: Run, spec: RunSpec) -> tuple[MemberRequest, ...]:
    """The members the run's next placement binds."""
    return tuple(desired_members(spec, run.id, admission_attempt(run)))


def member_env(snapshot: RunSnapshot, role: str, index: int, attempt: int, world: int) -> dict[str, str]:
    """The env every member of an attempt gets: who it is, and for a trainer where to checkpoint and
    which checkpoint to resume from."""
    run, spec = snapshot.run, snapshot.spec
    pool = spec.pools[spec.trainer.pool if role == TRAINER else spec.rollout.pool]
    env = {
        "ORCH_RUN_ID": run.id,
        "ORCH_ROLE": role,
        "ORCH_ATTEMPT": str(attempt),
        GPU_TYPE_ENV: pool.gpu_type,
    }
    if role == TRAINER:
        resume = snapshot.last_checkpoint
        env |= {
            "ORCH_RANK": str(index),
            "ORCH_WORLD_SIZE": str(world),
            "ORCH_CHECKPOINT_URI": run_checkpoint_dir(spec, run.id),
            "ORCH_RESUME_STEP": str(resume),
            "ORCH_RESUME_FROM": checkpoint_uri(spec, run.id, resume) if resume else "",
        }
    else:
        env["ORCH_ENGINE_INDEX"] = str(index)
    return env


def admit_patch(
    snapshot: RunSnapshot,
    nodes: Mapping[str, str],
    *,
    now: float,
    queue: str,
    borrowed: Mapping[str, int] | None = None,
    waited_s: float = 0.0,
) -> RunPatch:
    """The run admitted from ``queue`` with its gang bound to ``nodes`` (member key → node)."""
    run, spec = snapshot.run, snapshot.spec
    attempt = admission_attempt(run)
    members = gang(run, spec)
    trainers = sum(1 for m in members if m.role == TRAINER)
    hosted: dict[str, list[str]] = {}
    for member in members:
        if member.same_node_as:
            hosted.setdefault(member.same_node_as, []).append(member.key)
    engines = sorted((m for m in members if m.role == ENGINE), key=lambda m: m.index)
    ports = assign_engine_ports(
        spec.rollout.engine.port, [nodes[m.key] for m in engines], snapshot.ports_by_others
    )
    port_of = {m.key: port for m, port in zip(engines, ports, strict=True)}
    workloads = []
    for member in members:
        env = member_env(snapshot, member.role, member.index, attempt, trainers)
        if member.role == ENGINE:
            env[ENGINE_PORT_ENV] = str(port_of[member.key])
        else:
            env[ENGINE_PORTS_ENV] = ",".join(map(str, ports))
        if member.same_node_as:
            env["ORCH_COLOCATED_WITH"] = member.same_node_as
        if member.key in hosted:
            env["ORCH_COLOCATED_ENGINES"] = ",".join(hosted[member.key])
        workloads.append(
            Workload(
                name=member.key,
                run_id=run.id,
                role=member.role,
                index=member.index,
                attempt=attempt,
                pool=member.pool,
                node=nodes[member.key],
                gpus=member.gpus,
                status=WorkloadStatus.PENDING,
                env=env,
                image=spec.image,
            )
        )
    fields: dict[str, object] = {"attempt": attempt, "message": f"placing attempt {attempt}"}
    events: list[NewEvent] = []
    if run.admitted_at is None:
        fields["admitted_at"] = now
        lent = ", ".join(f"{gpus} GPUs of pool {pool!r}" for pool, gpus in sorted((borrowed or {}).items()))
        message = f"admitted from queue {queue} after waiting {waited_s:.0f} s" + (
            f", borrowing {lent} from its cohort" if lent else ""
        )
        data = {"queue": queue, "borrowed": dict(borrowed or {}), "waited_s": round(waited_s, 3)}
        events.append(NewEvent("Admitted", message, data))
    if run.phase is Phase.PENDING:
        fields["phase"] = check_transition(run.phase, Phase.ADMITTED).value
    elif run.phase is Phase.SUSPENDED:  # preempted, now back: resume from the last checkpoint
        resume = snapshot.last_checkpoint
        fields |= {
            "phase": check_transition(run.phase, Phase.RESUMING).value,
            "steps_done": resume,
            "suspend_reason": "",
            "suspend_requested": False,
            "failures": 0,
        }
    placed_on = sorted(set(nodes.values()))
    message = f"attempt {attempt}: placed {len(members)} workload(s) on {', '.join(placed_on)}"
    events.append(NewEvent("Placed", message, {"attempt": attempt, "nodes": placed_on}))
    stale = release_workloads(snapshot, only_stale=False)
    return run_patch(
        snapshot,
        run=fields,
        workloads=stale + tuple(workloads),
        supersede_steps_after=snapshot.last_checkpoint if run.phase is Phase.SUSPENDED else None,
        events=tuple(events),
    )

"""Idle-GPU detection: a pure function over time-ordered GPU samples and the running idle stretches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.records import GpuSample, NewEvent
from orchestrator.spec import IdlePolicySpec

__all__ = ["GpuKey", "IdleStretch", "IdleUpdate", "account_idle", "idle_consequences"]

GpuKey = tuple[str, int]  # (node, gpu index)


@dataclass(frozen=True)
class IdleStretch:
    """A GPU below the threshold since ``since``; ``reported`` once it passed ``after_seconds``."""

    run: str
    role: str
    since: float
    reported: bool = False


@dataclass(frozen=True)
class IdleUpdate:
    stretches: dict[GpuKey, IdleStretch | None]  # new state per GPU seen (None: not idle)
    idle_seconds: dict[tuple[str, str], float] = field(default_factory=dict)  # (run, role) -> seconds
    became_idle: list[tuple[GpuKey, IdleStretch]] = field(default_factory=list)


def account_idle(
    stretches: Mapping[GpuKey, IdleStretch | None],
    samples: Sequence[GpuSample],
    policy_of: Callable[[str], IdlePolicySpec | None],
) -> IdleUpdate:
    """Advance every GPU's idle stretch over ``samples`` (oldest first).

    A sample stands for ``period_s`` seconds. A stretch counts once it has lasted ``after_seconds``:
    then all of it is idle time (reported once, as an event), and so is every later idle period.
    Samples of GPUs no run holds, or whose utilization could not be read, end a stretch.
    """
    state: dict[GpuKey, IdleStretch | None] = dict(stretches)
    idle: dict[tuple[str, str], float] = {}
    became: list[tuple[GpuKey, IdleStretch]] = []
    for sample in sorted(samples, key=lambda s: s.at):
        key = (sample.node, sample.index)
        policy = policy_of(sample.run) if sample.run else None
        utilization = sample.utilization_ratio
        if policy is None or utilization is None or utilization >= policy.threshold_ratio:
            state[key] = None
            continue
        current = state.get(key)
        if current is None or (current.run, current.role) != (sample.run, sample.role):
            current = IdleStretch(sample.run, sample.role, sample.at)
        end = sample.at + sample.period_s
        if current.reported:
            counted = sample.period_s
        elif end - current.since >= policy.after_seconds:
            counted = end - current.since
            current = IdleStretch(current.run, current.role, current.since, reported=True)
            became.append((key, current))
        else:
            counted = 0.0
        if counted:
            idle[(sample.run, sample.role)] = idle.get((sample.run, sample.role), 0.0) + counted
        state[key] = current
    return IdleUpdate(stretches=state, idle_seconds=idle, became_idle=became)


def idle_consequences(
    update: IdleUpdate, policy_of: Callable[[str], IdlePolicySpec | None]
) -> tuple[dict[str, list[NewEvent]], set[str]]:
    """An event per GPU that just became idle, and the runs whose policy says to suspend them."""
    events: dict[str, list[NewEvent]] = {}
    suspend: set[str] = set()
    for (node, index), stretch in update.became_idle:
        policy = policy_of(stretch.run)
        if policy is None:
            continue
        message = (
            f"GPU {index} on {node} ({stretch.role}) below {policy.threshold_ratio:.0%} utilization for "
            f"{policy.after_seconds:.0f}s or more"
        )
        if policy.action == "suspend":
            suspend.add(stretch.run)
            message += "; suspending the run at its next checkpoint"
        events.setdefault(stretch.run, []).append(
            NewEvent(
                "GpuIdle", message, {"node": node, "gpu": index, "role": stretch.role, "since": stretch.since}
            )
        )
    return events, suspend

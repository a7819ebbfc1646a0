"""Queues as data (``policies/queues/*.yaml``, applied with ``orch queues apply``): a queue's GPU quota per
pool, the cohort it may borrow from, its fair-share weight, its placement plugins and its preemption rules."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.spec.models import NAME_PATTERN

__all__ = [
    "DEFAULT_QUEUE",
    "PLACEMENT_SCORES",
    "PreemptionPolicySpec",
    "QueueSpec",
    "QuotaSpec",
    "default_queue",
]

DEFAULT_QUEUE = "default"
# The score plugins of orchestrator.core.placement (its registry is checked against this list in a test).
PLACEMENT_SCORES: tuple[str, ...] = ("best-fit", "spread", "topology")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuotaSpec(_Strict):
    """A queue's GPUs in one pool: ``nominal`` are its own; beyond them it may borrow what its cohort's
    other queues leave unused, up to ``borrowing_limit`` (``null``: as much as the cohort has)."""

    pool: str = Field(min_length=1)
    nominal: int = Field(ge=0, description="GPUs of the pool this queue is guaranteed")
    borrowing_limit: int | None = Field(default=None, ge=0, description="GPUs it may borrow beyond nominal")


class PreemptionPolicySpec(_Strict):
    """Which preemptible runs a waiting run of this queue may stop (at their next checkpoint)."""

    within_queue: Literal["lower-priority", "never"] = "lower-priority"
    reclaim_within_cohort: Literal["any", "lower-priority", "never"] = "any"


class QueueSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    cohort: str | None = Field(default=None, pattern=NAME_PATTERN)
    weight: float = Field(default=1.0, gt=0, description="fair-share weight: a larger weight, a larger share")
    quotas: list[QuotaSpec] = Field(default_factory=list)
    placement: list[str] = Field(
        default_factory=lambda: ["best-fit"],
        min_length=1,
        description="score plugins, most important first: " + ", ".join(PLACEMENT_SCORES),
    )
    preemption: PreemptionPolicySpec = PreemptionPolicySpec()
    min_run_seconds: float = Field(
        default=600.0, ge=0, description="a run admitted from this queue is not preempted sooner than this"
    )
    aging_seconds: float = Field(
        default=600.0, gt=0, description="a waiting run gains one priority level per this many seconds"
    )

    @field_validator("placement")
    @classmethod
    def _known_scores(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in PLACEMENT_SCORES:
                raise ValueError(
                    f"unknown placement plugin {name!r}; use one of {', '.join(PLACEMENT_SCORES)}"
                )
        return value

    @model_validator(mode="after")
    def _one_quota_per_pool(self) -> QueueSpec:
        pools = [quota.pool for quota in self.quotas]
        twice = sorted({pool for pool in pools if pools.count(pool) > 1})
        if twice:
            raise ValueError(f"quotas: pool {twice[0]!r} is listed twice; give each pool one quota")
        for quota in self.quotas:
            if quota.borrowing_limit and self.cohort is None:
                raise ValueError(
                    f"quotas: pool {quota.pool!r} has a borrowing_limit but the queue has no cohort to "
                    "borrow from; set cohort or drop borrowing_limit"
                )
        return self

    def nominal(self, pool: str) -> int:
        return next((quota.nominal for quota in self.quotas if quota.pool == pool), 0)


def default_queue(pools: dict[str, int]) -> QueueSpec:
    """The queue every run lands in while no queue has been applied: all of every pool, no cohort."""
    return QueueSpec(
        name=DEFAULT_QUEUE,
        description="implicit: no queue has been applied",
        quotas=[QuotaSpec(pool=pool, nominal=gpus) for pool, gpus in sorted(pools.items())],
    )

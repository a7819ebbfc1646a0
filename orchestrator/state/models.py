"""SQLAlchemy 2 table models. Rows never leave ``orchestrator.state``: the store converts them."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON}


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("external_ref", name="uq_runs_external_ref"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]]
    phase: Mapped[str] = mapped_column(String(16), index=True)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    steps_done: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    advance_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    sim_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    gpu_held_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    queue: Mapped[str] = mapped_column(String(64), default="default")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    external_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    suspend_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed_step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str] = mapped_column(Text, default="", server_default="")
    suspend_reason: Mapped[str] = mapped_column(String(16), default="", server_default="")
    admitted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    sim_ready_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class StageRow(Base):
    __tablename__ = "stages"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    max_response_tokens: Mapped[int] = mapped_column(Integer)
    max_turns: Mapped[int] = mapped_column(Integer)
    planned_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    start_after_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    end_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    problems_in: Mapped[int | None] = mapped_column(Integer, nullable=True)
    problems_kept: Mapped[int | None] = mapped_column(Integer, nullable=True)


class WorkloadRow(Base):
    __tablename__ = "workloads"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    pool: Mapped[str] = mapped_column(String(64))
    node: Mapped[str] = mapped_column(String(128))
    gpus: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    env: Mapped[dict[str, Any]]
    image: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class StepRow(Base):
    __tablename__ = "steps"
    __table_args__ = (
        # A step number counts once per run; superseded rows (work lost to a crash) are kept for audit.
        Index(
            "uq_steps_live",
            "run_id",
            "step",
            unique=True,
            sqlite_where=text("superseded = 0"),
            postgresql_where=text("superseded = false"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    stage_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    max_response_tokens: Mapped[int] = mapped_column(Integer)
    max_turns: Mapped[int] = mapped_column(Integer)
    rollouts: Mapped[int] = mapped_column(Integer)
    generated_tokens: Mapped[int] = mapped_column(Integer)
    rollout_seconds: Mapped[float] = mapped_column(Float)
    train_seconds: Mapped[float] = mapped_column(Float)
    preemptions: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    finished_sim_seconds: Mapped[float] = mapped_column(Float)
    engines: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    queue_peak: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    turns: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tool_calls: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    tool_errors: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reward_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    infra_masked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stale_dropped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stale_regenerated: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    weights_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    sim_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)


class ProblemRow(Base):
    """Pass rate of one problem under an entry filter, and whether the filter dropped it."""

    __tablename__ = "problems"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    stage_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    problem_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    correct: Mapped[int] = mapped_column(Integer)
    dropped: Mapped[bool] = mapped_column(Boolean)


class EventRow(Base):
    """Append-only: rows are inserted, never updated or deleted."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]]


class GpuLatestRow(Base):
    """The newest sample of every GPU, and the idle stretch it is in (if any)."""

    __tablename__ = "gpu_latest"

    node: Mapped[str] = mapped_column(String(128), primary_key=True)
    gpu: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample: Mapped[dict[str, Any]]
    idle_run: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idle_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    idle_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    idle_reported: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[float] = mapped_column(Float)


class RunUtilizationRow(Base):
    """Downsampled utilization history of a run: GPU-seconds held and busy, per time bucket."""

    __tablename__ = "run_utilization"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    bucket_start: Mapped[float] = mapped_column(Float, primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    busy_gpu_seconds: Mapped[float] = mapped_column(Float)


class RunIdleRow(Base):
    """GPU-seconds a run held GPUs below its idle threshold, per role."""

    __tablename__ = "run_idle"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    idle_seconds: Mapped[float] = mapped_column(Float)


class QueueRow(Base):
    """A queue as ``orch queues apply`` stored it (``orchestrator.spec.queues.QueueSpec``)."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]]
    applied_at: Mapped[float] = mapped_column(Float)


class AdmissionLeaseRow(Base):
    """The one row saying which controller admits; ``epoch`` fences a holder whose lease lapsed."""

    __tablename__ = "admission_lease"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    epoch: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[float] = mapped_column(Float)
    pass_at: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")  # the last pass's clock


class QueueUsageRow(Base):
    """GPUs a queue held in a pool, exponentially weighted over time (fair share's memory)."""

    __tablename__ = "queue_usage"

    queue: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64), primary_key=True)
    gpus: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PreemptionRow(Base):
    """A run asked to stop at its next checkpoint so that ``by`` gets its GPUs; gone once it has."""

    __tablename__ = "preemptions"

    victim: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Float)


class AdmissionWaitRow(Base):
    """A run waiting in its queue: its place in line and why, as the last admission pass saw it."""

    __tablename__ = "admission_waits"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    queue: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16), default="", server_default="")


class ClockRow(Base):
    """A shared virtual clock (the simulated pool's), so every run waits and runs on one time line."""

    __tablename__ = "clocks"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    now: Mapped[float] = mapped_column(Float)

"""queues, the admission lease, queue usage, preemptions in flight, waiting runs, the shared virtual clock;
a run's suspend reason, admission time and simulated ready time

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("suspend_reason", sa.String(16), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("admitted_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("sim_ready_at", sa.Float(), nullable=False, server_default="0"))
    op.create_table(
        "queues",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("applied_at", sa.Float(), nullable=False),
    )
    lease = op.create_table(
        "admission_lease",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("pass_at", sa.Float(), nullable=False, server_default="0"),
    )
    # The one row exists from the start, so controllers only ever update it (no race to insert it).
    op.bulk_insert(lease, [{"id": 1, "owner": None, "epoch": 0, "expires_at": 0.0, "pass_at": 0.0}])
    op.create_table(
        "queue_usage",
        sa.Column("queue", sa.String(64), primary_key=True),
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("gpus", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "preemptions",
        sa.Column("victim", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("by", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_table(
        "admission_waits",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default=""),
    )
    op.create_table(
        "clocks",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("now", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for table in ("clocks", "admission_waits", "preemptions", "queue_usage", "admission_lease", "queues"):
        op.drop_table(table)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("sim_ready_at")
        batch_op.drop_column("admitted_at")
        batch_op.drop_column("suspend_reason")

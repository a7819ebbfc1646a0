"""per-step figures from the engines: turns, tool calls, rewards, masked and stale trajectories

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COUNTS = ("turns", "tool_calls", "tool_errors", "infra_masked", "stale_dropped", "stale_regenerated")


def upgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        for name in COUNTS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("reward_sum", sa.Float(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("weights_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_column("weights_version")
        batch_op.drop_column("reward_sum")
        for name in reversed(COUNTS):
            batch_op.drop_column(name)

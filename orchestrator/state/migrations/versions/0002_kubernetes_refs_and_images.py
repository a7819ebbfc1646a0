"""kubernetes refs and images

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("external_ref", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint("uq_runs_external_ref", ["external_ref"])

    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("workloads", schema=None) as batch_op:
        batch_op.drop_column("image")

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_constraint("uq_runs_external_ref", type_="unique")
        batch_op.drop_column("external_ref")

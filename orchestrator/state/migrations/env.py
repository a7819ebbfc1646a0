"""Alembic environment: runs on the connection that ``migrations_runner`` hands over."""

from __future__ import annotations

from alembic import context

from orchestrator.state.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `orch db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

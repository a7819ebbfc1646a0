"""SQL run state: models, the store and Alembic migrations. SQLAlchemy lives only here."""

from orchestrator.state.store import Store, default_database_url

__all__ = ["Store", "default_database_url"]

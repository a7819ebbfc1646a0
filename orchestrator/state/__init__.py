"""SQL run state: models, the store and Alembic migrations. SQLAlchemy lives only here."""

from orchestrator.state.engine import default_database_url
from orchestrator.state.store import Store

__all__ = ["Store", "default_database_url"]

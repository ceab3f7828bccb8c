"""The control plane's SQL database (SQLAlchemy 2, async; Alembic migrations)."""

"""Alembic environment: runs on the connection ``app.db.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from app.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `viraltrace migrate` (app.db.migrate), not alembic")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters tables by copying them; batch mode does that for us.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

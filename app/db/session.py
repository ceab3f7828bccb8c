"""Async engine and sessions for the control-plane database.

SQLite (aiosqlite) under the data directory by default; PostgreSQL (asyncpg)
in production via ``VIRALTRACE_DATABASE_URL``. SQLite enforces foreign keys
only when asked, on every connection, so the engine asks.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.settings import Settings


def database_url(settings: Settings) -> str:
    """The configured URL, else a SQLite file ``<data dir>/control.db``."""
    if settings.database.url:
        return settings.database.url
    return f"sqlite+aiosqlite:///{(settings.data_dir / 'control.db').resolve()}"


def create_engine(url: str, *, foreign_keys: bool = True) -> AsyncEngine:
    """``foreign_keys=False`` is for migrations only: SQLite alters a table by
    copying and dropping it, and with foreign keys on, dropping it would cascade
    deletes into the tables that reference it."""
    engine = create_async_engine(url, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            # Readers do not block the writer (the API reads while the CLI writes).
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)

"""Alembic, run from code: ``viraltrace migrate`` and ``up`` call ``upgrade``.

The scripts live in ``migrations/alembic`` (``database.migrations_dir`` for an
installed image). Migrations run on the async engine's connection through
``run_sync``, so one URL form (``sqlite+aiosqlite``, ``postgresql+asyncpg``)
serves the app and the migrations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.db.session import create_engine

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "migrations" / "alembic"


def alembic_config(directory: Path | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(directory or ALEMBIC_DIR))
    return config


async def _run(url: str, directory: Path | None, action: Any, *args: Any) -> Any:
    engine = create_engine(url, foreign_keys=False)
    try:
        async with engine.begin() as connection:

            def run(sync_connection: Any) -> Any:
                config = alembic_config(directory)
                config.attributes["connection"] = sync_connection
                return action(config, sync_connection, *args)

            return await connection.run_sync(run)
    finally:
        await engine.dispose()


def _current(sync_connection: Any) -> str | None:
    return MigrationContext.configure(sync_connection).get_current_revision()


async def upgrade(url: str, revision: str = "head", directory: Path | None = None) -> list[str]:
    """Upgrade to ``revision``; returns the revisions applied, oldest first."""

    def action(config: Config, connection: Any) -> list[str]:
        before = _current(connection)
        command.upgrade(config, revision)
        after = _current(connection)
        script = ScriptDirectory.from_config(config)
        if before == after or after is None:
            return []
        steps = [rev.revision for rev in script.iterate_revisions(after, before)]
        return list(reversed(steps))

    result: list[str] = await _run(url, directory, action)
    return result


async def downgrade(url: str, revision: str, directory: Path | None = None) -> None:
    def action(config: Config, _: Any) -> None:
        command.downgrade(config, revision)

    await _run(url, directory, action)


async def current(url: str, directory: Path | None = None) -> str | None:
    result: str | None = await _run(url, directory, lambda _c, conn: _current(conn))
    return result


def head(directory: Path | None = None) -> str | None:
    return ScriptDirectory.from_config(alembic_config(directory)).get_current_head()

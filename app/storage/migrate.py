"""Forward-only ClickHouse migrations: numbered SQL files, recorded in ClickHouse itself.

Files are ``migrations/clickhouse/NNNN_snake_name.sql`` (four digits, numbered
from 0001 without gaps or duplicates), applied in numeric order, each once. The
newest file's name (without ``.sql``) must be the content of
``migrations/max_migration.txt``, so that two branches adding a migration
collide in git instead of at deploy time. ``migrate`` records each applied
file in ``schema_migrations`` (version, name, sha256 of the file, applied
time) and refuses to run (``MigrationError``) when an applied file changed,
when an applied version has no file, when the numbering has gaps or
duplicates, or when ``max_migration.txt`` does not name the newest file. A
second run applies nothing.

File format (see ``split_statements``): statements end with a line whose last
non-blank character is ``;``; lines starting with ``--`` are comments. Every
statement must be idempotent (``IF NOT EXISTS``): a migration that fails
halfway is re-run from its first statement next time.

Substitution: the runner replaces ``{events_ttl_days}`` with the
``settings_ttl_days`` argument (an int) and nothing else; any other
``{lowercase_name}`` is an error, and ``{name:Type}`` (query parameters) are
not allowed in DDL. The checksum is over the file as written, not the
substituted text, so changing the TTL setting later does not count as an edited
migration (and does not alter existing tables either: that needs a new
migration with ``ALTER TABLE ... MODIFY TTL``).

Cluster mode (``cluster=ClusterSpec(...)``, from ``clickhouse.cluster``): the
same files, rendered by ``app/storage/cluster.py`` into ``ON CLUSTER`` DDL with
``Replicated*MergeTree`` local tables and ``Distributed`` tables over them;
``schema_migrations`` is then one table replicated to every node, synced
(``SYSTEM SYNC REPLICA``) before it is read. The checksums stay those of the
files. A database migrated in one mode is refused in the other
(``MigrationError``): the runner checks the engine of ``schema_migrations``.
See docs/clickhouse-cluster.md.

Run from one process at a time (a deploy step): ClickHouse has no lock to stop
two runners from applying the same file at once (the statements being
idempotent, the harm is a duplicate ``schema_migrations`` row, which the
``ReplacingMergeTree`` folds).

Reading the rollups (``0003_rollups``). A rollup row holds aggregate STATES;
always merge them, grouping by the key (or a coarser one), never read the
columns directly, and never ``sum`` per-bucket counts across buckets when you
can merge instead::

    SELECT
        bucket,
        type,
        channel,                         -- '' when the event had no channel
        uniqExactMerge(events) AS events,   -- distinct event_ids: exact
        uniqMerge(visitors) AS visitors     -- distinct non-null visitors: approximate
    FROM events_per_minute               -- or events_per_hour
    WHERE campaign = {campaign:String}
      AND bucket >= {start:DateTime('UTC')} AND bucket < {end:DateTime('UTC')}
    GROUP BY bucket, type, channel
    ORDER BY bucket, type, channel

Totals over a range merge the same states without ``bucket`` in the GROUP BY
(``SELECT type, uniqExactMerge(events) ... GROUP BY type``). The exact answer
from the raw table is ``SELECT count() FROM events FINAL WHERE ...``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app.storage.clickhouse import ClickHouse, StorageError

if TYPE_CHECKING:
    from app.storage.cluster import ClusterSpec

# migrations/clickhouse in a source checkout (the image must ship this folder).
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations" / "clickhouse"
MAX_MIGRATION_FILE = "max_migration.txt"
TTL_PLACEHOLDER = "{events_ttl_days}"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")
_BRACED_NAME = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_QUERY_PARAMETER = re.compile(r"\{\w+:[^{}]+\}")

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations
(
    version UInt32,
    name String,
    checksum String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""


class MigrationError(StorageError):
    """The migrations cannot be applied as they are; fix the files or the database."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name without .sql, e.g. "0001_events"
    path: Path
    text: str
    checksum: str  # sha256 hex of the file's bytes


def split_statements(text: str) -> list[str]:
    """Split a migration file into statements.

    Rules, kept simple on purpose:

    - a line whose first non-blank characters are ``--`` is a comment and is dropped;
    - a statement ends at a line whose last non-blank character is ``;``
      (the ``;`` is removed), so put the ``;`` last on its line, after any
      trailing comment, never ``...; -- note``;
    - blank statements are skipped; text after the last ``;`` that is not
      blank or a comment is an error (``MigrationError``), because a missing
      ``;`` would otherwise silently merge or drop a statement.

    Not handled (do not write them in migrations): a line inside a multi-line
    string literal that starts with ``--`` or ends with ``;``.
    """
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            continue
        if stripped.endswith(";"):
            current.append(line.rstrip()[:-1])
            statement = "\n".join(current).strip()
            if statement:
                statements.append(statement)
            current = []
        elif stripped or current:
            current.append(line)
    leftover = "\n".join(current).strip()
    if leftover:
        raise MigrationError(f"statement not terminated by ';': {leftover[:80]!r}")
    return statements


def substitute(statement: str, *, events_ttl_days: int) -> str:
    """``statement`` with ``{events_ttl_days}`` replaced; any other placeholder is an error."""
    for name in _BRACED_NAME.findall(statement):
        if f"{{{name}}}" != TTL_PLACEHOLDER:
            raise MigrationError(f"unknown placeholder {{{name}}} (only {TTL_PLACEHOLDER} exists)")
    if _QUERY_PARAMETER.search(statement):
        raise MigrationError("query parameters ({name:Type}) cannot be used in migrations")
    return statement.replace(TTL_PLACEHOLDER, str(events_ttl_days))


def load_migrations(directory: Path) -> list[Migration]:
    """The migrations in ``directory``, checked and in numeric order (reads files, no database).

    Raises ``MigrationError`` for a misnamed ``.sql`` file, a gap or duplicate in
    the numbering, or a ``max_migration.txt`` (in ``directory.parent``) that is
    missing or does not name the newest file.
    """
    if not directory.is_dir():
        raise MigrationError(f"no migrations directory at {directory}")
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_snake_name.sql")
        data = path.read_bytes()
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=path.stem,
                path=path,
                text=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    migrations.sort(key=lambda m: (m.version, m.name))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            if migration.version < expected:
                problem = f"duplicate version {migration.version:04d} ({migration.name})"
            else:
                problem = f"gap: {migration.name} found where {expected:04d} was expected"
            raise MigrationError(f"migration numbering is broken: {problem}")
    newest = migrations[-1].name if migrations else ""
    max_file = directory.parent / MAX_MIGRATION_FILE
    try:
        named = max_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise MigrationError(f"{max_file} is missing; it must name {newest!r}") from None
    if named != newest:
        raise MigrationError(
            f"{max_file} names {named!r} but the newest migration is {newest!r}: "
            "another branch probably added a migration; renumber yours after it"
        )
    return migrations


def applied_migrations(ch: ClickHouse) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the applied migrations. Blocks."""
    rows = ch.query_rows("SELECT version, name, checksum FROM schema_migrations FINAL")
    return {int(version): (str(name), str(checksum)) for version, name, checksum in rows}


def plan(
    migrations: list[Migration], *, settings_ttl_days: int, cluster: ClusterSpec | None = None
) -> dict[int, list[str]]:
    """version -> the statements to run for it, in the mode ``cluster`` selects.

    Pure (reads no database); raises ``MigrationError`` for a bad TTL, a broken
    file or (cluster mode) a statement the cluster transformer refuses.
    """
    if isinstance(settings_ttl_days, bool) or not isinstance(settings_ttl_days, int):
        raise MigrationError("settings_ttl_days must be an int")
    if settings_ttl_days < 1:
        raise MigrationError("settings_ttl_days must be at least 1")
    planned = {
        m.version: [
            substitute(s, events_ttl_days=settings_ttl_days) for s in split_statements(m.text)
        ]
        for m in migrations
    }
    if cluster is None:
        return planned
    from app.storage.cluster import render_cluster

    rendered = render_cluster([(m.name, planned[m.version]) for m in migrations], cluster)
    return {m.version: statements for m, statements in zip(migrations, rendered, strict=True)}


def render_sql(
    directory: Path = MIGRATIONS_DIR, *, settings_ttl_days: int, cluster: ClusterSpec | None
) -> str:
    """Every statement ``migrate`` would run on an empty database, as one SQL script
    (``viraltrace migrate --print-sql``). Pure; raises ``MigrationError``."""
    from app.storage.cluster import schema_migrations_ddl

    migrations = load_migrations(directory)
    planned = plan(migrations, settings_ttl_days=settings_ttl_days, cluster=cluster)
    mode = "single node" if cluster is None else f"cluster {cluster.name!r}"
    parts = [
        f"-- viraltrace ClickHouse migrations, {mode}",
        f"-- bookkeeping\n{schema_migrations_ddl(cluster).strip()};",
    ]
    for m in migrations:
        for index, statement in enumerate(planned[m.version], start=1):
            parts.append(f"-- {m.name} statement {index} (file sha256 {m.checksum[:12]})")
            parts[-1] += f"\n{statement};"
    return "\n\n".join(parts) + "\n"


def _check_mode(ch: ClickHouse, cluster: ClusterSpec | None) -> None:
    """Refuse to migrate a database set up in the other mode (``MigrationError``)."""
    rows = ch.query_rows(
        "SELECT engine FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'schema_migrations'"
    )
    if not rows:
        return
    replicated = str(rows[0][0]).startswith("Replicated")
    if cluster is not None and not replicated:
        raise MigrationError(
            "this database was migrated in single-node mode (schema_migrations is not "
            "replicated); cluster mode does not convert it: see docs/clickhouse-cluster.md"
        )
    if cluster is None and replicated:
        raise MigrationError(
            "this database was migrated in cluster mode (schema_migrations is replicated): "
            "set clickhouse.cluster (VIRALTRACE_CLICKHOUSE_CLUSTER) to its cluster"
        )


def migrate(
    ch: ClickHouse,
    directory: Path = MIGRATIONS_DIR,
    *,
    settings_ttl_days: int,
    cluster: ClusterSpec | None = None,
) -> list[str]:
    """Apply the pending migrations in ``directory``; return the names applied, in order.

    Blocks (run it off the event loop). ``cluster`` selects cluster mode (module
    docstring). Checks everything before applying anything; raises
    ``MigrationError`` for the cases in the module docstring and
    ``StorageError`` when ClickHouse fails (a failed migration is not recorded,
    and its statements are re-run next time).
    """
    from app.storage.cluster import schema_migrations_ddl

    migrations = load_migrations(directory)
    # Split, substitute (and render) every file before touching the database, so
    # that a broken file never leaves earlier ones half-applied in the same run.
    planned = plan(migrations, settings_ttl_days=settings_ttl_days, cluster=cluster)
    _check_mode(ch, cluster)
    ch.command(schema_migrations_ddl(cluster))
    if cluster is not None:
        # Rows another node recorded reach this replica asynchronously.
        ch.command("SYSTEM SYNC REPLICA schema_migrations")
    applied = applied_migrations(ch)
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"the database has {name} applied but there is no file for version {version:04d}: "
                "is this code older than the database?"
            )
        if migration.name != name:
            raise MigrationError(
                f"version {version:04d} was applied as {name}, the file is {migration.name}"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.name} changed after it was applied (sha256 {checksum[:12]}... in the "
                f"database, {migration.checksum[:12]}... on disk); add a new migration instead"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        for index, statement in enumerate(planned[migration.version], start=1):
            try:
                ch.command(statement)
            except StorageError as exc:
                raise StorageError(
                    f"{migration.name} statement {index} failed: {exc}"
                    + ("" if cluster is None else " (numbered as in `migrate --print-sql`)"),
                    retriable=exc.retriable,
                ) from exc
        ch.insert(
            "schema_migrations",
            [[migration.version, migration.name, migration.checksum, datetime.now(UTC)]],
            ["version", "name", "checksum", "applied_at"],
        )
        done.append(migration.name)
    return done

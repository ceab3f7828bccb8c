"""ClickHouse storage: the client layer, the migrations, dedupe and the rollups.

Tests marked ``clickhouse`` run against the real engine in process (chdb)
under ``tmp_path``. chdb hosts one engine path per process at a time (any
number of clients on that path), so the module shares one data directory and
each test gets its own database.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from app.events import EventV1
from app.storage.clickhouse import (
    ClickHouse,
    StorageError,
    check_parameters,
    is_retriable,
    redact_dsn,
)
from app.storage.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    migrate,
    split_statements,
    substitute,
)
from consumers.sink.pipeline import DLQ_COLUMNS

REPO = Path(__file__).resolve().parents[1]
TTL_DAYS = 400
EVENT_FIELDS = list(EventV1.model_fields)
EVENT_COLUMNS = [*EVENT_FIELDS, "_topic", "_partition", "_offset"]
LATEST = sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
NEXT_VERSION = f"{len(LATEST) + 1:04d}"  # what a new migration would be numbered
# A whole UTC day a week ago: bucket boundaries are reproducible, and the events
# stay well inside the 400-day TTL (a fixed date would expire and be dropped).
DAY_MS = 86_400_000
BASE_MS = (time.time_ns() // 1_000_000 // DAY_MS - 7) * DAY_MS


# ---- helpers -------------------------------------------------------------


def make_event(rng: random.Random, **overrides: Any) -> dict[str, Any]:
    """A valid v1 wire event (validated by EventV1), with random dimensions."""
    ts = BASE_MS + rng.randrange(0, 3 * 3_600_000)  # three hours
    event: dict[str, Any] = {
        "v": 1,
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "type": rng.choice(["view", "click", "share"]),
        "campaign": rng.choice(["spring", "summer", "autumn"]),
        "ts": ts,
        "received_at": ts + rng.randrange(0, 500),
        "source": rng.choice(["pixel", "api", "link"]),
        "token": None,
        "root": None,
        "node": None,
        "parent": None,
        "depth": None,
        "channel": rng.choice([None, "x", "linkedin", "email"]),
        "url": "https://example.com/landing",
        "text": None,
        "value": None,
        "reaction": None,
        "preview_of": None,
        "visitor": rng.choice([None, *(f"v{i:03d}" for i in range(40))]),
        "net": rng.choice([None, "n0", "n1"]),
        "country": rng.choice([None, "FR", "DE"]),
        "bot": rng.random() < 0.1,
        "browser": "Firefox",
        "os": "Linux",
        "device": "Other",
        "privacy": None,
    }
    event.update(overrides)
    EventV1.model_validate(event)
    return event


def row(event: dict[str, Any], offset: int, partition: int = 0) -> list[Any]:
    """The events-table row the sink writes: wire values as they are (ts in ms) plus lineage."""
    return [*(event[f] for f in EVENT_FIELDS), "share-events", partition, offset]


def insert_events(
    ch: ClickHouse, events: list[dict[str, Any]], first_offset: int, token: str | None = None
) -> None:
    rows = [row(e, first_offset + i) for i, e in enumerate(events)]
    ch.insert("events", rows, EVENT_COLUMNS, dedup_token=token)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---- unit tests (no ClickHouse) ------------------------------------------


def test_split_statements() -> None:
    text = """-- a comment; that ends with a semicolon;
CREATE TABLE a
(
    x UInt8 -- inline comments stay, ClickHouse skips them
)
ENGINE = Memory;

   -- indented comment
SELECT 'a;b' ;
;
CREATE VIEW v AS SELECT 1;"""
    assert split_statements(text) == [
        "CREATE TABLE a\n(\n    x UInt8 -- inline comments stay, ClickHouse skips them\n)\n"
        "ENGINE = Memory",
        "SELECT 'a;b'",
        "CREATE VIEW v AS SELECT 1",
    ]
    assert split_statements("") == []
    assert split_statements("-- only a comment\n\n") == []
    with pytest.raises(MigrationError, match="not terminated"):
        split_statements("SELECT 1;\nSELECT 2\n-- trailing comment\n")
    # The ';' must end the line: a trailing comment hides it.
    with pytest.raises(MigrationError, match="not terminated"):
        split_statements("SELECT 1; -- note\n")


def test_substitute_only_knows_the_ttl() -> None:
    assert substitute("TTL d + INTERVAL {events_ttl_days} DAY", events_ttl_days=7) == (
        "TTL d + INTERVAL 7 DAY"
    )
    with pytest.raises(MigrationError, match="unknown placeholder"):
        substitute("INTERVAL {event_ttl_days} DAY", events_ttl_days=7)
    with pytest.raises(MigrationError, match="query parameters"):
        substitute("WHERE x = {x:String}", events_ttl_days=7)


def test_repo_migrations_are_consistent() -> None:
    migrations = load_migrations(MIGRATIONS_DIR)
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.name for m in migrations] == LATEST
    assert (REPO / "migrations" / "max_migration.txt").read_text().strip() == LATEST[-1]
    for m in migrations:
        for statement in split_statements(m.text):
            # MODIFY QUERY sets a view's query: running it again sets the same one.
            idempotent = "IF NOT EXISTS" in statement or "MODIFY QUERY" in statement
            assert idempotent, f"{m.name}: every statement must be idempotent"
            substitute(statement, events_ttl_days=TTL_DAYS)


def copy_migrations(tmp_path: Path) -> Path:
    """A writable copy of migrations/; returns its clickhouse/ folder."""
    shutil.copytree(REPO / "migrations", tmp_path / "migrations")
    return tmp_path / "migrations" / "clickhouse"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: (d / "0002_events_dlq.sql").rename(d / "0005_events_dlq.sql"), "gap"),
        (lambda d: shutil.copy(d / "0001_events.sql", d / "0001_events_again.sql"), "duplicate"),
        (lambda d: (d / f"{NEXT_VERSION}_Bad-Name.sql").write_text("SELECT 1;\n"), "NNNN_snake"),
        (lambda d: (d.parent / "max_migration.txt").write_text("0002_events_dlq\n"), "names"),
        (lambda d: (d.parent / "max_migration.txt").unlink(), "missing"),
        (lambda d: (d / f"{NEXT_VERSION}_more.sql").write_text("SELECT 1;\n"), "newest migration"),
    ],
)
def test_load_migrations_refuses(tmp_path: Path, change: Any, message: str) -> None:
    directory = copy_migrations(tmp_path)
    load_migrations(directory)
    change(directory)
    with pytest.raises(MigrationError, match=message):
        load_migrations(directory)


def test_parameters_must_bind_server_side() -> None:
    assert check_parameters("SELECT 1", None) is None
    assert check_parameters("SELECT {a:String}", {"a": "x"}) == {"a": "x"}
    # clickhouse-connect would format these into the SQL text client-side: refused.
    with pytest.raises(StorageError, match="placeholder") as info:
        check_parameters("SELECT * FROM t WHERE c = %(c)s", {"c": "x"})
    assert info.value.retriable is False
    with pytest.raises(StorageError, match="missing"):
        check_parameters("SELECT {a:String}, {b:UInt8}", {"a": "x"})
    with pytest.raises(StorageError, match="without parameters"):
        check_parameters("SELECT {a:String}", None)
    with pytest.raises(StorageError, match="mapping"):
        check_parameters("SELECT {a:String}", ["x"])  # type: ignore[arg-type]


def test_retriable_classification() -> None:
    assert is_retriable(OperationalError("connection refused"))
    assert is_retriable(ConnectionResetError())
    assert is_retriable(DatabaseError("Code: 159. Timeout exceeded", code=159))
    assert is_retriable(DatabaseError("Code: 252. Too many parts", code=252))
    assert is_retriable(DatabaseError("HTTP driver received HTTP status 503"))
    assert not is_retriable(DatabaseError("HTTP driver received HTTP status 400"))
    assert not is_retriable(DatabaseError("Code: 62. Syntax error", code=62))
    assert not is_retriable(ProgrammingError("Code: 60. Unknown table", code=60))
    assert not is_retriable(ValueError("bad"))


def test_dsn_checks_and_redaction() -> None:
    for dsn in ("postgres://h/db", "chdb://relative/path", "chdb:///abs?x=1", "memory"):
        with pytest.raises(StorageError) as info:
            ClickHouse(dsn)
        assert info.value.retriable is False
    assert redact_dsn("https://u:secret@h:8443/db") == "https://u:***@h:8443/db"
    assert redact_dsn("chdb:///data") == "chdb:///data"


def test_unreachable_server_is_retriable() -> None:
    # A closed local port: the HTTP path fails at connect, which is worth retrying.
    dsn = f"http://default:s3cret-pw@127.0.0.1:{free_port()}/db"
    with pytest.raises(StorageError) as info:
        ClickHouse(dsn, connect_timeout_s=1)
    assert info.value.retriable is True
    assert "s3cret-pw" not in str(info.value)


# ---- against the engine (chdb) -------------------------------------------


def tables(ch: ClickHouse) -> list[str]:
    rows = ch.query_rows(
        "SELECT name FROM system.tables WHERE database = {db:String} ORDER BY name",
        {"db": ch.database},
    )
    return [name for (name,) in rows]


@pytest.mark.clickhouse
def test_migrate_fresh_then_nothing(ch: ClickHouse) -> None:
    assert migrate(ch, MIGRATIONS_DIR, settings_ttl_days=TTL_DAYS) == LATEST
    assert tables(ch) == [
        "alerts",
        "buzz_items",
        "buzz_windows",
        "cascade_nodes",
        "cascade_stats",
        "cascade_touches",
        "events",
        "events_dlq",
        "events_per_hour",
        "events_per_hour_mv",
        "events_per_minute",
        "events_per_minute_mv",
        "schema_migrations",
        "visitors_per_month",
        "visitors_per_month_mv",
    ]
    recorded = ch.query_rows("SELECT version, name FROM schema_migrations FINAL ORDER BY version")
    assert recorded == [(i + 1, name) for i, name in enumerate(LATEST)]
    assert migrate(ch, MIGRATIONS_DIR, settings_ttl_days=TTL_DAYS) == []
    assert ch.query_rows("SELECT count() FROM schema_migrations") == [(len(LATEST),)]
    # The wire schema and the table agree, column for column.
    described = ch.query_rows("DESCRIBE TABLE events")
    assert [name for name, *_ in described] == EVENT_COLUMNS
    # The TTL placeholder was substituted.
    (ddl,) = ch.query_rows(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} "
        "AND name = 'events'",
        {"db": ch.database},
    )[0]
    assert f"toIntervalDay({TTL_DAYS})" in ddl


@pytest.mark.clickhouse
def test_migrate_applies_only_new_files(ch: ClickHouse, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    assert migrate(ch, directory, settings_ttl_days=TTL_DAYS) == LATEST
    name = f"{len(LATEST) + 1:04d}_extra"
    (directory / f"{name}.sql").write_text(
        "-- a later migration\nCREATE TABLE IF NOT EXISTS extra (x UInt8)\nENGINE = MergeTree\n"
        "ORDER BY x;\n"
    )
    (directory.parent / "max_migration.txt").write_text(f"{name}\n")
    assert migrate(ch, directory, settings_ttl_days=TTL_DAYS) == [name]
    assert "extra" in tables(ch)


@pytest.mark.clickhouse
def test_net_column_added_to_a_table_with_rows(ch: ClickHouse, tmp_path: Path) -> None:
    # A database migrated up to just before `net` and holding rows written without it.
    directory = copy_migrations(tmp_path)
    (net_file,) = directory.glob("*_events_net.sql")
    at = LATEST.index(net_file.stem)
    held_back = {
        p: p.read_text() for p in sorted(directory.glob("*.sql")) if p.stem >= net_file.stem
    }
    for path in held_back:
        path.unlink()
    (directory.parent / "max_migration.txt").write_text(f"{LATEST[at - 1]}\n")
    assert migrate(ch, directory, settings_ttl_days=TTL_DAYS) == LATEST[:at]
    rng = random.Random(4)
    old = [make_event(rng) for _ in range(5)]
    net_index = EVENT_COLUMNS.index("net")
    old_rows = [row(e, i) for i, e in enumerate(old)]
    for old_row in old_rows:
        del old_row[net_index]
    ch.insert("events", old_rows, [c for c in EVENT_COLUMNS if c != "net"])

    for path, sql in held_back.items():
        path.write_text(sql)
    (directory.parent / "max_migration.txt").write_text(f"{LATEST[-1]}\n")
    assert migrate(ch, directory, settings_ttl_days=TTL_DAYS) == LATEST[at:]
    assert [name for name, *_ in ch.query_rows("DESCRIBE TABLE events")] == EVENT_COLUMNS
    # Old rows read NULL: no bucket was ever computed for them.
    assert ch.query_rows("SELECT count(), countIf(net IS NULL) FROM events") == [(5, 5)]
    insert_events(ch, [make_event(rng, net="0123456789abcdef")], 100)
    assert ch.query_rows("SELECT net FROM events WHERE _offset = 100") == [("0123456789abcdef",)]
    # The statement is idempotent, as a re-run after a failure needs.
    (statement,) = split_statements(held_back[net_file])
    ch.command(statement)
    assert ch.query_rows("SELECT count(), countIf(net IS NULL) FROM events") == [(6, 5)]


@pytest.mark.clickhouse
def test_changed_applied_file_is_refused(ch: ClickHouse, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    migrate(ch, directory, settings_ttl_days=TTL_DAYS)
    changed = directory / "0002_events_dlq.sql"
    changed.write_text(changed.read_text() + "-- an innocent-looking edit\n")
    with pytest.raises(MigrationError, match="0002_events_dlq changed after it was applied"):
        migrate(ch, directory, settings_ttl_days=TTL_DAYS)
    # A different TTL setting is not an edit: the checksum is over the file.
    changed.write_text((REPO / "migrations/clickhouse/0002_events_dlq.sql").read_text())
    assert migrate(ch, directory, settings_ttl_days=30) == []


@pytest.mark.clickhouse
def test_bad_max_migration_is_refused_before_touching_the_database(
    ch: ClickHouse, tmp_path: Path
) -> None:
    directory = copy_migrations(tmp_path)
    (directory.parent / "max_migration.txt").write_text(f"{LATEST[0]}\n")
    with pytest.raises(MigrationError, match="max_migration.txt names"):
        migrate(ch, directory, settings_ttl_days=TTL_DAYS)
    assert tables(ch) == []


@pytest.mark.clickhouse
def test_database_ahead_of_files_is_refused(ch: ClickHouse, tmp_path: Path) -> None:
    directory = copy_migrations(tmp_path)
    migrate(ch, directory, settings_ttl_days=TTL_DAYS)
    (directory / f"{LATEST[-1]}.sql").unlink()
    (directory.parent / "max_migration.txt").write_text(f"{LATEST[-2]}\n")
    with pytest.raises(MigrationError, match="no file for version"):
        migrate(ch, directory, settings_ttl_days=TTL_DAYS)


@pytest.mark.clickhouse
def test_insert_with_dedup_token_twice_stores_once(migrated: ClickHouse) -> None:
    ch = migrated
    rng = random.Random(1)
    events = [make_event(rng) for _ in range(10)]
    insert_events(ch, events, 0, token="share-events:0:0-9")
    insert_events(ch, events, 0, token="share-events:0:0-9")
    # No FINAL: the second insert never landed, no merge was needed.
    assert ch.query_rows("SELECT count() FROM events") == [(10,)]
    # Another token is another insert (ReplacingMergeTree then folds the copies).
    insert_events(ch, events, 100, token="share-events:0:100-109")
    assert ch.query_rows("SELECT count() FROM events") == [(20,)]
    assert ch.query_rows("SELECT count() FROM events FINAL") == [(10,)]
    # The rollups saw the duplicate insert but count each event_id once.
    assert ch.query_rows("SELECT uniqExactMerge(events) FROM events_per_minute") == [(10,)]

    # Plain MergeTree (the DLQ) deduplicates by token too.
    dlq_columns = DLQ_COLUMNS
    dlq = [["bad_ts", "ts", "too old", "pixel", "{}", "share-events-dlq", 3, 42, BASE_MS]]
    ch.insert("events_dlq", dlq, dlq_columns, dedup_token="share-events-dlq:3:42-42")
    ch.insert("events_dlq", dlq, dlq_columns, dedup_token="share-events-dlq:3:42-42")
    assert ch.query_rows("SELECT count(), any(received_at) FROM events_dlq") == [
        (1, datetime.fromtimestamp(BASE_MS / 1000, UTC))
    ]


@pytest.mark.clickhouse
def test_exact_counts_and_rollups_with_duplicates(migrated: ClickHouse) -> None:
    ch = migrated
    rng = random.Random(42)
    events = [make_event(rng) for _ in range(1000)]
    # Insert 1: 600 events plus 50 of them again in the same block.
    first = events[:600] + events[:50]
    # Insert 2: the other 400 plus 100 already stored by insert 1 (a replay).
    second = events[600:] + events[100:200]
    insert_events(ch, first, 0, token="share-events:0:0-649")
    insert_events(ch, second, 650, token="share-events:0:650-1149")

    # Before any merge: the copies within insert 1 were already folded when its
    # part was written (optimize_on_insert applies ReplacingMergeTree to the
    # block), the 100 replayed by insert 2 sit in another part until a merge.
    assert ch.query_rows("SELECT count() FROM events") == [(1100,)]
    assert ch.query_rows("SELECT count() FROM events FINAL") == [(1000,)]
    assert ch.query_rows("SELECT uniqExact(event_id) FROM events") == [(1000,)]

    for table, bucket_ms, bucket_fn in (
        ("events_per_minute", 60_000, "toStartOfMinute"),
        ("events_per_hour", 3_600_000, "toStartOfHour"),
    ):
        expected_events: dict[tuple[Any, ...], int] = defaultdict(int)
        expected_visitors: dict[tuple[Any, ...], set[str]] = defaultdict(set)
        for e in events:
            bucket = datetime.fromtimestamp(e["ts"] // bucket_ms * bucket_ms / 1000, UTC)
            key = (e["campaign"], bucket, e["type"], e["channel"] or "")
            expected_events[key] += 1
            if e["visitor"] is not None:
                expected_visitors[key].add(e["visitor"])
        rollup = ch.query_rows(
            f"SELECT campaign, bucket, type, channel, uniqExactMerge(events), "
            f"uniqMerge(visitors) FROM {table} GROUP BY campaign, bucket, type, channel"
        )
        got_events = {tuple(r[:4]): r[4] for r in rollup}
        got_visitors = {tuple(r[:4]): r[5] for r in rollup}
        assert got_events == dict(expected_events), table
        # uniq is exact at these small cardinalities; NULL visitors are not counted.
        assert got_visitors == {k: len(expected_visitors[k]) for k in expected_events}, table
        # And the rollup agrees with the raw table read with FINAL.
        raw = ch.query_rows(
            f"SELECT campaign, {bucket_fn}(ts) AS b, type, ifNull(channel, '') AS ch, count() "
            f"FROM events FINAL GROUP BY campaign, b, type, ch"
        )
        assert {tuple(r[:4]): r[4] for r in raw} == got_events, table

    # Totals per campaign and type: merge the states across buckets.
    totals = ch.query_rows(
        "SELECT campaign, type, uniqExactMerge(events) FROM events_per_hour GROUP BY campaign, type"
    )
    expected_totals: dict[tuple[str, str], int] = defaultdict(int)
    for e in events:
        expected_totals[(e["campaign"], e["type"])] += 1
    assert {(c, t): n for c, t, n in totals} == dict(expected_totals)
    assert sum(n for *_, n in totals) == 1000

    # Merges fold the copies for good.
    ch.command("OPTIMIZE TABLE events FINAL")
    assert ch.query_rows("SELECT count() FROM events") == [(1000,)]


@pytest.mark.clickhouse
def test_times_round_trip_as_utc(migrated: ClickHouse) -> None:
    ch = migrated
    event = make_event(random.Random(3), ts=BASE_MS + 123, received_at=BASE_MS + 456)
    insert_events(ch, [event], 0)
    ((ts, received_at, ms),) = ch.query_rows(
        "SELECT ts, received_at, toUnixTimestamp64Milli(ts) FROM events"
    )
    assert ts == datetime.fromtimestamp((BASE_MS + 123) / 1000, UTC)
    assert received_at == datetime.fromtimestamp((BASE_MS + 456) / 1000, UTC)
    assert ts.utcoffset().total_seconds() == 0
    assert ms == BASE_MS + 123


@pytest.mark.clickhouse
def test_parameters_are_values_not_sql(migrated: ClickHouse) -> None:
    ch = migrated
    rng = random.Random(7)
    hostile = "x' OR 1=1 --"
    events = [make_event(rng) for _ in range(5)]
    # The wire refuses such a slug; storage must still treat it as a plain value.
    events.append({**make_event(rng), "campaign": hostile})
    insert_events(ch, events, 0)
    sql = "SELECT count() FROM events FINAL WHERE campaign = {campaign:String}"
    assert ch.query_rows(sql, {"campaign": hostile}) == [(1,)]
    assert ch.query_rows(sql, {"campaign": "nope' OR 1=1 --"}) == [(0,)]
    assert ch.query_rows("SELECT {v:String}", {"v": hostile}) == [(hostile,)]
    # Client-side formatting is refused rather than silently used.
    with pytest.raises(StorageError, match="placeholder"):
        ch.query_rows("SELECT count() FROM events WHERE campaign = %(c)s", {"c": hostile})


@pytest.mark.clickhouse
def test_errors_are_storage_errors(migrated: ClickHouse, tmp_path: Path) -> None:
    ch = migrated
    for sql in ("SELECT nonsense(", "SELECT * FROM no_such_table"):
        with pytest.raises(StorageError) as info:
            ch.query_rows(sql)
        assert info.value.retriable is False
    with pytest.raises(StorageError) as info:
        ch.command("DROP TABLE no_such_table")
    assert info.value.retriable is False
    # A value the column cannot take fails while serializing, before ClickHouse.
    bad = row(make_event(random.Random(5)), 0)
    bad[EVENT_COLUMNS.index("_partition")] = "zero"
    with pytest.raises(StorageError, match="serialize") as info:
        ch.insert("events", [bad], EVENT_COLUMNS)
    assert info.value.retriable is False
    with pytest.raises(StorageError, match="invalid table"):
        ch.insert("events; DROP TABLE events", [bad], EVENT_COLUMNS)
    # chdb: one engine path per process while a client is open.
    with pytest.raises(StorageError, match="already initialized") as info:
        ClickHouse(f"chdb://{tmp_path / 'other'}")
    assert info.value.retriable is False


@pytest.mark.clickhouse
def test_closed_client(engine: str) -> None:
    ch = ClickHouse(engine)
    ch.close()
    ch.close()
    with pytest.raises(StorageError, match="closed") as info:
        ch.query_rows("SELECT 1")
    assert info.value.retriable is False


@pytest.mark.clickhouse
async def test_async_wrappers_run_on_one_worker_thread(migrated: ClickHouse) -> None:
    ch = migrated
    threads: set[str] = set()
    sync_query = ch.query_rows

    def recording_query(sql: str, parameters: Any = None) -> list[tuple[Any, ...]]:
        threads.add(threading.current_thread().name)
        return sync_query(sql, parameters)

    ch.query_rows = recording_query  # type: ignore[method-assign]
    rng = random.Random(11)
    events = [make_event(rng, campaign="async") for _ in range(20)]
    await ch.acommand("CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = MergeTree ORDER BY x")
    rows = [row(e, i) for i, e in enumerate(events)]
    await ch.ainsert("events", rows, EVENT_COLUMNS, dedup_token="async:0-19")
    results = await asyncio.gather(
        *(
            ch.aquery_rows("SELECT count() FROM events WHERE campaign = {c:String}", {"c": "async"})
            for _ in range(5)
        )
    )
    assert results == [[(20,)]] * 5
    assert len(threads) == 1
    (name,) = threads
    assert name.startswith("clickhouse") and name != threading.current_thread().name
    with pytest.raises(StorageError) as info:
        await ch.aquery_rows("SELECT nonsense(")
    assert info.value.retriable is False

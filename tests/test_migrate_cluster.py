"""Cluster mode of the ClickHouse migrations (app/storage/cluster.py).

The rendering is checked structurally for every migration in the repository;
the single-node statements and checksums are pinned; the cluster DDL is run
on the real engine (chdb, in its own process: tests/clusterprobe.py) as far
as an embedded engine allows, which that module's docstring spells out.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from app.cli import cli
from app.settings import ClickHouseSettings, Settings
from app.storage.clickhouse import ClickHouse
from app.storage.cluster import SHARDING_KEYS, ClusterSpec, render_cluster, schema_migrations_ddl
from app.storage.migrate import (
    MIGRATIONS_DIR,
    SCHEMA_MIGRATIONS_DDL,
    MigrationError,
    load_migrations,
    migrate,
    plan,
    split_statements,
    substitute,
)

REPO = Path(__file__).resolve().parents[1]
TTL_DAYS = 400
# sha256 of the applied migration files as they were when cluster mode came:
# applied files never change (the runner refuses a changed checksum).
PINNED = {
    "0001_events": "6ffb090a66843f3453437476140dbe62c55fc67d6cadfcef51f8f99ca42a6619",
    "0002_events_dlq": "d9daf6573c556a76dd7d0cf4204f8bf70ff18fd2fcfc669551e59a9dd1ddadaf",
    "0003_rollups": "61658172cf15a9ee89c645201ffea4a03825b1df57d4dfe0d0b840d65c2393dd",
    "0004_cascades": "c97fd12dd97f7d9378256272cf4b869416b8c3a2defdab4169630e2408267904",
    "0005_events_net": "51a5d9bf35447271cd1a30f7b7fd25def6cd7687e5f3eab250194a7a7cd21cc2",
    "0006_buzz_alerts": "355d2ec6978da5a96a6542c3971f70ff9a95ea41513d4ee6459786243524c46e",
}
SPEC = ClusterSpec("vt", "/clickhouse/tables/{shard}/{database}/{table}", "{replica}")
ON = "ON CLUSTER 'vt'"
MACROS = {"{shard}", "{database}", "{replica}"}


def single_node() -> list[tuple[str, list[str]]]:
    """(name, statements as the single-node runner runs them) for every repo migration."""
    return [
        (m.name, [substitute(s, events_ttl_days=TTL_DAYS) for s in split_statements(m.text)])
        for m in load_migrations(MIGRATIONS_DIR)
    ]


def merge_tree_tables() -> dict[str, tuple[str, str, str]]:
    """table -> (engine, engine arguments, statement) of every CREATE TABLE in the files."""
    found: dict[str, tuple[str, str, str]] = {}
    for _, statements in single_node():
        for statement in statements:
            created = re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
            if created:
                engine = re.search(r"^ENGINE = (\w+)(?:\((.*)\))?$", statement, re.M)
                assert engine, statement
                found[created.group(1)] = (engine.group(1), engine.group(2) or "", statement)
    return found


def column_list(statement: str) -> str:
    return statement[statement.index("\n(") : statement.index("\nENGINE")]


def render(statements: list[str], keys: dict[str, str | None] | None = None) -> list[str]:
    (rendered,) = render_cluster([("0009_test", statements)], SPEC, keys or dict(SHARDING_KEYS))
    return rendered


# ---- single node: byte for byte as before ---------------------------------------------


def test_single_node_runs_the_files_as_written() -> None:
    migrations = load_migrations(MIGRATIONS_DIR)
    planned = plan(migrations, settings_ttl_days=TTL_DAYS)
    assert [planned[m.version] for m in migrations] == [s for _, s in single_node()]
    assert schema_migrations_ddl(None) == SCHEMA_MIGRATIONS_DDL
    for m in migrations:
        assert m.checksum == hashlib.sha256(m.path.read_bytes()).hexdigest()
        if m.name in PINNED:
            assert m.checksum == PINNED[m.name], f"{m.name} was edited after it was applied"
    assert set(PINNED) <= {m.name for m in migrations}


# ---- cluster rendering of the repository's migrations --------------------------------


def test_every_merge_tree_table_has_a_declared_sharding_key() -> None:
    tables = merge_tree_tables()
    assert set(SHARDING_KEYS) == set(tables)
    assert all(engine.endswith("MergeTree") for engine, _, _ in tables.values())


def test_cluster_rendering_of_every_migration() -> None:
    migrations = load_migrations(MIGRATIONS_DIR)
    planned = plan(migrations, settings_ttl_days=TTL_DAYS, cluster=SPEC)
    rendered = [s for m in migrations for s in planned[m.version]]
    for statement in rendered:
        assert statement.count(ON) == 1, statement
        assert "{events_ttl_days}" not in statement
        assert set(re.findall(r"\{\w+\}", statement)) <= MACROS, statement
    creates: dict[str, str] = {}
    for statement in rendered:
        if statement.startswith("CREATE TABLE"):
            created = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) ON CLUSTER 'vt'\n", statement)
            assert created, statement
            creates[created.group(1)] = statement
    tables = merge_tree_tables()
    assert set(creates) == set(tables) | {f"{t}_local" for t in tables}
    for table, (engine, args, single) in tables.items():
        local, distributed = creates[f"{table}_local"], creates[table]
        path = f"'/clickhouse/tables/{{shard}}/{{database}}/{table}_local'"
        replicated = f"Replicated{engine}({path}, '{{replica}}'{', ' + args if args else ''})"
        # Only the name, the clause and the engine change: the columns and every
        # clause after the engine (partitioning, sorting key, TTL, settings) stay.
        original_engine = f"ENGINE = {engine}{f'({args})' if args else ''}"
        # A table filled AS SELECT (visitors_per_month) fills from its shard's own rows.
        single_tail = single.split(original_engine, 1)[1].replace(
            "\nFROM events\n", "\nFROM events_local\n"
        )
        assert local.split(f"\nENGINE = {replicated}", 1)[1] == single_tail
        assert column_list(local) == column_list(single) == column_list(distributed)
        key = SHARDING_KEYS[table]
        assert distributed.endswith(
            f"\nENGINE = Distributed('vt', currentDatabase(), '{table}_local'"
            f"{', ' + key if key else ''})"
        )
    views = [s for s in rendered if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 3
    for view in views:
        (target,) = re.findall(r"\bTO (\w+)", view)
        (source,) = re.findall(r"\bFROM (\w+)", view)
        assert target.endswith("_local") and source == "events_local"
        assert SHARDING_KEYS[target.removesuffix("_local")] is None
    alters = [s for s in rendered if s.startswith("ALTER")]
    net = "ADD COLUMN IF NOT EXISTS net Nullable(String) AFTER visitor"
    rows = "ADD COLUMN IF NOT EXISTS rows SimpleAggregateFunction(sum, UInt64)"
    column_alters = [a for a in alters if " MODIFY QUERY" not in a]
    assert column_alters == [
        f"ALTER TABLE events_local {ON} {net}",
        f"ALTER TABLE events {ON} {net}",
        f"ALTER TABLE events_per_minute_local {ON} {rows}",
        f"ALTER TABLE events_per_minute {ON} {rows}",
        f"ALTER TABLE events_per_hour_local {ON} {rows}",
        f"ALTER TABLE events_per_hour {ON} {rows}",
    ]
    # A view's new query reads the local table, like its CREATE; views keep their names.
    new_queries = [a for a in alters if " MODIFY QUERY" in a]
    assert [re.match(r"ALTER TABLE (\w+) ", a).group(1) for a in new_queries] == [  # type: ignore[union-attr]
        "events_per_minute_mv",
        "events_per_hour_mv",
    ]
    assert all(re.findall(r"\bFROM (\w+)", a) == ["events_local"] for a in new_queries)
    assert len(rendered) == len(creates) + len(views) + len(alters)


def test_schema_migrations_is_replicated_to_every_node() -> None:
    ddl = schema_migrations_ddl(SPEC)
    assert ddl.startswith(f"\nCREATE TABLE IF NOT EXISTS schema_migrations {ON}\n")
    assert (
        "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/all/{database}/"
        "schema_migrations', '{shard}-{replica}', applied_at)"
    ) in ddl
    # Everything but the clause and the engine is the single-node DDL.
    assert re.sub(r" ON CLUSTER 'vt'|Replicated|'[^']*', '[^']*', ", "", ddl) == (
        SCHEMA_MIGRATIONS_DDL
    )


# ---- the transformer's own rules ------------------------------------------------------

TABLE = (
    "CREATE TABLE IF NOT EXISTS t\n(\n    k String,\n    x UInt8\n)\nENGINE = MergeTree\nORDER BY k"
)


def test_alter_actions_go_where_they_belong() -> None:
    keys: dict[str, str | None] = {"t": "cityHash64(k)"}
    add, drop, ttl = (
        "ALTER TABLE t ADD COLUMN IF NOT EXISTS y UInt8, COMMENT COLUMN x 'x'",
        "ALTER TABLE t DROP COLUMN IF EXISTS y",
        "ALTER TABLE t MODIFY TTL toDate('2030-01-01')",
    )
    rendered = render([TABLE, add, drop, ttl], keys)
    assert rendered[2:] == [
        f"ALTER TABLE t_local {ON} ADD COLUMN IF NOT EXISTS y UInt8, COMMENT COLUMN x 'x'",
        f"ALTER TABLE t {ON} ADD COLUMN IF NOT EXISTS y UInt8, COMMENT COLUMN x 'x'",
        f"ALTER TABLE t {ON} DROP COLUMN IF EXISTS y",  # the Distributed table first
        f"ALTER TABLE t_local {ON} DROP COLUMN IF EXISTS y",
        f"ALTER TABLE t_local {ON} MODIFY TTL toDate('2030-01-01')",  # storage: local only
    ]


def test_comments_and_strings_do_not_confuse_the_transformer() -> None:
    table = (
        "CREATE TABLE IF NOT EXISTS t\n(\n    k String DEFAULT 'ENGINE = Memory, ON CLUSTER',\n"
        "    x UInt8 -- not ENGINE = Log\n)\nENGINE = ReplacingMergeTree(x)\nORDER BY k\n"
        "SETTINGS index_granularity = 8192"
    )
    local, distributed = render([table], {"t": "cityHash64(k)"})
    assert local == (
        f"CREATE TABLE IF NOT EXISTS t_local {ON}\n(\n    k String DEFAULT 'ENGINE = Memory, "
        "ON CLUSTER',\n    x UInt8 -- not ENGINE = Log\n)\nENGINE = ReplicatedReplacingMergeTree("
        "'/clickhouse/tables/{shard}/{database}/t_local', '{replica}', x)\nORDER BY k\n"
        "SETTINGS index_granularity = 8192"
    )
    assert distributed.startswith(f"CREATE TABLE IF NOT EXISTS t {ON}\n(\n    k String DEFAULT")


VIEW = "CREATE MATERIALIZED VIEW IF NOT EXISTS v TO r AS\nSELECT k, count() AS n FROM t GROUP BY k"
ROLLUP = "CREATE TABLE IF NOT EXISTS r (k String, n UInt64) ENGINE = SummingMergeTree ORDER BY k"
KEYS: dict[str, str | None] = {"t": "cityHash64(k)", "r": None}


@pytest.mark.parametrize(
    ("statements", "keys", "message"),
    [
        (["CREATE TABLE t (k String) ENGINE = MergeTree ORDER BY k"], KEYS, "expected CREATE"),
        (["CREATE TABLE IF NOT EXISTS db.t (k String) ENGINE = MergeTree ORDER BY k"], KEYS,
         "database-qualified"),
        (["CREATE TABLE IF NOT EXISTS `t` (k String) ENGINE = MergeTree ORDER BY k"], KEYS,
         "plain (unquoted)"),
        (["CREATE TABLE IF NOT EXISTS t (k String) ENGINE = Memory"], KEYS,
         "not a MergeTree-family engine"),
        (["CREATE TABLE IF NOT EXISTS t (k String) ENGINE = ReplicatedMergeTree ORDER BY k"],
         KEYS, "already replicated"),
        ([f"CREATE TABLE IF NOT EXISTS t {ON} (k String) ENGINE = MergeTree ORDER BY k"], KEYS,
         "already says ON CLUSTER"),
        (["CREATE TABLE IF NOT EXISTS t (k String CODEC(ZSTD)) ENGINE = MergeTree ORDER BY k"],
         KEYS, "CODEC is not handled"),
        (["CREATE TABLE IF NOT EXISTS t (k String, INDEX i k TYPE bloom_filter) "
          "ENGINE = MergeTree ORDER BY k"], KEYS, "INDEX in the column list"),
        (["CREATE TABLE IF NOT EXISTS t ENGINE = MergeTree ORDER BY k AS SELECT 'a' AS k"], KEYS,
         "column list right after"),
        (["CREATE TABLE IF NOT EXISTS u (k String) ENGINE = MergeTree ORDER BY k"], KEYS,
         "u has no sharding key"),
        ([TABLE, TABLE], KEYS, "already created"),
        ([TABLE, ROLLUP, "CREATE MATERIALIZED VIEW IF NOT EXISTS v AS SELECT k FROM t"], KEYS,
         "must write TO a table"),
        ([TABLE, ROLLUP, VIEW.replace("FROM t", "FROM t JOIN r USING k")], KEYS, "JOIN"),
        ([TABLE, ROLLUP, VIEW.replace("FROM t", "FROM t WHERE k IN (SELECT k FROM r)")], KEYS,
         "one SELECT, one FROM"),
        ([TABLE, ROLLUP, VIEW.replace("FROM t", "FROM t WHERE k IN r")], KEYS,
         "IN r (a table)"),
        ([TABLE, ROLLUP, VIEW.replace("FROM t", "FROM numbers(3)")], KEYS,
         "table function numbers"),
        ([TABLE, ROLLUP, VIEW.replace("TO r AS", "TO r POPULATE AS")], KEYS, "POPULATE"),
        ([TABLE, ROLLUP, VIEW], {"t": "cityHash64(k)", "r": "cityHash64(k)"},
         "sharding key must be None"),
        ([TABLE, ROLLUP], KEYS, "no materialized view writes it"),
        ([TABLE, ROLLUP.replace("ORDER BY k", "ORDER BY k AS SELECT k, count() AS n FROM t "
          "GROUP BY k"), VIEW], {"t": "cityHash64(k)", "r": "cityHash64(k)"},
         "filled AS SELECT on each shard"),
        ([TABLE, ROLLUP.replace("ORDER BY k", "ORDER BY k AS SELECT k FROM t JOIN r USING k")],
         KEYS, "JOIN"),
        ([TABLE, ROLLUP.replace("ORDER BY k", "ORDER BY k AS k")], KEYS, "must be AS SELECT"),
        ([TABLE, ROLLUP, "ALTER TABLE w MODIFY QUERY SELECT k, count() AS n FROM t GROUP BY k"],
         KEYS, "view w is not created by these migrations"),
        ([TABLE, ROLLUP, VIEW, "ALTER TABLE v MODIFY QUERY SELECT k, 1 AS n FROM numbers(2)"],
         KEYS, "table function numbers"),
        (["ALTER TABLE other ADD COLUMN y UInt8"], KEYS, "other is not a MergeTree table"),
        ([TABLE, "ALTER TABLE t DELETE WHERE k = ''"], KEYS, "ALTER action DELETE WHERE"),
        ([TABLE, "ALTER TABLE t ADD COLUMN y UInt8, MODIFY TTL toDate('2030-01-01')"], KEYS,
         "mixes column and storage"),
        (["DROP TABLE IF EXISTS t"], KEYS, "not a statement the cluster transformer handles"),
        (["INSERT INTO t VALUES ('a', 1)"], KEYS, "not a statement"),
        (["SELECT 'unterminated"], KEYS, "unterminated"),
        (["ALTER TABLE t."], KEYS, "database-qualified"),
        (["CREATE TABLE IF NOT EXISTS"], KEYS, "expected a plain (unquoted) table name"),
    ],
)  # fmt: skip
def test_statements_it_does_not_understand_are_refused(
    statements: list[str], keys: dict[str, str | None], message: str
) -> None:
    with pytest.raises(MigrationError, match="0009_test statement") as refused:
        render(statements, keys)
    assert message in str(refused.value)
    assert "cluster 'vt'" in str(refused.value)


def test_mangled_statements_are_refused_never_crash() -> None:
    # Cut pieces out of the real statements: each result renders or is refused
    # with a MigrationError; no IndexError or the like escapes.
    statements = [s for _, ss in single_node() for s in ss]
    rng = random.Random(8)
    refused = 0
    for _ in range(3000):
        statement = rng.choice(statements)
        start = rng.randrange(len(statement))
        end = rng.randrange(start, len(statement) + 1)
        try:
            render_cluster(
                [("0001_x", [*statements[:2], statement[:start] + statement[end:]])], SPEC
            )
        except MigrationError as exc:
            assert "0001_x statement" in str(exc)
            refused += 1
    assert refused > 1000


# ---- settings and the CLI -------------------------------------------------------------


def test_cluster_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().clickhouse.cluster_spec() is None
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_CLUSTER", "")
    assert Settings().clickhouse.cluster_spec() is None  # empty: single node
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_CLUSTER", "{cluster}")
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_REPLICA_PATH", "/ch/{layer}/{shard}/{uuid}")
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_REPLICA_NAME", "{replica}-a")
    spec = Settings().clickhouse.cluster_spec()
    assert spec == ClusterSpec("{cluster}", "/ch/{layer}/{shard}/{uuid}", "{replica}-a")
    local = render_cluster([("0001_x", [TABLE])], spec, {"t": "cityHash64(k)"})
    assert "ReplicatedMergeTree('/ch/{layer}/{shard}/{uuid}', '{replica}-a')" in local[0][0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cluster", "vt'; DROP", "cluster name"),
        ("replica_path", "/clickhouse/tables/{database}/{table}", "needs {shard}"),
        ("replica_path", "/clickhouse/tables/{shard}", "needs {table} or {uuid}"),
        ("replica_path", "clickhouse/{shard}/{table}", "'/' then"),
        ("replica_name", "r1", "needs a macro"),
    ],
)
def test_bad_cluster_settings_are_refused(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ClickHouseSettings(**{field: value})


def test_print_sql_shows_the_ddl_of_the_configured_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    single = runner.invoke(cli, ["migrate", "--print-sql"])
    assert single.exit_code == 0, single.output
    statements = [s for _, ss in single_node() for s in ss]
    assert all(f"\n{s};\n" in single.output for s in statements)
    assert "ON CLUSTER" not in single.output
    assert not (tmp_path / "data").exists()  # connects to nothing, creates nothing
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_CLUSTER", "vt")
    clustered = runner.invoke(cli, ["migrate", "--print-sql"])
    assert clustered.exit_code == 0, clustered.output
    assert clustered.output.startswith("-- viraltrace ClickHouse migrations, cluster 'vt'\n")
    migrations = load_migrations(MIGRATIONS_DIR)
    planned = plan(migrations, settings_ttl_days=TTL_DAYS, cluster=SPEC)
    for m in migrations:
        for index, statement in enumerate(planned[m.version], start=1):
            assert f"-- {m.name} statement {index} " in clustered.output
            assert f"\n{statement};\n" in clustered.output
    # A statement the transformer refuses stops it with the file and statement named.
    migrations_dir = tmp_path / "migrations"
    (migrations_dir / "clickhouse").mkdir(parents=True)
    (migrations_dir / "clickhouse" / "0001_kv.sql").write_text(
        "CREATE TABLE IF NOT EXISTS kv (k String) ENGINE = Memory;\n"
    )
    (migrations_dir / "max_migration.txt").write_text("0001_kv\n")
    monkeypatch.setenv("VIRALTRACE_CLICKHOUSE_MIGRATIONS_DIR", str(migrations_dir / "clickhouse"))
    refused = runner.invoke(cli, ["migrate", "--print-sql"])
    assert refused.exit_code == 1
    assert "0001_kv statement 1" in refused.output and "Memory" in refused.output


# ---- the real engine --------------------------------------------------------------------


@pytest.mark.clickhouse
def test_cluster_mode_refuses_a_database_migrated_on_one_node(ch: ClickHouse) -> None:
    migrate(ch, MIGRATIONS_DIR, settings_ttl_days=TTL_DAYS)
    with pytest.raises(MigrationError, match="migrated in single-node mode"):
        migrate(ch, MIGRATIONS_DIR, settings_ttl_days=TTL_DAYS, cluster=SPEC)
    assert migrate(ch, MIGRATIONS_DIR, settings_ttl_days=TTL_DAYS) == []


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("clusterprobe")
    done = subprocess.run(
        [sys.executable, "-m", "tests.clusterprobe", str(workdir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.clickhouse
def test_cluster_ddl_on_the_real_engine(probe: dict[str, Any]) -> None:
    statements = probe["statements"]
    # Every statement, ON CLUSTER included, parses; every one but the ALTERs ran.
    assert all(" ON CLUSTER vt " in s["formatted"] for s in statements)
    alters = [s for s in statements if s["formatted"].startswith("ALTER")]
    assert len(alters) == 8  # 0005's net column, 0007's rows columns and view queries
    assert [s["formatted"].split()[0] for s in statements if not s["executed"]] == ["ALTER"] * 8
    tables = {name: (engine, full, create) for name, engine, full, create in probe["tables"]}
    replicas = {table: (path, replica) for table, path, replica in probe["replicas"]}
    columns = dict(probe["columns"])
    for table, (engine, _, _) in merge_tree_tables().items():
        local = f"{table}_local"
        assert tables[local][0] == f"Replicated{engine}"
        assert replicas[local] == (f"/clickhouse/tables/01/vtdb/{local}", "r1")
        key = SHARDING_KEYS[table]
        assert tables[table][0] == "Distributed"
        assert tables[table][1] == (
            f"Distributed('vt', 'vtdb', '{local}'{', ' + key if key else ''})"
        )
        assert columns[table] == columns[local]
    assert tables["schema_migrations"][0] == "ReplicatedReplacingMergeTree"
    assert replicas["schema_migrations"] == (
        "/clickhouse/tables/all/vtdb/schema_migrations",
        "01-r1",
    )
    views = {
        name: create for name, (engine, _, create) in tables.items() if engine == "MaterializedView"
    }
    assert set(views) == {"events_per_minute_mv", "events_per_hour_mv", "visitors_per_month_mv"}
    for name, create in views.items():
        target = name.removesuffix("_mv")
        assert f" TO vtdb.{target}_local " in create and " FROM vtdb.events_local " in create
    assert Counter(e for e, _, _ in tables.values()) == Counter(
        {"Distributed": len(SHARDING_KEYS), "MaterializedView": 3}
    ) + Counter(f"Replicated{e}" for e, _, _ in merge_tree_tables().values()) + Counter(
        {"ReplicatedReplacingMergeTree": 1}
    )
    # Every query the app and the consumers run on these tables runs over the
    # Distributed tables (FINAL, ARRAY JOIN, IN subqueries, -Merge aggregates).
    queries = {q["name"]: q["error"] for q in probe["queries"]}
    assert {
        "app.storage.query._SUMMARY_SQL",
        "app.storage.query._CASCADES_SQL",
        "app.storage.cascades._TOTALS_SQL",
        "app.storage.alerts._ALERTS_SQL",
        "consumers.cascades.pipeline._NODES_SQL",
        "consumers.alerts.pipeline._WINDOWS_SQL",
        "consumers.alerts.explain._BRANCHES_SQL",
    } <= set(queries)
    # A query that reads a column only an ALTER adds (0007's rollup `rows`) fails
    # here for that reason alone: the ALTERs cannot run on chdb's read-only replicas.
    altered = {q["name"]: q["reads_altered"] for q in probe["queries"] if q["reads_altered"]}
    assert "app.storage.query._SUMMARY_SQL" in altered
    for name, columns in altered.items():
        error = queries[name]
        assert error is None or any(f"identifier `{c}`" in error for c in columns), (name, error)
    assert {name: error for name, error in queries.items() if error and name not in altered} == {}
    # The single-node runner refuses a database migrated in cluster mode.
    assert "migrated in cluster mode" in probe["single_mode_refusal"]

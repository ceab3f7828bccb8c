"""Runs the cluster-mode DDL on the real engine (chdb) in its own process; prints JSON.

``python -m tests.clusterprobe WORKDIR`` (tests/test_migrate_cluster.py runs it).
Its own process because chdb hosts one engine per process and this one needs
a config file: ClickHouse's in-memory test Keeper (``<zookeeper><implementation>
testkeeper``), the macros ``{shard}``/``{replica}`` and a cluster ``vt`` whose
one shard is this engine. What chdb can and cannot do with that (checked on
chdb-core 26.9):

- CREATE of ``Replicated*MergeTree`` tables works (engine arguments, macros and
  Keeper paths are checked and registered), but the replicas stay read-only:
  activating one needs the interserver address that only a server sets. So no
  INSERT and no ALTER on them; the ALTERs are parsed only.
- ``Distributed`` tables over the local shard work, reads included.
- ``ON CLUSTER`` is refused ("Replicated DDL queries are disabled": no DDL
  worker), so every statement is parsed WITH it (``formatQuerySingleLine``) and
  executed without it.

The JSON: ``statements`` (name, index, formatted, executed), ``tables``,
``replicas``, ``columns``, ``queries`` (every SELECT constant of app/ and
consumers/ that reads these tables, run over the Distributed tables) and
``single_mode_refusal`` (what ``migrate`` in single-node mode says here).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import chdb.state.sqlitelike as chdb_sqlite

from app.settings import ClickHouseSettings
from app.storage.cluster import SHARDING_KEYS, schema_migrations_ddl
from app.storage.migrate import MIGRATIONS_DIR, MigrationError, load_migrations, migrate, plan

REPO = Path(__file__).resolve().parents[1]
CLUSTER = "vt"
DATABASE = "vtdb"
CONFIG = f"""<clickhouse>
  <zookeeper><implementation>testkeeper</implementation></zookeeper>
  <macros><shard>01</shard><replica>r1</replica></macros>
  <tcp_port>9000</tcp_port>
  <remote_servers>
    <{CLUSTER}>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>localhost</host><port>9000</port></replica>
      </shard>
    </{CLUSTER}>
  </remote_servers>
</clickhouse>
"""
_KEEP_OPEN: list[Any] = []
_READS = re.compile(r"\bFROM\s+(" + "|".join(sorted(SHARDING_KEYS)) + r")\b")
_PARAMETER = re.compile(r"\{(\w+):([^{}]+)\}")


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Identifier parameters by name: the column they stand for in the query that has them.
_IDENTIFIERS = {"column": "top_descendants", "key": "size"}


def sample_value(type_: str, name: str = "") -> str:
    """A parameter value of ``type_`` in the text form chdb binds."""
    if type_ == "Identifier":
        return _IDENTIFIERS[name]  # a KeyError names a new Identifier parameter to add
    if type_.startswith("Array("):
        return "[]"
    if type_.startswith("DateTime"):
        return "2026-01-01 00:00:00"
    if type_ == "String":
        return "campaign"
    if re.fullmatch(r"U?Int\d+", type_):
        return "1"
    if type_ == "Bool":
        return "true"
    if re.fullmatch(r"Float\d+", type_):
        return "1.5"
    raise ValueError(f"no sample value for {type_}")


def read_queries() -> list[tuple[str, str]]:
    """(module.NAME, sql) of every module-level SELECT in app/ and consumers/ that
    reads a table the migrations shard."""
    found: list[tuple[str, str]] = []
    for package in ("app", "consumers"):
        for path in sorted((REPO / package).rglob("*.py")):
            if not _READS.search(path.read_text(encoding="utf-8")):
                continue
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            module = importlib.import_module(dotted)
            for name, value in sorted(vars(module).items()):
                if name.startswith("__") or not isinstance(value, str):
                    continue  # docstrings hold examples, not queries
                if "SELECT" in value and _READS.search(value):
                    found.append((f"{dotted}.{name}", value))
    return found


class Rows:
    """What ``migrate`` needs of a ClickHouse client, on this chdb connection."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def query_rows(self, sql: str) -> list[tuple[Any, ...]]:
        text = str(self.connection.query(sql, "JSONCompactEachRow"))
        return [tuple(json.loads(line)) for line in text.splitlines() if line]


def main(workdir: Path) -> dict[str, Any]:
    (workdir / "config.xml").write_text(CONFIG)
    connection = chdb_sqlite.connect(f"file:{workdir / 'data'}?config-file={workdir}/config.xml")
    # Closing the last connection shuts the engine down, which hangs with a Keeper
    # (see __main__): keep it open until the process exits.
    _KEEP_OPEN.append(connection)
    connection.query(f"CREATE DATABASE {DATABASE}")
    connection.query(f"USE {DATABASE}")
    rows = Rows(connection)
    spec = ClickHouseSettings(cluster=CLUSTER).cluster_spec()
    migrations = load_migrations(MIGRATIONS_DIR)
    planned = plan(migrations, settings_ttl_days=400, cluster=spec)
    batches = [("bookkeeping", [schema_migrations_ddl(spec)])]
    batches += [(m.name, planned[m.version]) for m in migrations]
    on_cluster = f" ON CLUSTER '{CLUSTER}'"
    statements = []
    for name, batch in batches:
        for index, statement in enumerate(batch, start=1):
            (formatted,) = rows.query_rows(f"SELECT formatQuerySingleLine({literal(statement)})")[0]
            # ALTERs need an active replica (see the module docstring): parsed only.
            executed = not statement.startswith("ALTER")
            if executed:
                assert statement.count(on_cluster) == 1, statement
                connection.query(statement.replace(on_cluster, ""))
            statements.append(
                {"name": name, "index": index, "formatted": formatted, "executed": executed}
            )
    where = f"database = '{DATABASE}'"
    tables = rows.query_rows(
        f"SELECT name, engine, engine_full, create_table_query FROM system.tables WHERE {where}"
    )
    replicas = rows.query_rows(
        f"SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE {where}"
    )
    columns = rows.query_rows(
        "SELECT table, groupArray((name, type, default_kind, default_expression)) "
        f"FROM (SELECT * FROM system.columns WHERE {where} ORDER BY position) GROUP BY table"
    )
    # Columns only the (unexecutable here) ALTERs add: a query reading one cannot
    # run on these tables; the test checks that this is the only reason it fails.
    alter_added = {
        column
        for statement in statements
        if not statement["executed"]
        for column in re.findall(r"ADD COLUMN IF NOT EXISTS `?(\w+)", statement["formatted"])
    }
    queries = []
    for label, sql in read_queries():
        parameters = {n: sample_value(t, n) for n, t in _PARAMETER.findall(sql)}
        reads_altered = sorted(c for c in alter_added if re.search(rf"\b{c}\b", sql))
        try:
            connection.query(sql, "JSONCompactEachRow", params=parameters)
            error = None
        except Exception as exc:  # the test shows which query failed and why
            error = str(exc)[:500]
        queries.append({"name": label, "error": error, "reads_altered": reads_altered})
    try:
        migrate(rows, settings_ttl_days=400)  # type: ignore[arg-type]
        refusal = None
    except MigrationError as exc:
        refusal = str(exc)
    return {
        "statements": statements,
        "tables": tables,
        "replicas": replicas,
        "columns": columns,
        "queries": queries,
        "single_mode_refusal": refusal,
    }


if __name__ == "__main__":
    # chdb with a Keeper does not shut down cleanly (the read-only replicas keep
    # retrying), so leave without running its destructors, whatever happened.
    try:
        print(json.dumps(main(Path(sys.argv[1]))))
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

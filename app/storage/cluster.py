"""Cluster mode of the ClickHouse migrations: the same files, rendered for a cluster.

With ``clickhouse.cluster`` set (``VIRALTRACE_CLICKHOUSE_CLUSTER``), the runner
(``app/storage/migrate.py``) does not run the statements of
``migrations/clickhouse`` as written: ``render_cluster`` turns each one into
its cluster form, and the single-node text (and so every file's checksum)
stays as it is. docs/clickhouse-cluster.md has the rendered example and what
the servers must provide.

What the transformer does, statement by statement (after ``{events_ttl_days}``
is substituted):

- ``CREATE TABLE IF NOT EXISTS t (...) ENGINE = <X>MergeTree[(args)] ...``
  becomes ``t_local ON CLUSTER '<c>'`` with ``Replicated<X>MergeTree('<path>',
  '<replica>'[, args])`` and the rest of the statement unchanged, followed by
  ``CREATE TABLE IF NOT EXISTS t ON CLUSTER '<c>' (same columns) ENGINE =
  Distributed('<c>', currentDatabase(), 't_local'[, key])``, the key taken
  from ``SHARDING_KEYS``. Readers and writers keep using ``t``.
- ``CREATE MATERIALIZED VIEW IF NOT EXISTS v TO t AS SELECT ... FROM s ...``
  gets ``ON CLUSTER`` and reads ``s_local``, writes ``t_local``: each shard
  rolls up the rows it holds.
- ``ALTER TABLE t <actions>`` runs ``ON CLUSTER`` on ``t_local``; column
  actions (ADD/DROP/MODIFY/RENAME/COMMENT COLUMN) also on ``t``, whose columns
  must match.

Anything else (another engine, a qualified or quoted name, a view without
``TO``, a SELECT with a join, a subquery or a second table, a statement that
already says ``ON CLUSTER``, ...) is refused with a ``MigrationError`` naming
the file and the statement, never passed through: a statement the
transformer does not understand would otherwise run on one node only, or
create an unreplicated table. sqlglot (30.x) was considered and rejected: it
parses these files but rewrites what it prints (``toStartOfHour(ts)`` in a
sorting key becomes ``dateTrunc('HOUR', ts)``, ``INTERVAL 400 DAY`` becomes
``INTERVAL '400' DAY``), so the cluster DDL would no longer be the reviewed
text. This module splices the original text instead and changes only the
table names, the engine and the ``ON CLUSTER`` clauses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.storage.migrate import SCHEMA_MIGRATIONS_DDL, MigrationError

LOCAL_SUFFIX = "_local"

# The Distributed table's sharding key for each MergeTree table the migrations
# create (docs/clickhouse-cluster.md says why each one). Keys are deterministic:
# a retried insert (same dedup token) then splits into the same per-shard blocks,
# which each shard's replicated deduplication drops. None means "no key": the
# table is written only by materialized views on each shard's local tables, so
# its rows sit where their source rows sit and no function of its own columns
# says where; declaring one anyway would make ClickHouse's sharding-key
# optimizations (optimize_distributed_group_by_sharding_key,
# optimize_skip_unused_shards) return wrong answers. Without a key a direct
# INSERT into it fails on a multi-shard cluster, as it should.
SHARDING_KEYS: Mapping[str, str | None] = {
    # Copies of one event_id land on one shard, where ReplacingMergeTree (FINAL)
    # folds them; a viral campaign's events spread over every shard.
    "events": "cityHash64(event_id)",
    # Where the refused message was read: unique per message, stable on retry.
    "events_dlq": "cityHash64(topic, partition, offset)",
    "events_per_minute": None,  # events_per_minute_mv on each shard's events_local
    "events_per_hour": None,  # events_per_hour_mv
    "visitors_per_month": None,  # filled from events, then visitors_per_month_mv
    # One cascade per shard: FINAL per shard is exact, and a restore by root
    # reads one shard.
    "cascade_nodes": "cityHash64(root)",
    "cascade_touches": "cityHash64(root)",
    "cascade_stats": "cityHash64(root)",
    # One campaign's buzz and alerts per shard (replayed rows fold by FINAL there).
    "buzz_items": "cityHash64(campaign)",
    "buzz_windows": "cityHash64(campaign)",
    "alerts": "cityHash64(campaign)",
}

MERGE_TREE_ENGINES = frozenset(
    {
        "MergeTree",
        "ReplacingMergeTree",
        "SummingMergeTree",
        "AggregatingMergeTree",
        "CollapsingMergeTree",
        "VersionedCollapsingMergeTree",
        "GraphiteMergeTree",
        "CoalescingMergeTree",
    }
)
# ALTER actions by their first two words: the ones that change columns must run on
# the Distributed table too; the others concern storage and run on the local one.
_COLUMN_ACTIONS = frozenset(
    {("ADD", "COLUMN"), ("DROP", "COLUMN"), ("MODIFY", "COLUMN"), ("RENAME", "COLUMN")}
    | {("COMMENT", "COLUMN")}
)
_STORAGE_ACTIONS = frozenset(
    {("MODIFY", "TTL"), ("REMOVE", "TTL"), ("MATERIALIZE", "TTL")}
    | {("MODIFY", "SETTING"), ("RESET", "SETTING"), ("MATERIALIZE", "COLUMN")}
    | {("ADD", "INDEX"), ("DROP", "INDEX"), ("MATERIALIZE", "INDEX"), ("CLEAR", "INDEX")}
    | {("ADD", "PROJECTION"), ("DROP", "PROJECTION"), ("MATERIALIZE", "PROJECTION")}
)
# Column-list entries and column clauses that belong to the storage, not to a
# Distributed table with the same columns: not handled, so refused.
_TABLE_ELEMENTS = frozenset({"INDEX", "PROJECTION", "CONSTRAINT", "PRIMARY"})
_STORAGE_COLUMN_CLAUSES = frozenset(
    {"CODEC", "TTL", "STATISTICS", "MATERIALIZED", "ALIAS", "EPHEMERAL"}
)

_CLUSTER_NAME = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*|\{[a-z_][a-z0-9_]*\})$")
_PATH = re.compile(r"^/[A-Za-z0-9_/{}.-]*$")
_REPLICA_NAME = re.compile(r"^[A-Za-z0-9_{}.-]+$")


def check_cluster_name(value: str) -> str:
    """``value`` if it can be a cluster name in the DDL; ``ValueError`` otherwise."""
    if not _CLUSTER_NAME.match(value):
        raise ValueError(
            f"cluster name {value!r}: letters, digits, '_', '.', '-', or one macro like "
            "'{cluster}'"
        )
    return value


def check_replica_path(value: str) -> str:
    """``value`` if it is a usable Keeper path template; ``ValueError`` otherwise.

    It must hold ``{shard}`` (each shard its own replication group) and
    ``{table}`` (replaced with the local table's name) or ``{uuid}``.
    """
    if not _PATH.match(value):
        raise ValueError(f"replica path {value!r}: '/' then letters, digits, '_/{{}}.-'")
    if "{shard}" not in value:
        raise ValueError(f"replica path {value!r} needs {{shard}}: shards would share replicas")
    if "{table}" not in value and "{uuid}" not in value:
        raise ValueError(f"replica path {value!r} needs {{table}} or {{uuid}}")
    return value


def check_replica_name(value: str) -> str:
    """``value`` if it is a usable replica name; ``ValueError`` otherwise."""
    if not _REPLICA_NAME.match(value) or "{" not in value:
        raise ValueError(
            f"replica name {value!r}: needs a macro such as '{{replica}}' (every node runs the "
            "same DDL) and only letters, digits, '_{}.-'"
        )
    return value


@dataclass(frozen=True)
class ClusterSpec:
    """Where the cluster DDL points: the cluster and the replication macros.

    ``replica_path`` is the Keeper path template of every replicated table;
    ``{table}`` is replaced by the local table's name here, every other macro
    (``{shard}``, ``{database}``, ...) is left to ClickHouse. Raises
    ``MigrationError`` for a value the checks above refuse.
    """

    name: str
    replica_path: str
    replica_name: str

    def __post_init__(self) -> None:
        try:
            check_cluster_name(self.name)
            check_replica_path(self.replica_path)
            check_replica_name(self.replica_name)
        except ValueError as exc:
            raise MigrationError(str(exc)) from None

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER '{self.name}'"

    def replicated_engine(self, engine: str, table: str, args: str) -> str:
        path = self.replica_path.replace("{table}", table)
        rest = f", {args}" if args else ""
        return f"Replicated{engine}('{path}', '{self.replica_name}'{rest})"


def schema_migrations_ddl(spec: ClusterSpec | None) -> str:
    """The bookkeeping table's DDL: as it always was on one node; on a cluster,
    one ``ReplicatedReplacingMergeTree`` replicated to EVERY node (its Keeper
    path has no shard), so the runner sees the same rows whichever node it
    reaches. It has no ``_local``/Distributed pair: every node holds all rows.
    """
    if spec is None:
        return SCHEMA_MIGRATIONS_DDL
    path = spec.replica_path.replace("{shard}", "all").replace("{table}", "schema_migrations")
    replica = f"{{shard}}-{spec.replica_name}"  # unique across shards, not only within one
    ddl = _replace_once(
        SCHEMA_MIGRATIONS_DDL,
        "CREATE TABLE IF NOT EXISTS schema_migrations\n",
        f"CREATE TABLE IF NOT EXISTS schema_migrations {spec.on_cluster}\n",
    )
    return _replace_once(
        ddl,
        "ENGINE = ReplacingMergeTree(applied_at)",
        f"ENGINE = ReplicatedReplacingMergeTree('{path}', '{replica}', applied_at)",
    )


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"expected {old!r} once in the bookkeeping DDL")
    return text.replace(old, new)


# ---- tokens ------------------------------------------------------------------


class Token(NamedTuple):
    kind: str  # word, string, quoted, number, punct
    text: str
    start: int
    end: int

    @property
    def upper(self) -> str:
        return self.text.upper() if self.kind == "word" else ""


_LEXER = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<string>'(?:[^'\\]|\\.|'')*')
  | (?P<quoted>"(?:[^"\\]|\\.|"")*"|`(?:[^`\\]|\\.|``)*`)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>[0-9][A-Za-z0-9_.]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(statement: str) -> list[Token]:
    """The significant tokens of ``statement`` (no blanks or comments), with offsets.

    Raises ``ValueError`` for an unterminated quote or comment.
    """
    tokens: list[Token] = []
    for match in _LEXER.finditer(statement):
        kind = match.lastgroup or "punct"
        text = match.group()
        if kind in ("space", "comment"):
            continue
        if kind == "punct" and (text in "'\"`" or statement.startswith("/*", match.start())):
            raise ValueError(f"unterminated {text!r} at offset {match.start()}")
        tokens.append(Token(kind, text, match.start(), match.end()))
    return tokens


def _closing(tokens: Sequence[Token], open_at: int) -> int:
    """Index of the ``)`` that closes the ``(`` at ``open_at``."""
    depth = 0
    for index in range(open_at, len(tokens)):
        if tokens[index].text == "(":
            depth += 1
        elif tokens[index].text == ")":
            depth -= 1
            if depth == 0:
                return index
    raise ValueError("unbalanced parentheses")


def _top_level(tokens: Sequence[Token]) -> Iterator[tuple[int, Token]]:
    """(index, token) of the tokens outside any parentheses."""
    depth = 0
    for index, token in enumerate(tokens):
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        elif depth == 0:
            yield index, token


def _split_top_level(tokens: Sequence[Token]) -> list[list[Token]]:
    """``tokens`` split at the commas outside parentheses."""
    parts: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
        if depth == 0 and token.text == ",":
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _expect_words(tokens: Sequence[Token], words: str) -> None:
    expected = words.split()
    found = [t.upper for t in tokens[: len(expected)]]
    if found != expected:
        raise ValueError(f"expected {words}")


def _plain_name(tokens: Sequence[Token], index: int, what: str) -> Token:
    """The unqualified, unquoted name at ``index``."""
    if index >= len(tokens) or tokens[index].kind != "word":
        raise ValueError(f"expected a plain (unquoted) {what} name")
    if index + 1 < len(tokens) and tokens[index + 1].text == ".":
        raise ValueError(
            f"{what} {tokens[index].text}.(...): database-qualified names are not handled "
            "(the cluster DDL uses the current database)"
        )
    return tokens[index]


# ---- the transformer ---------------------------------------------------------


class _Renderer:
    """Renders statements in migration order, remembering which tables it sharded."""

    def __init__(self, spec: ClusterSpec, sharding_keys: Mapping[str, str | None]) -> None:
        self.spec = spec
        self.sharding_keys = sharding_keys
        self.tables: dict[str, str | None] = {}  # sharded table -> its key
        self.view_targets: set[str] = set()
        self.views: dict[str, str] = {}  # materialized view -> its target table

    def render(self, statement: str) -> list[str]:
        tokens = tokenize(statement)
        words = [t.upper for t in tokens[:3]]
        if any(
            a.upper == "ON" and b.upper == "CLUSTER"
            for a, b in zip(tokens, tokens[1:], strict=False)
        ):
            raise ValueError("already says ON CLUSTER: migrations are written for one node")
        if words[:2] == ["CREATE", "TABLE"]:
            return self._create_table(statement, tokens)
        if words == ["CREATE", "MATERIALIZED", "VIEW"]:
            return [self._create_view(statement, tokens)]
        if words[:2] == ["ALTER", "TABLE"]:
            if [t.upper for t in tokens[3:5]] == ["MODIFY", "QUERY"]:
                return self._modify_query(statement, tokens)
            return self._alter(statement, tokens)
        raise ValueError(
            "not a statement the cluster transformer handles (CREATE TABLE IF NOT EXISTS with a "
            "MergeTree-family engine, CREATE MATERIALIZED VIEW IF NOT EXISTS ... TO ..., "
            "ALTER TABLE)"
        )

    def _create_table(self, statement: str, tokens: list[Token]) -> list[str]:
        _expect_words(tokens, "CREATE TABLE IF NOT EXISTS")
        name = _plain_name(tokens, 5, "table")
        if len(tokens) < 7 or tokens[6].text != "(":
            raise ValueError("expected the column list right after the table name")
        local = name.text + LOCAL_SUFFIX
        if name.text in self.tables or local in self.tables:
            raise ValueError(f"table {name.text} is already created by an earlier statement")
        columns_end = _closing(tokens, 6)
        self._check_columns(tokens[7:columns_end])
        rest = tokens[columns_end + 1 :]
        engine_at = next((i for i, t in _top_level(rest) if t.upper == "ENGINE"), None)
        if engine_at is None or engine_at + 2 >= len(rest) or rest[engine_at + 1].text != "=":
            raise ValueError("expected ENGINE = <engine> after the column list")
        fill_at = None
        for index, token in _top_level(rest):
            if token.upper in ("EMPTY", "CLONE"):
                raise ValueError(f"{token.text} after the column list is not handled")
            if token.upper == "AS":
                if index + 1 >= len(rest) or rest[index + 1].upper != "SELECT":
                    raise ValueError("AS after the column list must be AS SELECT")
                fill_at = index
                break
        engine = rest[engine_at + 2]
        if engine.text.startswith(("Replicated", "Shared")):
            raise ValueError(f"engine {engine.text} is already replicated")
        if engine.kind != "word" or engine.text not in MERGE_TREE_ENGINES:
            raise ValueError(
                f"engine {engine.text} is not a MergeTree-family engine; the cluster "
                "transformer only replicates those"
            )
        engine_end, args = engine.end, ""
        if engine_at + 3 < len(rest) and rest[engine_at + 3].text == "(":
            close = _closing(rest, engine_at + 3)
            engine_end = rest[close].end
            args = statement[rest[engine_at + 3].end : rest[close].start].strip()
        if name.text not in self.sharding_keys:
            raise ValueError(
                f"table {name.text} has no sharding key: declare one (or None for a table "
                "written only by materialized views) in app/storage/cluster.py SHARDING_KEYS"
            )
        key = self.sharding_keys[name.text]
        on = self.spec.on_cluster
        tail = statement[engine_end:]
        if fill_at is not None:
            # Filled from what a sharded table already holds: each node fills its
            # local table from its own local rows, so (as for a view's target) the
            # rows sit where their source rows sit and the table can have no key.
            if key is not None:
                raise ValueError(
                    f"table {name.text} is filled AS SELECT on each shard, so its sharding key "
                    "must be None in SHARDING_KEYS (its rows sit where their source rows sit)"
                )
            source, source_local = self._one_source(rest[fill_at + 1 :])
            tail = f"{statement[engine_end : source.start]}{source_local}{statement[source.end :]}"
        self.tables[name.text] = key
        local_ddl = (
            f"{statement[: name.end]}{LOCAL_SUFFIX} {on}{statement[name.end : engine.start]}"
            f"{self.spec.replicated_engine(engine.text, local, args)}{tail}"
        )
        columns = statement[tokens[6].start : tokens[columns_end].end]
        sharding = f", {key}" if key is not None else ""
        distributed_ddl = (
            f"CREATE TABLE IF NOT EXISTS {name.text} {on}\n{columns}\n"
            f"ENGINE = Distributed('{self.spec.name}', currentDatabase(), '{local}'{sharding})"
        )
        return [local_ddl, distributed_ddl]

    @staticmethod
    def _check_columns(tokens: list[Token]) -> None:
        for entry in _split_top_level(tokens):
            if not entry:
                raise ValueError("empty entry in the column list")
            if entry[0].upper in _TABLE_ELEMENTS:
                raise ValueError(f"{entry[0].text} in the column list is not handled")
            for _, token in _top_level(entry):
                if token.upper in _STORAGE_COLUMN_CLAUSES:
                    raise ValueError(
                        f"column {entry[0].text}: {token.text} is not handled (a Distributed "
                        "table copies the column list)"
                    )

    def _sharded(self, token: Token, what: str) -> str:
        if token.text not in self.tables:
            raise ValueError(
                f"{what} {token.text} is not a MergeTree table created by these migrations"
            )
        return token.text + LOCAL_SUFFIX

    def _create_view(self, statement: str, tokens: list[Token]) -> str:
        _expect_words(tokens, "CREATE MATERIALIZED VIEW IF NOT EXISTS")
        view = _plain_name(tokens, 6, "view")
        if len(tokens) < 11 or tokens[7].upper != "TO":
            raise ValueError("a materialized view must write TO a table (no inner engine)")
        target = _plain_name(tokens, 8, "target table")
        target_local = self._sharded(target, "target table")
        if self.tables[target.text] is not None:
            raise ValueError(
                f"target table {target.text} is fed by a view on each shard, so its sharding key "
                "must be None in SHARDING_KEYS (its rows sit where their source rows sit)"
            )
        if tokens[9].upper != "AS" or tokens[10].upper != "SELECT":
            raise ValueError("expected AS SELECT after the target table (POPULATE is not handled)")
        source, source_local = self._one_source(tokens[10:])
        self.view_targets.add(target.text)
        self.views[view.text] = target.text
        return (
            f"{statement[: view.end]} {self.spec.on_cluster}{statement[view.end : target.start]}"
            f"{target_local}{statement[target.end : source.start]}{source_local}"
            f"{statement[source.end :]}"
        )

    def _one_source(self, select: list[Token]) -> tuple[Token, str]:
        """The one sharded table a view's (or a filled table's) SELECT reads, and
        its local name; ``ValueError`` for anything that reads more or elsewhere."""
        uppers = [t.upper for t in select]
        for word in ("JOIN", "UNION", "INTERSECT", "EXCEPT", "WITH"):
            if word in uppers:
                raise ValueError(f"{word} in a view's SELECT is not handled")
        if uppers.count("SELECT") != 1 or uppers.count("FROM") != 1:
            raise ValueError("a view's SELECT must read one table: one SELECT, one FROM")
        for index, token in enumerate(select[:-1]):
            if token.upper == "IN" and select[index + 1].kind == "word":
                raise ValueError(f"IN {select[index + 1].text} (a table) is not handled")
        from_at = uppers.index("FROM")
        source = _plain_name(select, from_at + 1, "source table")
        if from_at + 2 < len(select) and select[from_at + 2].text == "(":
            raise ValueError(f"table function {source.text}(...) is not handled")
        return source, self._sharded(source, "source table")

    def _modify_query(self, statement: str, tokens: list[Token]) -> list[str]:
        """``ALTER TABLE <view> MODIFY QUERY SELECT ...``: on every node, reading
        the source's local table, like the view's CREATE."""
        view = _plain_name(tokens, 2, "view")
        if view.text not in self.views:
            raise ValueError(f"view {view.text} is not created by these migrations")
        source, source_local = self._one_source(tokens[5:])
        return [
            f"{statement[: view.end]} {self.spec.on_cluster}{statement[view.end : source.start]}"
            f"{source_local}{statement[source.end :]}"
        ]

    def _alter(self, statement: str, tokens: list[Token]) -> list[str]:
        name = _plain_name(tokens, 2, "table")
        self._sharded(name, "table")
        actions = _split_top_level(tokens[3:])
        kinds: set[str] = set()
        for action in actions:
            head = tuple(t.upper for t in action[:2])
            if head in _COLUMN_ACTIONS:
                kinds.add("column")
            elif head in _STORAGE_ACTIONS:
                kinds.add("storage")
            else:
                raise ValueError(
                    f"ALTER action {' '.join(t.text for t in action[:2]) or '(none)'} is not "
                    "handled"
                )
        if len(kinds) != 1:
            raise ValueError("mixes column and storage actions: write two ALTER statements")
        on = self.spec.on_cluster
        local = f"{statement[: name.end]}{LOCAL_SUFFIX} {on}{statement[name.end :]}"
        if kinds == {"storage"}:
            return [local]
        distributed = f"{statement[: name.end]} {on}{statement[name.end :]}"
        # A dropped column leaves the Distributed table first, so that no insert
        # through it names a column its shards no longer have; added ones come last.
        drops = any(tuple(t.upper for t in action[:2]) == ("DROP", "COLUMN") for action in actions)
        return [distributed, local] if drops else [local, distributed]


def render_cluster(
    migrations: Sequence[tuple[str, Sequence[str]]],
    spec: ClusterSpec,
    sharding_keys: Mapping[str, str | None] = SHARDING_KEYS,
) -> list[list[str]]:
    """The cluster DDL of each migration, in order.

    ``migrations`` is every migration (applied ones too: a later file may alter
    an earlier table) as ``(name, statements)``, the statements split and
    substituted. Pure; raises ``MigrationError`` naming the file and the
    statement it cannot render.
    """
    renderer = _Renderer(spec, sharding_keys)
    rendered: list[list[str]] = []
    created_by: dict[str, str] = {}
    for name, statements in migrations:
        out: list[str] = []
        for index, statement in enumerate(statements, start=1):
            first_line = statement.strip().splitlines()[0] if statement.strip() else ""
            where = f"{name} statement {index} ({first_line[:80]!r})"
            try:
                out.extend(renderer.render(statement))
            except ValueError as exc:
                raise MigrationError(
                    f"{where} cannot be rendered for cluster {spec.name!r}: {exc}"
                ) from None
            created_by.update((t, where) for t in renderer.tables if t not in created_by)
        rendered.append(out)
    for table, key in renderer.tables.items():
        if key is None and table not in renderer.view_targets:
            raise MigrationError(
                f"{created_by[table]} cannot be rendered for cluster {spec.name!r}: table "
                f"{table} has no sharding key, but no materialized view writes it: give it a "
                "key in SHARDING_KEYS"
            )
    return rendered

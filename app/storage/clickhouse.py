"""A small client layer over clickhouse-connect: one class, one error type.

``ClickHouse(dsn)`` reaches a server or cluster through ``http(s)://user:pass@host:port/db``
or the in-process engine (chdb) through ``chdb:///abs/path``; the code and the SQL
are the same for both. The sync methods (``command``, ``query_rows``, ``insert``)
BLOCK the calling thread. The async ones (``acommand``, ``aquery_rows``,
``ainsert``) run the same sync call on ONE dedicated worker thread per
``ClickHouse`` (chdb has no async client and hosts one engine per process), so
an event loop never waits on ClickHouse. Cancelling an awaiting task does not
cancel the call already running on the worker: an insert may still land, which
is why writers pass a ``dedup_token`` and retry with the same one.

Every failure surfaces as ``StorageError``. ``retriable`` is True for transport
failures (refused, reset, timed out), HTTP 429/5xx answers without a ClickHouse
error code, and the server errors listed in ``RETRIABLE_CODES`` (timeouts,
overload, too many parts, Keeper); False for everything else (SQL errors, bad
data, misuse of this API).

Values never enter SQL text: ``parameters`` are ALWAYS sent as server-side
parameters, bound to ``{name:Type}`` placeholders by ClickHouse itself.
clickhouse-connect silently falls back to client-side string formatting when a
query has no ``{name:Type}`` placeholder (or when parameters are a sequence),
so this layer refuses such calls: every parameter must have a placeholder.

Insert deduplication: ``insert(..., dedup_token=t)`` sends
``insert_deduplication_token=t`` (and ``insert_deduplicate=1``). MergeTree
tables that are not replicated only deduplicate when the table setting
``non_replicated_deduplication_window`` is > 0 (see the migrations). Note that
with the window on, a block identical to one of the last N blocks is dropped
even WITHOUT a token (ClickHouse hashes the block): harmless for the sink,
whose blocks carry unique event ids, but surprising in hand-written tests.

What clickhouse-connect 1.12.0 does for ``chdb://`` (read in its source,
``driver/_chdbclient.py`` and ``driver/_backend/chdb_backend.py``, and checked
against chdb-core 26.9):

- Only the sync client: ``get_async_client`` raises ``ProgrammingError`` for chdb.
- One engine path per process. Several clients on the same path are fine (each
  has its own connection handle, ``USE``/``SET`` state is per handle, data is
  shared); opening a DIFFERENT path while any client is open fails with
  BAD_ARGUMENTS ("EmbeddedServer already initialized with path ..."), which
  this layer reports as a non-retriable ``StorageError``. Once every client on
  a path is closed, another path can be opened in the same process. And only
  one process can open a data directory at a time.
- Inserts write the Native-format block to a temporary file (``tempfile``,
  i.e. ``$TMPDIR``) and run ``INSERT ... FROM INFILE``: an insert needs that
  much temporary disk. Insert compression is refused (NotSupportedError).
- Per-call settings go in a ``SETTINGS`` clause for selects and inserts; for
  commands they are applied with ``SET`` and restored afterwards (extra
  queries, including a read of ``system.settings``).
- No authentication, sessions, external data or query retries (``query_retries``
  is 0). Timeouts have no meaning and HTTP-only arguments are ignored with a
  logged warning, so this layer passes them only to HTTP clients.
- The reported server timezone is the host process's, and some chdb versions
  drop the zone of ``DateTime('tz')`` columns in Native output. The instant
  stays right (the value decodes as an aware datetime in the host zone with
  ``tz_mode="aware"``, which this layer sets), but compare instants, not
  wall-clock fields. ``DateTime64(3, 'UTC')`` keeps its zone.
- The insert summary counts the rows read from the file, so a block dropped
  by deduplication still reports its rows as written.

Two things about clickhouse-connect in general: it ignores the scheme of an
``https://`` DSN (TLS only follows ``interface``/``secure`` or ports 443/8443),
so this layer passes ``interface`` from the scheme; and an HTTP client makes a
session id by default, which makes two concurrent calls on one client fail, so
this layer turns that off (the sync methods may run on the caller's thread
while the worker runs an async one).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, OperationalError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# ClickHouse error codes worth retrying after a pause: the statement was fine,
# the server (or the path to it) was not.
RETRIABLE_CODES: frozenset[int] = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (replica lost its Keeper session)
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT (retry with the same dedup token)
        999,  # KEEPER_EXCEPTION
    }
)
# clickhouse-connect reports an HTTP error answer without a ClickHouse code
# (a proxy's 502, a 503 after its own retries) only in the message.
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")
_PLACEHOLDER = re.compile(r"\{(\w+):[^{}]+\}")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Errors clickhouse-connect lets escape while serializing an insert block
# (e.g. a str where an int is expected); never worth retrying.
_SERIALIZATION_ERRORS = (TypeError, ValueError, AttributeError, OverflowError, KeyError)

_SCHEMES = ("http", "https", "chdb")


class StorageError(Exception):
    """Any storage failure. ``retriable`` says whether the same call may succeed later."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def is_retriable(exc: BaseException) -> bool:
    """Whether a clickhouse-connect (or OS) error is worth retrying; see the module docstring."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code in RETRIABLE_CODES
    if isinstance(exc, OperationalError | OSError):
        return True
    if isinstance(exc, ClickHouseError):
        match = _HTTP_STATUS.search(str(exc))
        return match is not None and (match.group(1) == "429" or match.group(1)[0] == "5")
    return False


def _wrap(exc: BaseException, what: str) -> StorageError:
    return StorageError(f"{what}: {exc}", retriable=is_retriable(exc))


def _check_identifier(name: str, what: str) -> None:
    # Table and column names cannot be parameters; accept only plain identifiers
    # (optionally `db.table`) so that nothing else reaches SQL text.
    parts = name.split(".") if what == "table" else [name]
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise StorageError(f"invalid {what} name {name!r}", retriable=False)


def check_parameters(sql: str, parameters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The parameters to send, after checking they can only bind server-side.

    Every parameter needs a ``{name:Type}`` placeholder and every placeholder a
    parameter; otherwise ``StorageError(retriable=False)``. Never blocks.
    """
    names = set(_PLACEHOLDER.findall(sql))
    if not parameters:
        if names:
            raise StorageError(
                f"placeholders without parameters: {', '.join(sorted(names))}", retriable=False
            )
        return None
    if not isinstance(parameters, Mapping):
        raise StorageError("parameters must be a mapping of name to value", retriable=False)
    unbound = set(parameters) - names
    if unbound:
        raise StorageError(
            f"parameters without a {{name:Type}} placeholder: {', '.join(sorted(unbound))}; "
            "values are only ever sent as server-side parameters",
            retriable=False,
        )
    missing = names - set(parameters)
    if missing:
        raise StorageError(f"missing parameters: {', '.join(sorted(missing))}", retriable=False)
    return dict(parameters)


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for logs and reprs)."""
    parts = urlsplit(dsn)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return dsn
    netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class ClickHouse:
    """A ClickHouse connection built from a DSN; see the module docstring.

    ``database`` overrides the one in the DSN (``/db`` for HTTP; chdb DSNs name
    none, so the engine's ``default`` applies). With ``create_database=True``
    the database is created if missing (``CREATE DATABASE IF NOT EXISTS``).
    For a chdb DSN the data directory is created if missing. Construction
    connects (and blocks); it raises ``StorageError``.

    Timeouts apply to HTTP only (chdb has none). Close with ``close()`` or use
    the object as a context manager.
    """

    def __init__(
        self,
        dsn: str,
        *,
        database: str | None = None,
        create_database: bool = False,
        connect_timeout_s: float = 10.0,
        send_receive_timeout_s: float = 300.0,
    ) -> None:
        parts = urlsplit(dsn)
        if parts.scheme not in _SCHEMES:
            raise StorageError(
                f"unsupported DSN scheme {parts.scheme!r} in {redact_dsn(dsn)!r}; "
                "use http://, https:// or chdb:///abs/path",
                retriable=False,
            )
        self.dsn = redact_dsn(dsn)
        self.is_embedded = parts.scheme == "chdb"
        if database is None and not self.is_embedded:
            database = unquote(parts.path.lstrip("/").split("/")[0]) or None
        if database is not None:
            _check_identifier(database, "database")
        self.database = database
        kwargs: dict[str, Any]
        if self.is_embedded:
            if parts.netloc or not parts.path.startswith("/") or parts.query:
                raise StorageError(
                    f"a chdb DSN is chdb:///absolute/path (got {dsn!r})", retriable=False
                )
            try:
                Path(parts.path).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {parts.path}: {exc}", retriable=False) from exc
            kwargs = {}
        else:
            kwargs = {
                "interface": parts.scheme,
                "connect_timeout": connect_timeout_s,
                "send_receive_timeout": send_receive_timeout_s,
                "autogenerate_session_id": False,
            }
        self._closed = True  # until the client is up
        try:
            # Connect to a database that surely exists, then switch: the target
            # may not exist yet when create_database is set.
            self._client: Client = clickhouse_connect.get_client(
                dsn=dsn,
                database="default" if create_database else database,
                tz_mode="aware",
                **kwargs,
            )
        except (ClickHouseError, OSError) as exc:
            raise _wrap(exc, f"cannot open {self.dsn}") from exc
        if create_database and database is not None:
            try:
                self._client.command(
                    "CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": database}
                )
                self._client.database = database
            except (ClickHouseError, OSError) as exc:
                # An open chdb handle would pin the engine to this path.
                self._client.close()
                raise _wrap(exc, f"cannot create database {database}") from exc
        self._closed = False
        # One thread: chdb is one engine per process and the async methods must
        # not race each other's session state; see the module docstring.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")

    def __repr__(self) -> str:
        return f"ClickHouse({self.dsn!r}, database={self.database!r})"

    def __enter__(self) -> ClickHouse:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the ClickHouse client is closed", retriable=False)

    # ---- sync (blocking) -------------------------------------------------

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run one statement without a result (DDL, INSERT ... SELECT, ...). Blocks."""
        self._check_open()
        params = check_parameters(sql, parameters)
        try:
            self._client.command(sql, parameters=params)
        except (ClickHouseError, OSError) as exc:
            raise _wrap(exc, "command failed") from exc

    def query_rows(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run a query and return every row as a tuple. Blocks.

        ``DateTime``/``DateTime64`` values come back as timezone-aware datetimes.
        """
        self._check_open()
        params = check_parameters(sql, parameters)
        try:
            result = self._client.query(sql, parameters=params)
            return [tuple(row) for row in result.result_rows]
        except (ClickHouseError, OSError) as exc:
            raise _wrap(exc, "query failed") from exc

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a query and return its result as a ``pyarrow.Table``. Blocks.

        For large results: the answer travels as Arrow, so numeric columns become
        numpy arrays (``column.to_numpy()``) without a Python object per value,
        and a string column can be sliced (``take``) before any string is made.
        """
        self._check_open()
        params = check_parameters(sql, parameters)
        try:
            return self._client.query_arrow(sql, parameters=params)
        except (ClickHouseError, OSError) as exc:
            raise _wrap(exc, "query failed") from exc

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        dedup_token: str | None = None,
    ) -> None:
        """Insert ``rows`` (one sequence of values per row, in ``column_names`` order). Blocks.

        One call is one insert (one block per partition on the server); batch
        upstream. With ``dedup_token``, a repeat of this insert with the same
        token is dropped by ClickHouse, provided the table deduplicates (see
        the module docstring), so a retry after an unknown outcome is safe.
        Values are typed by the table's columns, and within a column all values
        must have one Python type (e.g. all ``str`` or all ``uuid.UUID`` for a
        UUID column; ints are raw ticks for DateTime64, i.e. epoch ms for
        ``DateTime64(3)``). Bad values raise ``StorageError(retriable=False)``.
        """
        self._check_open()
        _check_identifier(table, "table")
        for name in column_names:
            _check_identifier(name, "column")
        if not rows:
            return
        settings: dict[str, Any] | None = None
        if dedup_token is not None:
            if not dedup_token:
                raise StorageError("dedup_token must not be empty", retriable=False)
            settings = {"insert_deduplicate": 1, "insert_deduplication_token": dedup_token}
        try:
            self._client.insert(table, rows, column_names=list(column_names), settings=settings)
        except (ClickHouseError, OSError) as exc:
            raise _wrap(exc, f"insert into {table} failed") from exc
        except _SERIALIZATION_ERRORS as exc:
            raise StorageError(
                f"insert into {table} failed: cannot serialize rows: {exc!r}", retriable=False
            ) from exc

    def close(self) -> None:
        """Wait for the worker's running call, then close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        try:
            self._client.close()
        except (ClickHouseError, OSError):
            log.warning("error closing %s", self.dsn, exc_info=True)

    # ---- async (on the worker thread) ------------------------------------

    async def _on_worker(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs)
            )
        except RuntimeError as exc:
            if self._closed:  # shut down while the call was being submitted
                raise StorageError("the ClickHouse client is closed", retriable=False) from exc
            raise

    async def acommand(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """``command`` on the worker thread; does not block the event loop."""
        await self._on_worker(self.command, sql, parameters)

    async def aquery_rows(
        self, sql: str, parameters: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """``query_rows`` on the worker thread; does not block the event loop."""
        return await self._on_worker(self.query_rows, sql, parameters)

    async def aquery_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """``query_arrow`` on the worker thread; does not block the event loop."""
        return await self._on_worker(self.query_arrow, sql, parameters)

    async def ainsert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        *,
        dedup_token: str | None = None,
    ) -> None:
        """``insert`` on the worker thread; does not block the event loop.

        Cancelling the awaiting task does not stop an insert already running.
        """
        await self._on_worker(self.insert, table, rows, column_names, dedup_token=dedup_token)

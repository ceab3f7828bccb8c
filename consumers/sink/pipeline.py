"""Pure steps of the sink: a Kafka record -> rows for ``events`` / ``events_dlq``.

``EventsPipeline.process`` decodes and validates one v1 event (``EventV1``)
and returns its ``events`` row: the wire values in ``EVENT_COLUMNS`` order,
as they are. ``event_id`` stays a ``str`` (clickhouse-connect writes a
canonical UUID string into a UUID column; validated here against the
canonical pattern so an insert can never fail on it), and ``ts`` /
``received_at`` stay epoch-ms ints (written as raw DateTime64(3) ticks, see
migrations/clickhouse/0001_events.sql). Anything an insert could refuse is
refused here instead, as ``InvalidMessage``: a batch that cannot be written
would otherwise block its partitions forever (writes are retried, never dropped).

``DlqPipeline.process`` turns a dead-letter envelope (written by the API,
``app.state.AppState.dead_letter``, or by ``ConsumerRunner``) into an
``events_dlq`` row. The DLQ has no DLQ of its own: a message there that is
not a valid envelope is logged, counted and skipped (its offset committed).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from app.events import UUID_PATTERN, EventV1
from app.storage.clickhouse import ClickHouse
from consumers.base import InvalidMessage, Record, Row, json_object

# The events table's columns, in order (migrations/clickhouse/0001_events.sql, and
# `net` from 0005_events_net.sql). Inserts name their columns, so the order only
# has to match EventV1's fields, which event_row reads in this order.
EVENT_COLUMNS: tuple[str, ...] = (
    "v",
    "event_id",
    "type",
    "campaign",
    "ts",
    "received_at",
    "source",
    "token",
    "root",
    "node",
    "parent",
    "depth",
    "channel",
    "url",
    "text",
    "value",
    "reaction",
    "preview_of",
    "visitor",
    "net",
    "country",
    "bot",
    "browser",
    "os",
    "device",
    "privacy",
    "_topic",
    "_partition",
    "_offset",
)
EVENT_FIELDS: tuple[str, ...] = EVENT_COLUMNS[:-3]
RECEIVED_AT_INDEX = EVENT_COLUMNS.index("received_at")

DLQ_COLUMNS: tuple[str, ...] = (
    "reason",
    "field",
    "message",
    "source",
    "payload",
    "topic",
    "partition",
    "offset",
    "received_at",
)
DLQ_RECEIVED_AT_INDEX = DLQ_COLUMNS.index("received_at")

_UUID = re.compile(UUID_PATTERN)
# DateTime64(3) holds 1900-01-01 .. 2299-12-31; the wire never carries times before 1970.
MAX_MS = 10_413_791_999_999
MAX_DEPTH = 65_535  # UInt16
MAX_PARTITION = 65_535  # UInt16 columns


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def decode_event(record: Record) -> EventV1:
    """Decode and validate one ``share-events`` value; raises ``InvalidMessage``."""
    if record.value is None:
        raise InvalidMessage(record.partition, record.offset, "bad_json: empty message")
    try:
        event = EventV1.model_validate_json(record.value)
    except ValidationError as exc:
        if exc.errors(include_url=False)[0]["type"] == "json_invalid":
            raise InvalidMessage(record.partition, record.offset, "bad_json") from None
        raise InvalidMessage(
            record.partition, record.offset, f"bad_schema: {_first_error(exc)}"
        ) from None
    problem = _insert_problem(event)
    if problem:
        raise InvalidMessage(record.partition, record.offset, f"bad_schema: {problem}")
    return event


def _insert_problem(event: EventV1) -> str | None:
    # What EventV1 lets through but the events table's types would refuse.
    if not _UUID.match(event.event_id):
        return "event_id: not a canonical lowercase UUID"
    if not 0 <= event.ts <= MAX_MS:
        return "ts: out of range"
    if not 0 <= event.received_at <= MAX_MS:
        return "received_at: out of range"
    if event.depth is not None and not 0 <= event.depth <= MAX_DEPTH:
        return "depth: out of range"
    return None


_event_fields = operator.attrgetter(*EVENT_FIELDS)


def event_row(event: EventV1, topic: str, partition: int, offset: int) -> Row:
    """The ``events`` row in ``EVENT_COLUMNS`` order (wire values as they are)."""
    return (*_event_fields(event), topic, partition, offset)


class _TableSink:
    """A sink pipeline's I/O half: rows of ``columns`` into ``table``, one insert a batch."""

    name: str
    table: str
    columns: tuple[str, ...]
    received_at_index: int

    def __init__(self, clickhouse: ClickHouse | None = None) -> None:
        self.clickhouse = clickhouse

    def received_ms(self, row: Row) -> int | None:
        value: int = row[self.received_at_index]
        return value

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        """One insert with the batch's dedup token (off the loop); raises ``StorageError``."""
        assert self.clickhouse is not None, f"{self.name} needs a ClickHouse client to write"
        await self.clickhouse.ainsert(self.table, rows, self.columns, dedup_token=dedup_token)


class EventsPipeline(_TableSink):
    """``share-events`` -> ``events``."""

    name = "sink"
    table = "events"
    columns = EVENT_COLUMNS
    received_at_index = RECEIVED_AT_INDEX

    def process(self, record: Record) -> Sequence[Row]:
        """One row per record; pure. Raises ``InvalidMessage`` (bad_json / bad_schema: ...)."""
        event = decode_event(record)
        return (event_row(event, record.topic, record.partition, record.offset),)


def _opt_str(envelope: dict[str, Any], key: str) -> str | None:
    value = envelope.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"{key} is not a string")


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def dlq_row(record: Record) -> Row:
    """The ``events_dlq`` row for one dead-letter envelope; raises ``InvalidMessage``.

    ``topic/partition/offset`` say where the poison message was read: the
    envelope's own fields when a consumer dead-lettered it, else (the API
    refused it before it reached a topic) where this DLQ message was read.
    ``received_at`` is the envelope's (ms), else the record's timestamp.
    """
    envelope = json_object(record)
    reason = envelope.get("reason")
    if not isinstance(reason, str) or not reason:
        raise InvalidMessage(record.partition, record.offset, "bad_schema: reason: missing")
    try:
        field = _opt_str(envelope, "field")
        message = _opt_str(envelope, "message") or ""
        source = _opt_str(envelope, "source") or ""
    except ValueError as exc:
        raise InvalidMessage(record.partition, record.offset, f"bad_schema: {exc}") from None
    payload = envelope.get("payload")
    if not isinstance(payload, str):
        payload = orjson.dumps(payload).decode()
    topic, partition, offset = (
        envelope.get("topic"),
        envelope.get("partition"),
        envelope.get("offset"),
    )
    if not (
        isinstance(topic, str)
        and _int_in(partition, 0, MAX_PARTITION)
        and _int_in(offset, 0, 2**63 - 1)
    ):
        topic, partition, offset = record.topic, record.partition, record.offset
    received_at = envelope.get("received_at")
    if not _int_in(received_at, 0, MAX_MS):
        received_at = max(0, min(record.timestamp, MAX_MS))
    return (reason, field, message, source, payload, topic, partition, offset, received_at)


class DlqPipeline(_TableSink):
    """``share-events-dlq`` -> ``events_dlq``; its own poison is skipped (no DLQ of the DLQ)."""

    name = "sink-dlq"
    table = "events_dlq"
    columns = DLQ_COLUMNS
    received_at_index = DLQ_RECEIVED_AT_INDEX

    def process(self, record: Record) -> Sequence[Row]:
        return (dlq_row(record),)

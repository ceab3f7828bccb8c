"""The sink's pure steps and the shared batching, without a broker or ClickHouse."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from app.enrich import ClientInfo
from app.events import EventIn, EventV1, build_event
from app.storage.migrate import MIGRATIONS_DIR
from consumers.base import Batch, InvalidMessage
from consumers.sink.pipeline import (
    DLQ_COLUMNS,
    EVENT_COLUMNS,
    DlqPipeline,
    EventsPipeline,
)

BASE_MS = 1_763_000_000_000
TOPIC = "share-events"


def record(
    value: bytes | None, *, partition: int = 3, offset: int = 41, topic: str = TOPIC
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=BASE_MS + 5,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value or b""),
        headers=[],
    )


def wire_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "v": 1,
        "event_id": str(uuid.uuid4()),
        "type": "share",
        "campaign": "spring",
        "ts": BASE_MS,
        "received_at": BASE_MS + 12,
        "source": "api",
        "token": "tok",
        "root": "0123456789abcdef",
        "node": "fedcba9876543210",
        "parent": None,
        "depth": 2,
        "channel": "x",
        "url": "https://example.com/a",
        "text": "héllo",
        "value": 1.5,
        "reaction": None,
        "preview_of": None,
        "visitor": "aaaaaaaaaaaaaaaa",
        "net": "bbbbbbbbbbbbbbbb",
        "country": "FR",
        "bot": False,
        "browser": "Firefox",
        "os": "Linux",
        "device": "Other",
        "privacy": None,
    }
    event.update(overrides)
    return event


def events_table_columns() -> list[str]:
    """The events table's columns as the migrations leave it: 0001 creates it,
    later files add columns with ``ADD COLUMN IF NOT EXISTS name Type AFTER other``."""
    sql = (MIGRATIONS_DIR / "0001_events.sql").read_text()
    body = sql[sql.index("CREATE TABLE") :]
    body = body[body.index("(") + 1 : body.index("\nENGINE")]
    columns = re.findall(r"^\s+(\w+) ", body, flags=re.MULTILINE)
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        for name, after in re.findall(
            r"^ALTER TABLE events ADD COLUMN IF NOT EXISTS (\w+) .* AFTER (\w+);$",
            path.read_text(),
            flags=re.MULTILINE,
        ):
            columns.insert(columns.index(after) + 1, name)
    return columns


# ---- events pipeline -------------------------------------------------------


def test_columns_match_the_events_table_and_the_wire_format() -> None:
    assert list(EVENT_COLUMNS) == [*EventV1.model_fields, "_topic", "_partition", "_offset"]
    assert list(EVENT_COLUMNS) == events_table_columns()


def test_process_good_event_keeps_wire_values() -> None:
    event = wire_event()
    rows = EventsPipeline().process(record(orjson.dumps(event)))
    assert len(rows) == 1
    (row,) = rows
    assert len(row) == len(EVENT_COLUMNS)
    as_dict = dict(zip(EVENT_COLUMNS, row, strict=True))
    assert as_dict == {**event, "_topic": TOPIC, "_partition": 3, "_offset": 41}
    # Passed as the insert expects: UUID as its canonical string, times as epoch-ms ints.
    assert isinstance(as_dict["event_id"], str)
    assert type(as_dict["ts"]) is int
    assert type(as_dict["received_at"]) is int
    assert EventsPipeline().received_ms(row) == BASE_MS + 12


def test_process_event_without_net_from_before_the_field() -> None:
    # Events published before `net` existed (still in the topic, or from an older
    # replica during a rolling deploy) are stored with net NULL, not dead-lettered.
    event = wire_event()
    del event["net"]
    (row,) = EventsPipeline().process(record(orjson.dumps(event)))
    assert dict(zip(EVENT_COLUMNS, row, strict=True))["net"] is None


def test_process_event_built_by_the_api() -> None:
    client = ClientInfo(
        visitor=None,
        net=None,
        country=None,
        bot=False,
        preview=False,
        browser=None,
        os=None,
        device=None,
        privacy="dnt",
    )
    event = build_event(
        EventIn(type="view", campaign="c1"),
        event_type="view",
        token=None,
        client=client,
        source="pixel",
        ts=BASE_MS,
        received_ms=BASE_MS,
        url=None,
    )
    (row,) = EventsPipeline().process(record(orjson.dumps(event), partition=0, offset=0))
    assert row[: len(event)] == tuple(event.values())
    assert row[-3:] == (TOPIC, 0, 0)


POISON = [
    (None, "bad_json"),
    (b"", "bad_json"),
    (b"{not json", "bad_json"),
    (b"\xff\xfe\x00", "bad_json"),
    (b'{"v": 1, "event_id": "\\ud800"}', "bad_json"),
    (b"[]", "bad_schema"),
    (b"42", "bad_schema"),
    (orjson.dumps(wire_event(v=2)), "bad_schema: v"),
    (orjson.dumps(wire_event(type="explode")), "bad_schema: type"),
    (orjson.dumps({k: v for k, v in wire_event().items() if k != "campaign"}), "bad_schema"),
    (orjson.dumps(wire_event(extra=1)), "bad_schema: extra"),
    (orjson.dumps(wire_event(event_id="not-a-uuid")), "bad_schema: event_id"),
    (orjson.dumps(wire_event(event_id=str(uuid.uuid4()).upper())), "bad_schema: event_id"),
    (orjson.dumps(wire_event(ts=-1)), "bad_schema: ts"),
    (
        orjson.dumps(wire_event(ts=0)).replace(b'"ts":0', b'"ts":' + str(2**70).encode()),
        "bad_schema: ts",
    ),
    (orjson.dumps(wire_event(received_at=10**14)), "bad_schema: received_at"),
    (orjson.dumps(wire_event(depth=70_000)), "bad_schema: depth"),
    (orjson.dumps(wire_event(depth=-1)), "bad_schema: depth"),
    (orjson.dumps(wire_event(net=42)), "bad_schema: net"),
]


@pytest.mark.parametrize(("value", "reason"), POISON)
def test_process_poison(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        EventsPipeline().process(record(value, partition=2, offset=7))
    assert info.value.reason.startswith(reason)
    assert (info.value.partition, info.value.offset) == (2, 7)
    if reason.startswith("bad_schema"):
        assert info.value.reason.startswith("bad_schema: ")


# ---- DLQ pipeline ----------------------------------------------------------


def test_dlq_row_from_an_api_envelope() -> None:
    envelope = {
        "reason": "bad_campaign",
        "field": "campaign",
        "message": "no",
        "source": "pixel",
        "received_at": BASE_MS,
        "payload": {"c": "BAD!"},
    }
    rec = record(orjson.dumps(envelope), topic="share-events-dlq", partition=1, offset=9)
    (row,) = DlqPipeline().process(rec)
    assert len(row) == len(DLQ_COLUMNS)
    assert dict(zip(DLQ_COLUMNS, row, strict=True)) == {
        "reason": "bad_campaign",
        "field": "campaign",
        "message": "no",
        "source": "pixel",
        "payload": '{"c":"BAD!"}',
        "topic": "share-events-dlq",  # where it was read: it never reached share-events
        "partition": 1,
        "offset": 9,
        "received_at": BASE_MS,
    }


def test_dlq_row_from_a_consumer_envelope_keeps_the_origin() -> None:
    envelope = {
        "reason": "bad_json",
        "field": None,
        "message": "bad_json",
        "source": "consumer:sink",
        "received_at": BASE_MS,
        "payload": "{not json",
        "topic": "share-events",
        "partition": 4,
        "offset": 1234,
    }
    (row,) = DlqPipeline().process(record(orjson.dumps(envelope), topic="share-events-dlq"))
    as_dict = dict(zip(DLQ_COLUMNS, row, strict=True))
    assert (as_dict["topic"], as_dict["partition"], as_dict["offset"]) == ("share-events", 4, 1234)
    assert as_dict["payload"] == "{not json"
    assert as_dict["field"] is None


def test_dlq_row_defaults_received_at_to_the_record_time() -> None:
    (row,) = DlqPipeline().process(record(orjson.dumps({"reason": "x", "payload": None})))
    as_dict = dict(zip(DLQ_COLUMNS, row, strict=True))
    assert as_dict["received_at"] == BASE_MS + 5
    assert (as_dict["message"], as_dict["source"], as_dict["payload"]) == ("", "", "null")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "bad_json"),
        (b"{oops", "bad_json"),
        (b"[1]", "bad_schema: not an object"),
        (b"{}", "bad_schema: reason"),
        (b'{"reason": ""}', "bad_schema: reason"),
        (b'{"reason": "x", "message": 5}', "bad_schema: message"),
    ],
)
def test_dlq_poison(value: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        DlqPipeline().process(record(value))
    assert info.value.reason.startswith(reason)


# ---- batch -----------------------------------------------------------------


def tp(partition: int, topic: str = TOPIC) -> TopicPartition:
    return TopicPartition(topic, partition)


def test_batch_ready_by_size() -> None:
    batch = Batch(max_records=3, max_seconds=10.0)
    assert not batch
    assert not batch.ready(0.0)
    assert batch.seconds_left(0.0) is None
    batch.add(tp(0), 0, [(1,)], now=0.0)
    batch.add(tp(0), 1, [], now=0.0)  # a poison record counts: its offset is committed too
    assert batch
    assert not batch.ready(0.0)
    batch.add(tp(1), 5, [(2,)], now=0.0)
    assert batch.ready(0.0)
    assert batch.records == 3
    assert batch.rows == [(1,), (2,)]


def test_batch_ready_by_age_with_a_fake_clock() -> None:
    clock = [100.0]
    batch = Batch(max_records=1000, max_seconds=2.0)
    batch.add(tp(0), 0, [(1,)], now=clock[0])
    clock[0] += 1.5
    batch.add(tp(0), 1, [(2,)], now=clock[0])  # age counts from the first record
    assert not batch.ready(clock[0])
    assert batch.seconds_left(clock[0]) == pytest.approx(0.5)
    clock[0] += 0.5
    assert batch.ready(clock[0])
    assert batch.seconds_left(clock[0]) == 0.0


def test_dedup_token_and_commit_offsets() -> None:
    batch = Batch(max_records=100, max_seconds=1.0)
    for offset in range(5, 81):
        batch.add(tp(1), offset, [(offset,)], now=0.0)
    for offset in range(100, 200):
        batch.add(tp(0), offset, [(offset,)], now=0.0)
    batch.add(tp(10), 7, [], now=0.0)
    assert batch.dedup_token("sink") == "sink:share-events:0:100-199;1:5-80;10:7-7"
    # Same batch, same token: a retried insert is deduplicated by ClickHouse.
    assert batch.dedup_token("sink") == batch.dedup_token("sink")
    assert batch.commit_offsets() == {tp(0): 200, tp(1): 81, tp(10): 8}

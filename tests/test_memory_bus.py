"""The in-process bus: partitioning, consumer groups, commits, retention and backpressure."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from app.bus import memory
from app.bus.base import BusUnavailable, Record
from app.bus.memory import MemoryBus

TOPIC = "share-events"


def records(n: int, key: bytes = b"root") -> list[Record]:
    return [Record(TOPIC, key, f"v{i}".encode()) for i in range(n)]


async def drain(consumer: memory.MemoryConsumer) -> list[bytes]:
    out: list[bytes] = []
    while got := await consumer.getmany(timeout_ms=0):
        for batch in got.values():
            out.extend(r.value for r in batch)
    return out


async def test_one_key_stays_on_one_partition_in_order() -> None:
    bus = MemoryBus(partitions=4)
    await bus.publish(records(10))
    consumer = bus.consumer("g")
    consumer.subscribe([TOPIC])
    got = await consumer.getmany(timeout_ms=0)
    assert list(got) == [TopicPartition(TOPIC, bus.partition_for(b"root"))]
    [batch] = got.values()
    assert [r.offset for r in batch] == list(range(10))
    assert [r.value for r in batch] == [f"v{i}".encode() for i in range(10)]


async def test_groups_read_independently_and_resume_from_their_commit() -> None:
    bus = MemoryBus(partitions=2)
    await bus.publish(records(5))
    a, b = bus.consumer("a"), bus.consumer("b")
    a.subscribe([TOPIC])
    b.subscribe([TOPIC])
    got = await a.getmany(timeout_ms=0, max_records=3)
    [(tp, batch)] = got.items()
    assert len(batch) == 3
    await a.commit({tp: OffsetAndMetadata(3, "")})
    assert len(await drain(b)) == 5  # group b is unaffected by a's reads
    # A new member of group a (a restart) starts at a's committed offset.
    again = bus.consumer("a")
    again.subscribe([TOPIC])
    assert await drain(again) == [b"v3", b"v4"]
    assert bus.lag("a") == 2 and bus.lag("b") == 5


async def test_getmany_waits_for_records_without_polling() -> None:
    bus = MemoryBus(partitions=1)
    consumer = bus.consumer("g")
    consumer.subscribe([TOPIC])
    waiting = asyncio.create_task(consumer.getmany(timeout_ms=5_000))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    bus.publish_nowait(Record(TOPIC, b"k", b"x"))
    got = await asyncio.wait_for(waiting, 1)
    assert [r.value for batch in got.values() for r in batch] == [b"x"]
    # An empty wait returns empty after its timeout.
    assert await consumer.getmany(timeout_ms=10) == {}


async def test_paused_partitions_are_not_fetched() -> None:
    bus = MemoryBus(partitions=1)
    await bus.publish(records(3))
    consumer = bus.consumer("g")
    consumer.subscribe([TOPIC])
    tp = TopicPartition(TOPIC, 0)
    consumer.pause(tp)
    assert consumer.paused() == {tp}
    assert await consumer.getmany(timeout_ms=10) == {}
    consumer.resume(tp)
    assert len(await drain(consumer)) == 3


async def test_records_are_freed_once_every_group_committed_past_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "TRIM_CHUNK", 4)
    bus = MemoryBus(partitions=1)
    await bus.publish(records(10))
    a, b = bus.consumer("a"), bus.consumer("b")
    a.subscribe([TOPIC])
    b.subscribe([TOPIC])
    tp = TopicPartition(TOPIC, 0)
    await a.commit({tp: 10})
    assert bus.retained == 10  # group b has not read them yet
    await b.commit({tp: 2})
    assert bus.retained == 10  # fewer than TRIM_CHUNK to free: kept for now
    await b.commit({tp: 6})
    assert bus.retained == 4
    assert [r.offset for r in bus.read(TOPIC, 0, 0, 100)] == [6, 7, 8, 9]
    await b.commit({tp: 10})
    assert bus.retained == 0
    # Offsets keep counting after a trim.
    await bus.publish(records(1))
    assert [r.offset for r in await_values(await b.getmany(timeout_ms=0))] == [10]


def await_values(got: dict[TopicPartition, list[memory.MemoryRecord]]) -> list[memory.MemoryRecord]:
    return [r for batch in got.values() for r in batch]


async def test_publish_refuses_when_consumers_are_too_far_behind() -> None:
    bus = MemoryBus(partitions=1, max_records=5)
    consumer = bus.consumer("g")
    consumer.subscribe([TOPIC])
    await bus.publish(records(5))
    assert not bus.ready()
    with pytest.raises(BusUnavailable):
        await bus.publish(records(1))
    with pytest.raises(BusUnavailable):
        await bus.producer().send_and_wait(TOPIC, b"x", key=b"k")
    bus.publish_nowait(Record(TOPIC, b"k", b"pixel"))  # the pixel's record is still kept
    assert bus.retained == 6
    await drain(consumer)
    await consumer.commit({TopicPartition(TOPIC, 0): 6})
    assert bus.ready()
    await bus.publish(records(1))


def test_retained_records_hold_their_bytes_not_the_serializers_buffer() -> None:
    """orjson's output keeps its 4 KiB buffer; the bus must not keep that alive."""
    import tracemalloc

    import orjson

    event = {"type": "view", "campaign": "c", "url": "https://shop.example/" + "p" * 600}
    bus = MemoryBus(partitions=1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        values = [orjson.dumps({**event, "n": i}) for i in range(500)]
        size = len(values[0])
        bus.publish_many_nowait([Record(TOPIC, b"k", v) for v in values])
        del values  # only the bus holds the events now
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A record's value and its tuple, not orjson's buffer (measured > 4,096 bytes each).
    assert held / 500 < size + 400, f"{held / 500:.0f} bytes held per {size}-byte record"
    assert [r.value for r in bus.read(TOPIC, 0, 0, 500)] == [
        orjson.dumps({**event, "n": i}) for i in range(500)
    ]

"""The in-process bus of the embedded mode (``VIRALTRACE_KAFKA_BOOTSTRAP`` unset).

Topics are partitioned in-memory logs, partitioned with Kafka's own murmur2
so a cascade stays on one partition exactly as it would on Kafka. Consumers
read them through ``MemoryBus.consumer``, an object with the subset of
``AIOKafkaConsumer`` that ``consumers.base.ConsumerRunner`` uses (groups,
positions, ``getmany``, ``pause``/``resume``, manual ``commit``), so the
consumers run the same code on both buses.

Retention: a record is kept until every consumer group subscribed to its
topic has committed past it, then freed. Until a group subscribes to a
topic, its records are kept (nobody has read them yet).

Backpressure: ``publish`` refuses new records (``BusUnavailable``) when the
bus retains ``max_records`` records, i.e. the consumers are that far
behind; ``publish_nowait`` (the pixel, which never fails a browser) still
keeps them. It is for a single machine: nothing is on disk, so a crash
loses what the consumers had not yet written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiokafka.structs import TopicPartition

from app.bus.base import BusUnavailable, Record, right_sized
from app.bus.partitioning import partition_for

# Freeing records shifts a list, so it is done in chunks of at least this many.
TRIM_CHUNK = 4_096


class MemoryRecord(NamedTuple):
    """A record as a consumer sees it (the fields of aiokafka's ``ConsumerRecord`` we use)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes


@dataclass
class _PartitionLog:
    base: int = 0  # offset of records[0]
    records: list[MemoryRecord] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.records)

    def read(self, offset: int, limit: int) -> list[MemoryRecord]:
        start = max(offset, self.base) - self.base
        return self.records[start : start + limit]

    def trim_to(self, offset: int) -> int:
        """Free records below ``offset`` (in chunks); returns how many were freed."""
        drop = min(offset, self.end) - self.base
        if drop <= 0 or (drop < TRIM_CHUNK and drop < len(self.records)):
            return 0
        del self.records[:drop]
        self.base += drop
        return drop


class MemoryBus:
    """Bounded in-memory partition logs with consumer groups. One event loop; not durable."""

    def __init__(self, partitions: int, max_records: int = 1_000_000) -> None:
        self.partitions = partitions
        self.max_records = max_records
        self._logs: dict[str, list[_PartitionLog]] = {}
        # group -> topic -> committed offset per partition
        self._committed: dict[str, dict[str, list[int]]] = {}
        self._retained = 0
        self._arrived: asyncio.Future[None] | None = None

    # ---- producing (the Bus protocol) -------------------------------------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return self._retained < self.max_records

    @property
    def spool_depth(self) -> int:
        return 0

    @property
    def retained(self) -> int:
        """Records held: published and not yet committed by every subscribed group."""
        return self._retained

    def partition_for(self, key: bytes | None) -> int:
        """The partition Kafka's default partitioner would pick for ``key``."""
        return 0 if key is None else partition_for(key, self.partitions)

    def _topic(self, topic: str) -> list[_PartitionLog]:
        logs = self._logs.get(topic)
        if logs is None:
            logs = self._logs[topic] = [_PartitionLog() for _ in range(self.partitions)]
        return logs

    def _append(self, record: Record, now_ms: int) -> None:
        partition = self.partition_for(record.key)
        log = self._topic(record.topic)[partition]
        # Retained until every group commits: kept right-sized (see ``right_sized``).
        value = right_sized(record.value)
        log.records.append(
            MemoryRecord(record.topic, partition, log.end, now_ms, record.key, value)
        )
        self._retained += 1

    def _wake(self) -> None:
        if self._arrived is not None:
            if not self._arrived.done():
                self._arrived.set_result(None)
            self._arrived = None

    async def publish(self, records: Sequence[Record]) -> None:
        if self._retained + len(records) > self.max_records:
            raise BusUnavailable("in-process bus is full; consumers are behind", retry_after_s=1)
        now_ms = time.time_ns() // 1_000_000
        for record in records:
            self._append(record, now_ms)
        self._wake()

    def publish_nowait(self, record: Record) -> None:
        # The pixel never waits: a full in-process bus means consumers are far behind,
        # and the record is still kept (memory is the limit the README states).
        self._append(record, time.time_ns() // 1_000_000)
        self._wake()

    def publish_many_nowait(self, records: Sequence[Record]) -> None:
        # One append time for the batch, as ``publish`` does.
        now_ms = time.time_ns() // 1_000_000
        append = self._append
        for record in records:
            append(record, now_ms)
        self._wake()

    # ---- reading ----------------------------------------------------------

    def read(self, topic: str, partition: int, offset: int, limit: int) -> list[MemoryRecord]:
        """Retained records of one partition from ``offset``; never blocks."""
        logs = self._logs.get(topic)
        if logs is None:
            return []
        return logs[partition].read(offset, limit)

    def end_offset(self, topic: str, partition: int) -> int:
        logs = self._logs.get(topic)
        return logs[partition].end if logs else 0

    def joined(self, group: str) -> bool:
        """True once a consumer of ``group`` has subscribed."""
        return group in self._committed

    def lag(self, group: str) -> int:
        """Records the group has not committed yet, over the topics it subscribed to."""
        topics = self._committed.get(group, {})
        return sum(
            log.end - committed
            for topic, offsets in topics.items()
            for log, committed in zip(self._topic(topic), offsets, strict=True)
        )

    def consumer(self, group_id: str, name: str = "", max_poll_records: int = 0) -> MemoryConsumer:
        """A consumer in ``group_id``; it owns every partition of its topics (one member
        per group: the embedded mode runs each consumer once). ``name`` and
        ``max_poll_records`` are accepted for the ``consumers.base.Transport`` shape."""
        return MemoryConsumer(self, group_id)

    def producer(self, name: str = "") -> MemoryProducer:
        """A producer with ``AIOKafkaProducer.send_and_wait``'s shape (dead letters)."""
        return MemoryProducer(self)

    def _join(self, group: str, topic: str) -> list[int]:
        topics = self._committed.setdefault(group, {})
        offsets = topics.get(topic)
        if offsets is None:
            # A new group starts at the earliest retained record ("earliest" reset).
            offsets = topics[topic] = [log.base for log in self._topic(topic)]
        return offsets

    def _commit(self, group: str, tp: TopicPartition, offset: int) -> None:
        self._committed[group][tp.topic][tp.partition] = offset
        low = min(
            topics[tp.topic][tp.partition]
            for topics in self._committed.values()
            if tp.topic in topics
        )
        self._retained -= self._topic(tp.topic)[tp.partition].trim_to(low)

    def _arrival(self) -> asyncio.Future[None]:
        if self._arrived is None:
            self._arrived = asyncio.get_running_loop().create_future()
        return self._arrived


class MemoryConsumer:
    """The ``AIOKafkaConsumer`` subset the consumer runner uses, over a ``MemoryBus``.

    Manual commit only; positions start at the group's committed offsets.
    ``getmany`` waits for new records up to its timeout, never busy-polls.
    """

    def __init__(self, bus: MemoryBus, group_id: str) -> None:
        self.bus = bus
        self.group_id = group_id
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._listener: Any = None
        self._announced = False

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._positions.clear()

    def subscribe(self, topics: Iterable[str], listener: Any = None) -> None:
        for topic in topics:
            committed = self.bus._join(self.group_id, topic)
            for partition, offset in enumerate(committed):
                self._positions[TopicPartition(topic, partition)] = offset
        self._listener = listener

    def assignment(self) -> set[TopicPartition]:
        return set(self._positions)

    def pause(self, *partitions: TopicPartition) -> None:
        self._paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self._paused.difference_update(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def highwater(self, tp: TopicPartition) -> int:
        return self.bus.end_offset(tp.topic, tp.partition)

    def _fetch(self, max_records: int) -> dict[TopicPartition, list[MemoryRecord]]:
        out: dict[TopicPartition, list[MemoryRecord]] = {}
        left = max_records
        for tp, position in self._positions.items():
            if left <= 0:
                break
            if tp in self._paused:
                continue
            records = self.bus.read(tp.topic, tp.partition, position, left)
            if records:
                out[tp] = records
                self._positions[tp] = records[-1].offset + 1
                left -= len(records)
        return out

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[MemoryRecord]]:
        if not self._announced:
            self._announced = True
            if self._listener is not None:
                await self._listener.on_partitions_assigned(self.assignment())
        limit = max_records or 1_000_000
        got = self._fetch(limit)
        if got or timeout_ms <= 0:
            return got
        arrival = self.bus._arrival()
        await asyncio.wait([arrival], timeout=timeout_ms / 1000)
        return self._fetch(limit)

    async def commit(self, offsets: Mapping[TopicPartition, Any]) -> None:
        """``offsets`` maps partitions to an offset or ``OffsetAndMetadata``."""
        for tp, meta in offsets.items():
            self.bus._commit(self.group_id, tp, getattr(meta, "offset", meta))


class MemoryProducer:
    """``send_and_wait`` over ``MemoryBus.publish`` (raises ``BusUnavailable`` when full)."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        await self.bus.publish([Record(topic, key, value)])

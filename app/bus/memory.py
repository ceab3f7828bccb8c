"""The in-process bus of the embedded mode (``VIRALTRACE_KAFKA_BOOTSTRAP`` unset).

Topics are partitioned in-memory logs, partitioned with Kafka's own murmur2
so a cascade stays on one partition exactly as it would on Kafka. It is for
a single machine: nothing is on disk, so a crash loses whatever consumers
had not yet written. ``publish`` refuses new records (``BusUnavailable``)
when a topic holds ``max_records`` unread records, which is the
backpressure the embedded consumers rely on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.bus.base import BusUnavailable, Record
from app.bus.partitioning import partition_for


class MemoryBus:
    """Bounded in-memory partition logs. Single event loop; not crash-durable."""

    def __init__(self, partitions: int, max_records: int = 1_000_000) -> None:
        self.partitions = partitions
        self.max_records = max_records
        self._logs: dict[str, list[list[Record]]] = {}
        self._changed = asyncio.Event()
        self._pending = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return self._pending < self.max_records

    @property
    def spool_depth(self) -> int:
        return 0

    def partition_for(self, key: bytes | None) -> int:
        """The partition Kafka's default partitioner would pick for ``key``."""
        return 0 if key is None else partition_for(key, self.partitions)

    def _append(self, record: Record) -> None:
        logs = self._logs.get(record.topic)
        if logs is None:
            logs = self._logs[record.topic] = [[] for _ in range(self.partitions)]
        logs[self.partition_for(record.key)].append(record)
        self._pending += 1

    async def publish(self, records: Sequence[Record]) -> None:
        if self._pending + len(records) > self.max_records:
            raise BusUnavailable("in-process bus is full; consumers are behind", retry_after_s=1)
        for record in records:
            self._append(record)
        self._changed.set()

    def publish_nowait(self, record: Record) -> None:
        # The pixel never waits: a full in-process bus means consumers are far behind,
        # and the record is still kept (memory is the limit the README states).
        self._append(record)
        self._changed.set()

    def read(self, topic: str, partition: int, offset: int, limit: int) -> list[Record]:
        """Records of one partition from ``offset``; never blocks."""
        logs = self._logs.get(topic)
        if logs is None:
            return []
        return logs[partition][offset : offset + limit]

    def end_offset(self, topic: str, partition: int) -> int:
        logs = self._logs.get(topic)
        return len(logs[partition]) if logs else 0

"""Publishing to Kafka with aiokafka, falling back to the on-disk spool.

Contract (see ``Bus``): ``publish`` returns once every record is acked by
the broker (acks=all) or fsynced to the spool, and raises ``SpoolFull``
when neither can take them. While the spool holds records every new record
goes behind them, so replay keeps arrival order.

Group commit: ``publish`` and ``publish_nowait`` only queue their records;
one flusher sends everything queued as one batch per partition, waits for
the acks, then resolves each waiter. aiokafka keeps one pending batch per
partition, so concurrent senders would queue behind each other on a hot
partition (a popular cascade) and time out; merging them avoids that and
keeps one flush in flight, so the next flush gathers whatever arrived
while this one waited for its acks. A replayer task drains the
spool whenever the broker answers, and also at start-up. A record whose
send timed out may still reach the broker later and then also be replayed:
that duplicate is why every event carries an ``event_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.bus.base import Record, SpoolFull
from app.bus.partitioning import partition_for
from app.bus.spool import Spool
from app.metrics import ApiMetrics
from app.settings import KafkaSettings, SpoolSettings

log = logging.getLogger(__name__)

REPLAY_BATCH = 2_000
NOWAIT_FLUSH_RECORDS = 1_000


class KafkaBus:
    """The production bus. Owns one aiokafka producer and one spool."""

    def __init__(
        self,
        kafka: KafkaSettings,
        spool_settings: SpoolSettings,
        spool: Spool,
        metrics: ApiMetrics,
    ) -> None:
        self._settings = kafka
        self._retry_s = spool_settings.retry_interval_s
        self._spool = spool
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self._up = False
        self._buffer: list[Record] = []  # fire-and-forget records
        # Awaited publishes: their records, and a future that receives the ones
        # that could not be acked (the publisher spools those itself).
        self._waiters: list[tuple[Sequence[Record], asyncio.Future[list[Record]]]] = []
        self._wake = asyncio.Event()
        self._spool_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        # Partition counts per topic, read once: adding partitions to a live topic
        # moves cascades between partitions anyway, so restart producers after it.
        self._partition_counts: dict[str, int] = {}
        self._stopping = False
        metrics.spool_depth.set_function(lambda: self._spool.depth_records)
        metrics.spool_bytes.set_function(lambda: self._spool.depth_bytes)
        metrics.broker_up.set_function(lambda: 1.0 if self._up else 0.0)

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Starts the background tasks; never fails because the broker is down."""
        await self._connect()
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="bus-flush"),
            asyncio.create_task(self._replay_loop(), name="bus-replay"),
        ]

    async def stop(self) -> None:
        """Flushes buffered records (to the broker or the spool), then closes."""
        self._stopping = True
        self._wake.set()
        flusher, replayer = self._tasks or (None, None)
        if replayer is not None:
            # Safe to cancel: replayed records are acked in the spool only after the broker.
            replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replayer
        if flusher is not None:
            # Not cancelled: a flush owns records nobody else holds; let it finish.
            await flusher
        await self._flush()
        if self._producer is not None:
            with contextlib.suppress(KafkaError, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(self._producer.stop(), self._settings.send_timeout_s)
        await asyncio.to_thread(self._spool.close)

    def ready(self) -> bool:
        return self._up or self._spool.depth_bytes < self._spool.max_bytes

    @property
    def spool_depth(self) -> int:
        return self._spool.depth_records

    @property
    def broker_up(self) -> bool:
        return self._up

    # -- publishing ------------------------------------------------------------

    def publish_nowait(self, record: Record) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= NOWAIT_FLUSH_RECORDS:
            self._wake.set()

    def publish_many_nowait(self, records: Sequence[Record]) -> None:
        self._buffer.extend(records)
        if len(self._buffer) >= NOWAIT_FLUSH_RECORDS:
            self._wake.set()

    async def publish(self, records: Sequence[Record]) -> None:
        if not records:
            return
        if self._up and not self._spool.depth_records:
            future: asyncio.Future[list[Record]] = asyncio.get_running_loop().create_future()
            self._waiters.append((records, future))
            self._wake.set()
            records = await future
            if not records:
                return
        await self._to_spool(records)

    async def _to_spool(self, records: Sequence[Record]) -> None:
        async with self._spool_lock:
            await asyncio.to_thread(self._spool.append, records)
        self._metrics.spooled.inc(len(records))

    async def _send(self, records: Sequence[Record]) -> set[int]:
        """Sends and waits for acks; returns the indexes of the records not acked in time.

        Keyed records go as one ``BatchBuilder`` per topic-partition (far less
        per-record work in aiokafka than ``send``); the partition is the
        default partitioner's, so keys land exactly where a plain send puts them.
        """
        producer = self._producer
        if producer is None:
            return set(range(len(records)))
        started = time.perf_counter()
        submitted: list[tuple[list[int], asyncio.Future[object]]] = []
        try:
            async with asyncio.timeout(self._settings.send_timeout_s):
                for topic in {record.topic for record in records}:
                    await self._learn_partitions(producer, topic)
                counts = self._partition_counts
                groups: dict[tuple[str, int | None], list[int]] = {}
                for index, record in enumerate(records):
                    partition = (
                        None
                        if record.key is None
                        else partition_for(record.key, counts[record.topic])
                    )
                    groups.setdefault((record.topic, partition), []).append(index)
                for (topic, partition), indexes in groups.items():
                    await self._submit(producer, records, topic, partition, indexes, submitted)
                await asyncio.wait([future for _, future in submitted])
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("kafka send interrupted: %s", exc)
        acked: set[int] = set()
        for members, future in submitted:
            if not future.done():
                # Late acks are harmless duplicates of what we spool; silence them.
                future.add_done_callback(_consume_result)
            elif not future.cancelled() and future.exception() is None:
                acked.update(members)
        failed = set(range(len(records))) - acked
        if not failed:
            self._metrics.send_seconds.observe(time.perf_counter() - started)
        return failed

    @staticmethod
    async def _submit(
        producer: AIOKafkaProducer,
        records: Sequence[Record],
        topic: str,
        partition: int | None,
        indexes: list[int],
        submitted: list[tuple[list[int], asyncio.Future[object]]],
    ) -> None:
        """Queues one topic-partition's records; appends (members, ack future) pairs."""
        if partition is None:  # keyless: aiokafka spreads them
            for index in indexes:
                future = await producer.send(topic, value=records[index].value)
                submitted.append(([index], future))
            return
        batch, members = producer.create_batch(), list[int]()
        for index in indexes:
            record = records[index]
            if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                if members:
                    future = await producer.send_batch(batch, topic, partition=partition)
                    submitted.append((members, future))
                batch, members = producer.create_batch(), list[int]()
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:
                    # Larger than a whole batch: let send() size it (or refuse it).
                    future = await producer.send(
                        topic, value=record.value, key=record.key, partition=partition
                    )
                    submitted.append(([index], future))
                    continue
            members.append(index)
        if members:
            future = await producer.send_batch(batch, topic, partition=partition)
            submitted.append((members, future))

    async def _learn_partitions(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Caches the topic's partition count, so keyed records are partitioned in
        Python with the cached murmur2 instead of by aiokafka per record."""
        if topic not in self._partition_counts:
            self._partition_counts[topic] = len(await producer.partitions_for(topic))

    async def _flush(self) -> None:
        """Sends everything queued as one batch, or spools it while the broker is down."""
        buffer, self._buffer = self._buffer, []
        waiters, self._waiters = self._waiters, []
        if not buffer and not waiters:
            return
        if not self._up or self._spool.depth_records:
            # Waiters spool their own records, so that a full spool reaches them as 503.
            for records, future in waiters:
                _resolve(future, list(records))
            await self._spool_nowait(buffer)
            return
        batch = list(buffer)
        for records, _ in waiters:
            batch.extend(records)
        failed = await self._send(batch)
        if failed:
            self._mark_down("send failed or timed out")
        await self._spool_nowait([buffer[i] for i in range(len(buffer)) if i in failed])
        offset = len(buffer)
        for records, future in waiters:
            _resolve(future, [r for i, r in enumerate(records, offset) if i in failed])
            offset += len(records)

    async def _spool_nowait(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            await self._to_spool(records)
        except SpoolFull:
            log.error("spool full: dropped %s fire-and-forget records", len(records))
            for record in records:
                self._metrics.publish_dropped.labels(record.topic).inc()

    async def _flush_loop(self) -> None:
        linger = max(self._settings.linger_ms, 1) / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(linger):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush()
            if self._stopping:
                return

    # -- broker connection and replay -----------------------------------------

    def _mark_down(self, why: str) -> None:
        if self._up:
            log.warning("broker unreachable (%s): spooling to disk", why)
        self._up = False

    async def _connect(self) -> bool:
        """Starts the producer and creates topics; False when the broker is unreachable."""
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self._settings.bootstrap,
                client_id=self._settings.client_id,
                acks="all",
                enable_idempotence=self._settings.idempotence,
                compression_type=None
                if self._settings.compression == "none"
                else self._settings.compression,
                linger_ms=self._settings.linger_ms,
                max_request_size=self._settings.max_request_size,
                request_timeout_ms=int(self._settings.send_timeout_s * 1000),
                max_batch_size=self._settings.max_batch_bytes,
            )
            try:
                async with asyncio.timeout(self._settings.send_timeout_s):
                    await producer.start()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("kafka producer cannot start yet: %s", exc)
                with contextlib.suppress(Exception):
                    await producer.stop()
                return False
            self._producer = producer
        if self._settings.create_topics:
            try:
                await self._ensure_topics()
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("cannot ensure topics yet: %s", exc)
                return False
        if not self._spool.depth_records:
            self._up = True
        return True

    async def _ensure_topics(self) -> None:
        s = self._settings
        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap, client_id=s.client_id)
        async with asyncio.timeout(self._settings.send_timeout_s):
            await admin.start()
            try:
                existing = set(await admin.list_topics())
                wanted = [
                    NewTopic(name, s.partitions, s.replication_factor)
                    for name in (s.topic, s.dlq_topic, s.signals_topic)
                    if name not in existing
                ]
                if wanted:
                    with contextlib.suppress(TopicAlreadyExistsError):
                        await admin.create_topics(wanted)
            finally:
                await admin.close()

    async def _replay_loop(self) -> None:
        while not self._stopping:
            if self._producer is None and not await self._connect():
                await asyncio.sleep(self._retry_s)
                continue
            if not self._spool.depth_records:
                self._up = True
                await asyncio.sleep(self._retry_s / 10)
                continue
            async with self._spool_lock:
                batch = await asyncio.to_thread(self._spool.peek, REPLAY_BATCH)
            if await self._send(batch):
                self._mark_down("replay send failed")
                await asyncio.sleep(self._retry_s)
                continue
            async with self._spool_lock:
                await asyncio.to_thread(self._spool.ack, len(batch))
            self._metrics.replayed.inc(len(batch))
            log.info("replayed %s records from the spool", len(batch))


def _resolve(future: asyncio.Future[list[Record]], failed: list[Record]) -> None:
    if not future.done():  # the publisher may have been cancelled (client went away)
        future.set_result(failed)


def _consume_result(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()

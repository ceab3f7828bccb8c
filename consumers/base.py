"""Shared consumer plumbing: decode -> validate -> process -> batch -> write -> commit.

A consumer is a ``Pipeline`` (its pure ``process`` step and its ``write``
I/O step) run by a ``ConsumerRunner``, which owns everything Kafka: the
group membership, batching, the dead-letter topic, retries with
backpressure, commits and shutdown. Written once, used by every consumer.

Delivery contract (at least once, commit last):

- Offsets are committed manually, ``last_offset + 1`` per partition, only
  after the batch holding those records was written. A poison record
  (``InvalidMessage``) is published to the DLQ topic (awaited, acks=all)
  before its offset can be committed, so it is never dropped silently.
- A write is retried with the SAME rows and the SAME dedup token (derived
  from the batch's topic/partition/offset ranges, see ``Batch.dedup_token``)
  until it succeeds, with exponential backoff; meanwhile every assigned
  partition is paused (``consumer.pause``) and nothing is committed.
  Retriable and non-retriable ``StorageError`` are treated alike (the latter
  logged as an error): a batch is never dropped and nothing is committed past it.
- On a rebalance, ``on_partitions_revoked`` flushes the batch (write and
  commit). If that single write attempt fails, the batch is discarded
  WITHOUT committing: the records are delivered again to whoever owns the
  partitions next.
- SIGTERM/SIGINT (see ``install_signal_handlers``) or ``stop`` set a flag;
  the loop exits, makes one last write+commit attempt and stops the
  consumer in ``finally``. A write still failing at shutdown is not
  committed (redelivered after restart).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.bus.base import BusError
from app.settings import ConsumerSettings, Settings
from app.storage.clickhouse import ClickHouse, StorageError

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
# Upper bound of each shutdown step (final write+commit, consumer stop).
SHUTDOWN_STEP_S = 10.0


class Record(Protocol):
    """What the pipelines read of a Kafka record (aiokafka's ``ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


Clock = Callable[[], float]


class InvalidMessage(Exception):
    """A poison message: it can never be processed. Goes to the DLQ with ``reason``."""

    def __init__(self, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"partition {partition} offset {offset}: {reason}")
        self.partition = partition
        self.offset = offset
        self.reason = reason


def json_object(record: Record) -> dict[str, Any]:
    """The record's value as a JSON object; raises ``InvalidMessage`` (bad_json / bad_schema)."""
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        raise InvalidMessage(record.partition, record.offset, "bad_json") from None
    if not isinstance(value, dict):
        raise InvalidMessage(record.partition, record.offset, "bad_schema: not an object")
    return value


class Pipeline(Protocol):
    """A consumer's own part: a pure ``process`` step and an I/O ``write`` step."""

    name: str

    def process(self, record: Record) -> Sequence[Row]:
        """Rows for one record. Pure (no I/O, never blocks); raises ``InvalidMessage``."""
        ...

    def received_ms(self, row: Row) -> int | None:
        """When the event behind ``row`` reached us (ms since the epoch), for latency metrics."""
        ...

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        """Write a batch; raises ``StorageError``. Must be idempotent for a given token."""
        ...


class StatefulPipeline(Pipeline, Protocol):
    """A pipeline whose ``process`` reads state that lives beside it (the cascades).

    ``prepare`` loads what the records of one fetch need (e.g. restores state
    from storage) before ``process`` sees them; it raises ``StorageError`` to
    be retried. ``revoked`` is called after the revoke-time flush: the state of
    those partitions now belongs to another consumer. Optional class
    attributes ``batch_max_records`` / ``batch_max_seconds`` override the
    consumer settings for this pipeline.
    """

    async def prepare(self, records: Sequence[Record]) -> None: ...

    def revoked(self, partitions: set[TopicPartition]) -> None: ...


@dataclass
class Batch:
    """Processed rows plus the offset range read per partition.

    ``ready(now)`` once it holds ``max_records`` records (poison ones included:
    their offsets need committing too) or its first record is ``max_seconds``
    old. ``now`` comes from the caller's clock, so tests drive it without sleeping.
    """

    max_records: int
    max_seconds: float
    rows: list[Row] = field(default_factory=list)
    # partition -> (first offset, last offset)
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    records: int = 0
    started: float | None = None

    def add(self, tp: TopicPartition, offset: int, rows: Sequence[Row], now: float) -> None:
        if self.started is None:
            self.started = now
        first, _ = self.ranges.get(tp, (offset, offset))
        self.ranges[tp] = (first, offset)
        self.rows.extend(rows)
        self.records += 1

    def __bool__(self) -> bool:
        return self.records > 0

    def ready(self, now: float) -> bool:
        if not self.records:
            return False
        assert self.started is not None
        return self.records >= self.max_records or now - self.started >= self.max_seconds

    def seconds_left(self, now: float) -> float | None:
        """Time until the batch is due by age; None when empty."""
        if self.started is None:
            return None
        return max(0.0, self.max_seconds - (now - self.started))

    def dedup_token(self, name: str) -> str:
        """``name:topic:p:first-last;p:first-last`` (partitions sorted; one topic per runner).

        The same batch always yields the same token, so a retried insert is a
        no-op in ClickHouse if the earlier attempt landed after all.
        """
        by_topic: dict[str, list[str]] = {}
        for tp in sorted(self.ranges, key=lambda tp: (tp.topic, tp.partition)):
            first, last = self.ranges[tp]
            by_topic.setdefault(tp.topic, []).append(f"{tp.partition}:{first}-{last}")
        return "|".join(f"{name}:{topic}:{';'.join(parts)}" for topic, parts in by_topic.items())

    def commit_offsets(self) -> dict[TopicPartition, int]:
        return {tp: last + 1 for tp, (_, last) in self.ranges.items()}


# Fine below 5 s: the event-to-queryable percentiles are read from these.
END_TO_END_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.1, 1.2, 1.35, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 10, 30, 60, 300, 1800,
)  # fmt: skip


class ConsumerMetrics:
    """The consumer metric catalogue (one instance per registry, labelled by consumer).

    - ``viraltrace_consumer_batch_records``: records per written batch (histogram, records).
    - ``viraltrace_consumer_write_seconds``: duration of one successful write (histogram, s).
    - ``viraltrace_consumer_end_to_end_seconds``: event ``received_at`` to written (hist., s).
    - ``viraltrace_consumer_dlq_messages_total``: poison messages by reason class (counter).
    - ``viraltrace_consumer_write_errors_total``: failed write attempts (counter).
    - ``viraltrace_consumer_committed_records_total``: records whose offsets were committed.
    - ``viraltrace_consumer_lag_records``: highwater minus the next offset to read, per
      partition, as of the last fetch (gauge, records); dropped when the partition is revoked.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batch_records = Histogram(
            "viraltrace_consumer_batch_records",
            "Records per written batch",
            ["consumer"],
            buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000),
            registry=registry,
        )
        self.write_seconds = Histogram(
            "viraltrace_consumer_write_seconds",
            "Duration of one successful batch write",
            ["consumer"],
            registry=registry,
        )
        self.end_to_end_seconds = Histogram(
            "viraltrace_consumer_end_to_end_seconds",
            "From an event's received_at to its batch being written",
            ["consumer"],
            buckets=END_TO_END_BUCKETS_S,
            registry=registry,
        )
        self.dlq_messages = Counter(
            "viraltrace_consumer_dlq_messages_total",
            "Poison messages dead-lettered (or skipped by the DLQ sink)",
            ["consumer", "reason"],
            registry=registry,
        )
        self.write_errors = Counter(
            "viraltrace_consumer_write_errors_total",
            "Failed batch write attempts",
            ["consumer", "retriable"],
            registry=registry,
        )
        self.committed_records = Counter(
            "viraltrace_consumer_committed_records_total",
            "Records whose offsets were committed",
            ["consumer"],
            registry=registry,
        )
        self.lag_records = Gauge(
            "viraltrace_consumer_lag_records",
            "Highwater minus next offset to read, as of the last fetch",
            ["consumer", "topic", "partition"],
            registry=registry,
        )


class Transport(Protocol):
    """Makes a runner's clients: Kafka (``KafkaTransport``) or the in-process ``MemoryBus``.

    The consumer has the ``AIOKafkaConsumer`` subset the runner uses (start,
    stop, subscribe, getmany, pause, resume, paused, assignment, highwater,
    commit) with manual commit and reset to earliest; the producer has
    ``start``, ``stop`` and ``send_and_wait`` with acks from every replica.
    """

    def consumer(self, group_id: str, name: str, max_poll_records: int) -> Any: ...

    def producer(self, name: str) -> Any: ...


@dataclass(frozen=True)
class KafkaTransport:
    """aiokafka clients for ``bootstrap``."""

    bootstrap: str
    idempotence: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaTransport:
        """Raises ``ValueError`` when ``kafka.bootstrap`` is unset (that is the embedded mode)."""
        if not settings.kafka.bootstrap:
            raise ValueError("the Kafka consumers need settings.kafka.bootstrap")
        return cls(settings.kafka.bootstrap, settings.kafka.idempotence)

    def consumer(self, group_id: str, name: str, max_poll_records: int) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group_id,
            client_id=f"viraltrace-{name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
        )

    def producer(self, name: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=f"viraltrace-{name}-dlq",
            acks="all",
            enable_idempotence=self.idempotence,
        )


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, with one lock round per bucket.

    Observing a 10k-row batch one value at a time cost about a tenth of the
    sink's time. prometheus-client has no bulk observe, so this adds to the
    child's bucket and sum values (internals of the pinned prometheus-client
    0.26; tests check the exported counts equal the rows written).
    """
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(sum(values))


class _RateLimitedLog:
    """At most one poison-message log line per ``interval_s``; counts the ones skipped."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.last = -float("inf")
        self.suppressed = 0

    def allow(self) -> int | None:
        """None to skip this line, else how many lines were skipped since the last one."""
        now = time.monotonic()
        if now - self.last < self.interval_s:
            self.suppressed += 1
            return None
        self.last, suppressed, self.suppressed = now, self.suppressed, 0
        return suppressed


class _Stopping(Exception):
    """Raised inside the loop when stop was requested while waiting for a dependency."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.runner.flush_on_revoke(set(revoked))
        self.runner.forget_lag(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("%s: assigned %s", self.runner.name, sorted(str(tp) for tp in assigned))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ConsumerRunner:
    """Runs one ``Pipeline`` over one topic in consumer group ``{group_prefix}-{name}``.

    ``run()`` blocks (awaits) until ``stop`` is set, then flushes, commits and
    stops the consumer. It never raises for bad messages or failing writes.
    ``dlq_topic=None`` means poison messages are logged, counted and skipped
    (their offsets committed with the batch): use it only for the DLQ's own sink.
    ``transport`` makes the consumer and the DLQ producer (``KafkaTransport``,
    or the in-process ``MemoryBus``): the same runner code on both buses.
    ``clock`` is monotonic seconds (batch age); tests may replace it.
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        topic: str,
        *,
        transport: Transport,
        metrics: ConsumerMetrics,
        stop: asyncio.Event,
        dlq_topic: str | None,
        clock: Clock = time.monotonic,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self.name = pipeline.name
        self.pipeline = pipeline
        self.topic = topic
        self.transport = transport
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        self.poll_timeout_s = poll_timeout_s
        self.cfg = settings.consumer
        self.group_id = f"{self.cfg.group_prefix}-{self.name}"
        # Built in run(): aiokafka clients belong to the running loop.
        self.consumer: Any = None
        self.producer: Any = None
        self.batch = self._new_batch()
        self._lock = asyncio.Lock()
        self._poison_log = _RateLimitedLog()
        self.writes = 0  # successful writes, for tests and logs
        self._generation = 0  # bumped on every revoke

    def _new_batch(self) -> Batch:
        return Batch(
            getattr(self.pipeline, "batch_max_records", self.cfg.batch_max_records),
            getattr(self.pipeline, "batch_max_seconds", self.cfg.batch_max_seconds),
        )

    # ---- main loop -------------------------------------------------------

    async def run(self) -> None:
        """Consume until ``stop`` is set; see the class docstring. Blocks."""
        self.consumer = self.transport.consumer(self.group_id, self.name, self.cfg.max_poll_records)
        if self.dlq_topic is not None:
            self.producer = self.transport.producer(self.name)
        try:
            if self.producer is not None:
                await self.producer.start()
            await self.consumer.start()
            self.consumer.subscribe([self.topic], listener=_Listener(self))
            try:
                await self._loop()
            except _Stopping:
                pass
            finally:
                try:
                    async with asyncio.timeout(SHUTDOWN_STEP_S):
                        await self._final_flush()
                except TimeoutError:
                    log.warning("%s: final flush timed out; left uncommitted", self.name)
        finally:
            # Bounded: a broker that never settles the group must not hold up exit.
            try:
                async with asyncio.timeout(SHUTDOWN_STEP_S):
                    await self.consumer.stop()
            except TimeoutError:
                log.warning("%s: consumer stop timed out", self.name)
            if self.producer is not None:
                await self.producer.stop()

    async def _loop(self) -> None:
        pending: dict[TopicPartition, list[Record]] = {}
        generation = self._generation
        while not self.stop.is_set():
            if not pending:
                left = self.batch.seconds_left(self.clock())
                timeout = self.poll_timeout_s if left is None else min(left, self.poll_timeout_s)
                pending = await self.consumer.getmany(
                    timeout_ms=int(timeout * 1000), max_records=self.cfg.max_poll_records
                )
                # Records a poll returns belong to the assignment current when it returns.
                generation = self._generation
            fetched, pending = pending, {}
            if fetched and not await self._prepare(fetched, generation):
                continue  # a rebalance reset the positions: this fetch comes again
            for tp, records in fetched.items():
                for record in records:
                    if self._generation != generation:
                        # A rebalance ran while a DLQ publish was awaited: the batch
                        # was flushed or discarded and the positions were reset to the
                        # committed offsets, so the rest of this fetch is read again.
                        break
                    await self._handle(tp, record)
                self._observe_lag(tp, records)
            if self.batch.ready(self.clock()):
                pending, generation = await self._flush_until_written()

    async def _prepare(self, fetched: dict[TopicPartition, list[Record]], generation: int) -> bool:
        """``pipeline.prepare`` for one fetch, retried with backoff while storage fails.

        False when a rebalance happened meanwhile (the fetch is stale). While it
        retries nothing is processed; the consumer is not polled, so an outage
        longer than ``max.poll.interval.ms`` costs a rebalance, which is safe:
        nothing of this fetch was processed or committed.
        """
        prepare = getattr(self.pipeline, "prepare", None)
        if prepare is None:
            return True
        records = [record for batch in fetched.values() for record in batch]
        delay = self.cfg.retry_initial_s
        while self._generation == generation:
            try:
                await prepare(records)
                return True
            except StorageError as exc:
                log.warning("%s: prepare failed, retrying in %.2fs: %s", self.name, delay, exc)
            if await self._wait_stop(delay):
                raise _Stopping
            delay = min(delay * 2, self.cfg.retry_max_s)
        return False

    async def _handle(self, tp: TopicPartition, record: Record) -> None:
        try:
            rows = self.pipeline.process(record)
        except InvalidMessage as exc:
            await self._dead_letter(record, exc)
            rows = ()
        except Exception as exc:  # a bug in process(): dead-letter it rather than crash
            log.exception("%s: process() raised on %s:%d", self.name, tp, record.offset)
            error = InvalidMessage(record.partition, record.offset, f"process_error: {exc!r}")
            await self._dead_letter(record, error)
            rows = ()
        self.batch.add(tp, record.offset, rows, self.clock())

    def forget_lag(self, partitions: Iterable[TopicPartition]) -> None:
        """Drops the lag series of partitions given up in a rebalance: their next owner
        reports them, and a stale copy here would be added into every sum over the group.
        Partitions kept through the rebalance report again on their next fetch."""
        for tp in partitions:
            self.metrics.lag_records.remove(self.name, tp.topic, str(tp.partition))

    def _observe_lag(self, tp: TopicPartition, records: list[Record]) -> None:
        if not records:
            return
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            self.metrics.lag_records.labels(self.name, tp.topic, str(tp.partition)).set(
                max(0, highwater - records[-1].offset - 1)
            )

    # ---- dead letters ----------------------------------------------------

    async def _dead_letter(self, record: Record, exc: InvalidMessage) -> None:
        reason_class = exc.reason.split(":", 1)[0]
        self.metrics.dlq_messages.labels(self.name, reason_class).inc()
        suppressed = self._poison_log.allow()
        if suppressed is not None:
            log.warning(
                "%s: poison message %s:%d:%d: %s (%d similar not logged)",
                self.name,
                record.topic,
                record.partition,
                record.offset,
                exc.reason,
                suppressed,
            )
        if self.producer is None or self.dlq_topic is None:
            return  # the DLQ's own sink: logged, counted, skipped
        payload = record.value.decode("utf-8", "replace") if record.value is not None else ""
        reason, _, detail = exc.reason.partition(":")
        body = orjson.dumps(
            {
                "reason": reason,
                "field": None,
                "message": detail.strip() or reason,
                "source": f"consumer:{self.name}",
                "received_at": now_ms(),
                "payload": payload,
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
            }
        )
        delay = self.cfg.retry_initial_s
        while True:
            try:
                await self.producer.send_and_wait(self.dlq_topic, body, key=record.key)
                return
            except (KafkaError, BusError):
                log.warning("%s: DLQ publish failed, retrying", self.name, exc_info=True)
            if await self._wait_stop(delay):
                raise _Stopping
            delay = min(delay * 2, self.cfg.retry_max_s)

    # ---- write and commit ------------------------------------------------

    async def _write_and_commit(self, batch: Batch) -> None:
        """One write attempt then the commit; raises ``StorageError`` if the write fails."""
        if batch.rows:
            token = batch.dedup_token(self.name)
            started = time.perf_counter()
            try:
                await self.pipeline.write(batch.rows, token)
            except StorageError as exc:
                self.metrics.write_errors.labels(self.name, str(exc.retriable).lower()).inc()
                raise
            written = time.perf_counter()
            self.metrics.write_seconds.labels(self.name).observe(written - started)
            self._observe_end_to_end(batch.rows)
            self.writes += 1
        self.metrics.batch_records.labels(self.name).observe(batch.records)
        offsets = {
            tp: OffsetAndMetadata(offset, "") for tp, offset in batch.commit_offsets().items()
        }
        try:
            await self.consumer.commit(offsets)
            self.metrics.committed_records.labels(self.name).inc(batch.records)
        except KafkaError:
            # The rows are written; the records come again and are deduplicated.
            log.warning("%s: commit of %s failed", self.name, offsets, exc_info=True)

    def _observe_end_to_end(self, rows: Sequence[Row]) -> None:
        now = now_ms()
        received_ms = self.pipeline.received_ms
        seconds = [
            max(0.0, (now - received) / 1000)
            for received in map(received_ms, rows)
            if received is not None
        ]
        observe_many(self.metrics.end_to_end_seconds.labels(self.name), seconds)

    async def _flush_until_written(
        self,
    ) -> tuple[dict[TopicPartition, list[Record]], int]:
        """Write and commit the batch, retrying with backoff while the partitions are paused.

        Between attempts the lock is released (a rebalance may flush or discard
        the batch meanwhile) and the consumer is polled with the backoff as
        timeout, which keeps the group membership alive without fetching from
        paused partitions. Records a poll still returns (partitions newly
        assigned after a rebalance) are handed back for processing.
        Raises ``_Stopping`` if stop is requested while the write keeps failing.
        """
        delay = self.cfg.retry_initial_s
        paused: set[TopicPartition] = set()
        pending: dict[TopicPartition, list[Record]] = {}
        pending_generation = self._generation
        try:
            while True:
                async with self._lock:
                    batch = self.batch
                    if not batch:
                        return pending, pending_generation  # flushed or dropped on revoke
                    try:
                        await self._write_and_commit(batch)
                        self.batch = self._new_batch()
                        return pending, pending_generation
                    except StorageError as exc:
                        log_fn = log.warning if exc.retriable else log.error
                        log_fn(
                            "%s: write failed (retriable=%s), retrying in %.2fs: %s",
                            self.name,
                            exc.retriable,
                            delay,
                            exc,
                        )
                if self.stop.is_set():
                    raise _Stopping
                assigned = self.consumer.assignment()
                if assigned - paused:
                    self.consumer.pause(*assigned)
                    paused |= assigned
                got = await self.consumer.getmany(timeout_ms=int(delay * 1000), max_records=1)
                if self._generation != pending_generation:
                    pending = {}  # fetched under an assignment that is gone
                    pending_generation = self._generation
                for tp, records in got.items():
                    pending.setdefault(tp, []).extend(records)
                delay = min(delay * 2, self.cfg.retry_max_s)
        finally:
            if paused:
                # Only partitions still assigned; the rest went away with a rebalance.
                self.consumer.resume(*(paused & self.consumer.assignment()))

    async def flush_on_revoke(self, revoked: set[TopicPartition] | None = None) -> None:
        """Rebalance: write and commit the batch once; on failure drop it uncommitted.

        Then a ``StatefulPipeline`` drops the state of ``revoked`` (all partitions when None).
        """
        async with self._lock:
            self._generation += 1
            batch, self.batch = self.batch, self._new_batch()
            try:
                if batch:
                    await self._write_and_commit(batch)
                    log.info("%s: flushed %d records on revoke", self.name, batch.records)
            except StorageError:
                log.warning(
                    "%s: write failed on revoke; %d records left uncommitted (redelivered)",
                    self.name,
                    batch.records,
                    exc_info=True,
                )
            finally:
                drop = getattr(self.pipeline, "revoked", None)
                if drop is not None:
                    drop(revoked if revoked is not None else set(self.consumer.assignment()))

    async def _final_flush(self) -> None:
        async with self._lock:
            batch, self.batch = self.batch, self._new_batch()
            if not batch:
                return
            try:
                await self._write_and_commit(batch)
            except StorageError:
                log.warning(
                    "%s: final write failed; %d records left uncommitted (redelivered)",
                    self.name,
                    batch.records,
                    exc_info=True,
                )

    async def _wait_stop(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stop is set; True if stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()


def tune_gc(settings: ConsumerSettings) -> None:
    """Set this process's young-generation GC threshold (``consumer.gc_threshold``),
    and move what start-up made (modules, settings) out of the collector's scans.

    For processes that run consumers: ``viraltrace consume ...`` and ``up``. Garbage
    cycles are still collected, just in larger batches."""
    if settings.gc_threshold:
        _, middle, oldest = gc.get_threshold()
        gc.set_threshold(settings.gc_threshold, middle, oldest)
    gc.collect()
    gc.freeze()


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (call inside the running loop); returns an undo."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)

    def undo() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return undo


@contextlib.asynccontextmanager
async def open_clickhouse(
    settings: Settings, clickhouse: ClickHouse | None = None
) -> AsyncIterator[ClickHouse]:
    """``clickhouse`` as is (the caller closes it), else a client for
    ``settings.clickhouse_dsn`` closed on exit. Raises ``StorageError``."""
    if clickhouse is not None:
        yield clickhouse
        return
    ch = await asyncio.to_thread(ClickHouse, settings.clickhouse_dsn)
    try:
        yield ch
    finally:
        await asyncio.to_thread(ch.close)


def publisher(runner: ConsumerRunner) -> Callable[[str, bytes, bytes], Awaitable[None]]:
    """``publish(topic, key, value)`` through ``runner``'s producer (the DLQ one),
    awaiting the broker's ack; for pipelines that publish what they derive."""

    async def publish(topic: str, key: bytes, value: bytes) -> None:
        await runner.producer.send_and_wait(topic, value, key=key)

    return publish


async def run_all(runners: Sequence[ConsumerRunner], stop: asyncio.Event) -> None:
    """Run runners together; if one fails unexpectedly, stop the others and re-raise."""
    tasks = [asyncio.create_task(r.run(), name=f"consumer-{r.name}") for r in runners]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

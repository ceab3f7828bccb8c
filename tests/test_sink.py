"""The ClickHouse sink end to end: real brokers (both), real ClickHouse (chdb).

chdb hosts one engine path per process at a time, so the module shares one
data directory (kept open by the ``engine`` fixture) and each test gets its
own database, topics and consumer group.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from app.settings import Settings
from app.storage.clickhouse import ClickHouse, StorageError
from consumers.base import ConsumerMetrics, ConsumerRunner, KafkaTransport, Record, Row, run_all
from consumers.sink.pipeline import EventsPipeline
from consumers.sink.runner import run_sink, sink_runners
from tests.conftest import make_settings, require_env
from tests.test_storage import make_event as storage_event

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

PARTITIONS = 4
CAMPAIGNS = ["spring", "summer", "autumn"]
TYPES = ["view", "click", "share"]


def sink_settings(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str, **consumer: Any
) -> Settings:
    _, bootstrap, idempotence = broker
    return make_settings(
        tmp_path,
        kafka={
            "bootstrap": bootstrap,
            "idempotence": idempotence,
            "topic": f"sink-{unique}",
            "dlq_topic": f"sink-dlq-{unique}",
        },
        consumer={
            "group_prefix": f"test-{unique}",
            "batch_max_records": 3_000,
            "batch_max_seconds": 0.3,
            "max_poll_records": 1_000,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
            **consumer,
        },
    )


async def create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(t, PARTITIONS, 1) for t in (settings.kafka.topic, settings.kafka.dlq_topic)]
        )
    finally:
        await admin.close()


def make_event(rng: random.Random, base_ms: int) -> dict[str, Any]:
    """A valid wire event (``test_storage.make_event``) from the last three hours before base_ms."""
    ts = base_ms - rng.randrange(0, 3 * 3_600_000)
    return storage_event(rng, ts=ts, received_at=ts + rng.randrange(0, 500))


async def produce(
    settings: Settings, messages: Sequence[tuple[bytes, bytes]]
) -> dict[TopicPartition, int]:
    """Send (key, value) pairs; return the end offset (last offset + 1) per partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        enable_idempotence=settings.kafka.idempotence,
        acks="all",
        linger_ms=5,
    )
    await producer.start()
    ends: dict[TopicPartition, int] = {}
    try:
        for start in range(0, len(messages), 2_000):
            futures = [
                await producer.send(settings.kafka.topic, value, key=key)
                for key, value in messages[start : start + 2_000]
            ]
            for meta in await asyncio.gather(*futures):
                tp = TopicPartition(meta.topic, meta.partition)
                ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    finally:
        await producer.stop()
    return ends


async def committed(settings: Settings, group: str, topic: str) -> dict[TopicPartition, int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=f"{settings.consumer.group_prefix}-{group}",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        ok, last = await check()
        if ok:
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last seen: {last}")


async def scalar(migrated: ClickHouse, sql: str) -> Any:
    rows = await migrated.aquery_rows(sql)
    return rows[0][0]


def workload(
    n: int, duplicates: int, seed: int = 7
) -> tuple[list[tuple[bytes, bytes]], Counter[tuple[str, str]]]:
    """n unique events, `duplicates` re-sends of some of them and 3 poison messages."""
    rng = random.Random(seed)
    base_ms = time.time_ns() // 1_000_000
    events = [make_event(rng, base_ms) for _ in range(n)]
    messages = [(e["campaign"].encode(), orjson.dumps(e)) for e in events]
    messages += rng.sample(messages, duplicates)  # byte-identical re-deliveries
    poison = [
        (b"p", b"{not json"),
        (b"p", orjson.dumps({**events[0], "event_id": "nope"})),
        (b"p", orjson.dumps({**events[1], "v": 2})),
    ]
    rng.shuffle(messages)
    messages[100:100] = poison[:1]
    messages[5_000:5_000] = poison[1:2]
    messages.append(poison[2])
    expected = Counter((e["campaign"], e["type"]) for e in events)
    return messages, expected


async def check_counts(migrated: ClickHouse, expected: Counter[tuple[str, str]]) -> None:
    n = sum(expected.values())
    assert await scalar(migrated, "SELECT count() FROM events FINAL") == n
    assert await scalar(migrated, "SELECT uniqExact(event_id) FROM events") == n
    raw = await migrated.aquery_rows(
        "SELECT campaign, type, count() FROM events FINAL GROUP BY campaign, type"
    )
    rollup = await migrated.aquery_rows(
        "SELECT campaign, type, uniqExactMerge(events) FROM events_per_hour GROUP BY campaign, type"
    )
    assert {(c, t): k for c, t, k in raw} == dict(expected)
    assert {(c, t): k for c, t, k in rollup} == dict(expected)


async def test_sink_writes_every_event_once_and_commits_to_the_end(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str, migrated: ClickHouse
) -> None:
    settings = sink_settings(tmp_path, broker, unique)
    await create_topics(settings)
    messages, expected = workload(50_000, 5_000)
    ends = await produce(settings, messages)
    assert sum(ends.values()) == len(messages) == 55_003

    stop = asyncio.Event()
    registry = CollectorRegistry()
    task = asyncio.create_task(run_sink(settings, stop, clickhouse=migrated, registry=registry))
    try:

        async def written() -> tuple[bool, Any]:
            seen = (
                await scalar(migrated, "SELECT count() FROM events FINAL"),
                await scalar(migrated, "SELECT count() FROM events_dlq"),
            )
            return seen == (50_000, 3), seen

        await wait_for(written, 120, "50,000 events and 3 dead letters")

        async def all_committed() -> tuple[bool, Any]:
            got = await committed(settings, "sink", settings.kafka.topic)
            # Partitions that received nothing have nothing to commit.
            return {tp: v for tp, v in got.items() if v is not None} == ends, got

        await wait_for(all_committed, 30, f"committed offsets == end offsets {ends}")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    await check_counts(migrated, expected)
    dlq = await migrated.aquery_rows(
        "SELECT reason, message, source, payload, topic FROM events_dlq ORDER BY reason, message"
    )
    assert [(r[0], r[2], r[4]) for r in dlq] == [
        ("bad_json", "consumer:sink", settings.kafka.topic),
        ("bad_schema", "consumer:sink", settings.kafka.topic),
        ("bad_schema", "consumer:sink", settings.kafka.topic),
    ]
    assert dlq[0][3] == "{not json"
    assert sorted(r[1].split(":")[0] for r in dlq[1:]) == ["event_id", "v"]
    # Every DLQ message was written, then committed (the DLQ topic's offsets start at 0).
    dlq_commits = await committed(settings, "sink-dlq", settings.kafka.dlq_topic)
    assert sum(v or 0 for v in dlq_commits.values()) == 3

    def metric(name: str, **labels: str) -> float:
        value = registry.get_sample_value(name, labels)
        return value or 0.0

    assert metric("viraltrace_consumer_dlq_messages_total", consumer="sink", reason="bad_json") == 1
    assert (
        metric("viraltrace_consumer_dlq_messages_total", consumer="sink", reason="bad_schema") == 2
    )
    assert metric("viraltrace_consumer_batch_records_sum", consumer="sink") == 55_003
    assert metric("viraltrace_consumer_write_seconds_count", consumer="sink") >= 1
    assert metric("viraltrace_consumer_end_to_end_seconds_count", consumer="sink") == 55_000
    assert metric("viraltrace_consumer_committed_records_total", consumer="sink") == 55_003


class FlakyPipeline:
    """The real events pipeline whose first ``fail`` writes raise a retriable error."""

    name = "sink"

    def __init__(self, inner: EventsPipeline, fail: int) -> None:
        self.inner = inner
        self.fail = fail
        self.attempts: list[tuple[str, int]] = []  # (token, paused partitions) per failure
        self.committed_while_failing: list[dict[TopicPartition, int | None]] = []
        self.runner: ConsumerRunner | None = None
        self.settings: Settings | None = None

    def process(self, record: Record) -> Sequence[Row]:
        return self.inner.process(record)

    def received_ms(self, row: Row) -> int | None:
        return self.inner.received_ms(row)

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        assert self.runner is not None and self.settings is not None
        if len(self.attempts) < self.fail:
            self.attempts.append((dedup_token, len(self.runner.consumer.paused())))
            self.committed_while_failing.append(
                await committed(self.settings, "sink", self.settings.kafka.topic)
            )
            raise StorageError("clickhouse is down (test)", retriable=True)
        await self.inner.write(rows, dedup_token)


async def test_failing_writes_pause_and_commit_nothing_until_they_succeed(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str, migrated: ClickHouse
) -> None:
    # One big batch by size, so the first write holds every record.
    settings = sink_settings(tmp_path, broker, unique, batch_max_records=3_003, batch_max_seconds=2)
    await create_topics(settings)
    messages, expected = workload(2_500, 500, seed=11)
    ends = await produce(settings, messages)
    assert sum(ends.values()) == 3_003

    flaky = FlakyPipeline(EventsPipeline(migrated), fail=4)
    flaky.settings = settings
    stop = asyncio.Event()
    runners = sink_runners(
        settings,
        migrated,
        stop,
        ConsumerMetrics(CollectorRegistry()),
        KafkaTransport.from_settings(settings),
        events_pipeline=flaky,
    )
    flaky.runner = runners[0]
    task = asyncio.create_task(run_all(runners, stop))
    try:

        async def written() -> tuple[bool, Any]:
            seen = await scalar(migrated, "SELECT count() FROM events FINAL")
            return seen == 2_500, seen

        await wait_for(written, 90, "2,500 events")

        async def all_committed() -> tuple[bool, Any]:
            got = await committed(settings, "sink", settings.kafka.topic)
            # Partitions that received nothing have nothing to commit.
            return {tp: v for tp, v in got.items() if v is not None} == ends, got

        await wait_for(all_committed, 30, f"committed offsets == end offsets {ends}")
        assert runners[0].consumer.paused() == set()  # resumed after the write succeeded
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)

    assert len(flaky.attempts) == 4
    tokens = {token for token, _ in flaky.attempts}
    assert len(tokens) == 1, "every retry of a batch carries the same dedup token"
    assert tokens.pop().startswith(f"sink:{settings.kafka.topic}:")
    # Paused from the first failure until success (the first attempt precedes the pause).
    assert all(paused > 0 for _, paused in flaky.attempts[1:])
    for seen in flaky.committed_while_failing:
        assert all(offset is None for offset in seen.values()), seen
    assert runners[0].writes >= 1
    await check_counts(migrated, expected)


async def test_rebalance_flushes_on_revoke(
    tmp_path: Path, unique: str, migrated: ClickHouse
) -> None:
    """A second member joins while the first holds an unwritten batch.

    Batches never fill by size or age here, so rows can only reach ClickHouse
    through the revoke flush (or the final flush, after ``stop``). The commit
    made in ``on_partitions_revoked`` must land, so the new owner reads
    nothing twice and the committed offsets reach the end.

    Runs on Tansu only. noida-db 0.2.2 refuses a commit made in
    ``on_partitions_revoked`` (IllegalGeneration; Apache Kafka accepts the
    current generation's commits while a rebalance is prepared) and the group
    then never settles: the joining member never gets partitions. Reproduced
    with two plain aiokafka consumers whose listener commits on revoke.
    """
    broker = ("tansu", require_env("VIRALTRACE_TEST_KAFKA_TANSU"), False)
    settings = sink_settings(
        tmp_path, broker, unique, batch_max_records=100_000, batch_max_seconds=60
    )
    await create_topics(settings)
    messages, expected = workload(3_000, 300, seed=5)
    ends = await produce(settings, messages)

    stop = asyncio.Event()
    transport = KafkaTransport.from_settings(settings)
    first = sink_runners(settings, migrated, stop, ConsumerMetrics(CollectorRegistry()), transport)[
        0
    ]
    second = sink_runners(
        settings, migrated, stop, ConsumerMetrics(CollectorRegistry()), transport
    )[0]
    tasks = [asyncio.create_task(first.run())]
    try:

        async def first_holds_everything() -> tuple[bool, Any]:
            return first.batch.records == len(messages), first.batch.records

        await wait_for(first_holds_everything, 60, "the first runner to read every record")
        assert await scalar(migrated, "SELECT count() FROM events") == 0
        tasks.append(asyncio.create_task(second.run()))  # joins the group: a rebalance

        async def flushed_on_revoke() -> tuple[bool, Any]:
            seen = await scalar(migrated, "SELECT count() FROM events FINAL")
            return seen == 3_000, seen

        await wait_for(flushed_on_revoke, 60, "the revoke flush")
        assert first.writes == 1
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    got = await committed(settings, "sink", settings.kafka.topic)
    assert {tp: v for tp, v in got.items() if v is not None} == ends
    await check_counts(migrated, expected)

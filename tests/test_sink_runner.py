"""ConsumerRunner's plumbing driven by a fake consumer and a controllable clock (no broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client import CollectorRegistry

from app.storage.clickhouse import StorageError
from consumers.base import (
    ConsumerMetrics,
    ConsumerRunner,
    InvalidMessage,
    KafkaTransport,
    Record,
    Row,
)
from tests.conftest import make_settings

TOPIC = "t"
TP0, TP1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def rec(tp: TopicPartition, offset: int, value: bytes = b"ok") -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, None, value, None, 0, 0, [])


class FakeConsumer:
    """Just enough of AIOKafkaConsumer: scripted fetches, pause state, recorded commits."""

    def __init__(self, fetches: list[dict[TopicPartition, list[Any]]]) -> None:
        self.fetches = fetches
        self.assigned = {TP0, TP1}
        self.paused_tps: set[TopicPartition] = set()
        self.commits: list[dict[TopicPartition, int]] = []
        self.pause_calls = 0
        self.stopped = False

    async def start(self) -> None: ...

    async def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.listener = listener

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        await asyncio.sleep(0)
        if self.fetches and not self.paused_tps:
            return self.fetches.pop(0)
        await asyncio.sleep(min(timeout_ms, 10) / 1000)
        return {}

    def highwater(self, tp: TopicPartition) -> int:
        return 100

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        self.pause_calls += 1
        self.paused_tps |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps -= set(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


class FakeTransport:
    def __init__(self, consumer: FakeConsumer) -> None:
        self.fake = consumer

    def consumer(self, group_id: str, name: str, max_poll_records: int) -> FakeConsumer:
        return self.fake

    def producer(self, name: str) -> Any:
        raise AssertionError("these runners have no DLQ topic")


class FakePipeline:
    name = "fake"

    def __init__(self, fail: int = 0, consumer: FakeConsumer | None = None) -> None:
        self.fail = fail
        self.consumer = consumer
        self.writes: list[tuple[list[Row], str]] = []
        self.failures: list[tuple[str, set[TopicPartition], int]] = []

    def process(self, record: Record) -> Sequence[Row]:
        if record.value == b"poison":
            raise InvalidMessage(record.partition, record.offset, "bad_json")
        if record.value == b"bug":
            raise RuntimeError("oops")
        return ((record.partition, record.offset),)

    def received_ms(self, row: Row) -> int | None:
        return None

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        if len(self.failures) < self.fail:
            assert self.consumer is not None
            paused = self.consumer.paused()
            self.failures.append((dedup_token, paused, len(self.consumer.commits)))
            raise StorageError("down", retriable=len(self.failures) % 2 == 1)
        self.writes.append((list(rows), dedup_token))


def make_runner(
    tmp_path: Path,
    pipeline: FakePipeline,
    consumer: FakeConsumer,
    clock: list[float],
    **consumer_settings: Any,
) -> tuple[ConsumerRunner, asyncio.Event, CollectorRegistry]:
    settings = make_settings(
        tmp_path,
        consumer={
            "batch_max_records": 1000,
            "batch_max_seconds": 5.0,
            "retry_initial_s": 0.001,
            "retry_max_s": 0.004,
            **consumer_settings,
        },
    )
    stop = asyncio.Event()
    registry = CollectorRegistry()
    runner = ConsumerRunner(
        settings,
        pipeline,
        TOPIC,
        transport=FakeTransport(consumer),
        metrics=ConsumerMetrics(registry),
        stop=stop,
        dlq_topic=None,
        clock=lambda: clock[0],
        poll_timeout_s=0.005,
    )
    runner.consumer = consumer  # run() sets it too; flush_on_revoke tests call in directly
    return runner, stop, registry


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    """Poll a condition on state the fakes change (they have no events to wait on)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def test_flushes_by_age_on_the_fake_clock_and_commits_last_offset_plus_one(
    tmp_path: Path,
) -> None:
    consumer = FakeConsumer([{TP0: [rec(TP0, 10), rec(TP0, 11)], TP1: [rec(TP1, 3)]}])
    pipeline = FakePipeline()
    clock = [0.0]
    runner, stop, registry = make_runner(tmp_path, pipeline, consumer, clock)
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.batch.records == 3)
    await asyncio.sleep(0.05)
    assert pipeline.writes == [] and consumer.commits == []  # 3 < 1000 records, age 0 < 5 s
    clock[0] = 5.0
    await until(lambda: consumer.commits)
    stop.set()
    await task
    assert pipeline.writes == [([(0, 10), (0, 11), (1, 3)], "fake:t:0:10-11;1:3-3")]
    assert consumer.commits == [{TP0: 12, TP1: 4}]
    assert consumer.stopped
    assert (
        registry.get_sample_value("viraltrace_consumer_batch_records_sum", {"consumer": "fake"})
        == 3
    )
    lag = registry.get_sample_value(
        "viraltrace_consumer_lag_records", {"consumer": "fake", "topic": TOPIC, "partition": "0"}
    )
    assert lag == 100 - 12


async def test_a_revoked_partition_leaves_no_lag_series_behind(tmp_path: Path) -> None:
    consumer = FakeConsumer([{TP0: [rec(TP0, 10)], TP1: [rec(TP1, 3)]}])
    runner, stop, registry = make_runner(tmp_path, FakePipeline(), consumer, [0.0])
    task = asyncio.create_task(runner.run())
    await until(lambda: runner.batch.records == 2)

    def lag(tp: TopicPartition) -> float | None:
        labels = {"consumer": "fake", "topic": TOPIC, "partition": str(tp.partition)}
        return registry.get_sample_value("viraltrace_consumer_lag_records", labels)

    assert (lag(TP0), lag(TP1)) == (100 - 11, 100 - 4)
    # A rebalance takes TP1 away: its new owner reports it from now on.
    await consumer.listener.on_partitions_revoked({TP1})
    stop.set()
    await task
    assert consumer.commits == [{TP0: 11, TP1: 4}]  # flushed on revoke
    assert (lag(TP0), lag(TP1)) == (100 - 11, None)


async def test_failing_write_pauses_retries_same_token_and_commits_only_after_success(
    tmp_path: Path,
) -> None:
    consumer = FakeConsumer([{TP0: [rec(TP0, 0), rec(TP0, 1)]}, {TP1: [rec(TP1, 0)]}])
    pipeline = FakePipeline(fail=4, consumer=consumer)
    runner, stop, registry = make_runner(tmp_path, pipeline, consumer, [0.0], batch_max_records=2)
    task = asyncio.create_task(runner.run())
    await until(lambda: len(consumer.commits) == 1)
    # The second fetch is only returned once the partitions are resumed.
    await until(lambda: runner.batch.records == 1)
    stop.set()
    await task
    tokens = {token for token, _, _ in pipeline.failures}
    assert tokens == {"fake:t:0:0-1"}
    assert [commits for _, _, commits in pipeline.failures] == [0, 0, 0, 0]
    assert [paused for _, paused, _ in pipeline.failures][1:] == [{TP0, TP1}] * 3
    assert consumer.paused() == set()
    assert consumer.commits == [{TP0: 2}, {TP1: 1}]  # the second from the final flush
    errors = registry.get_sample_value(
        "viraltrace_consumer_write_errors_total", {"consumer": "fake", "retriable": "false"}
    )
    assert errors == 2  # non-retriable errors are retried too, never dropped


async def test_poison_without_dlq_topic_is_skipped_and_committed(tmp_path: Path) -> None:
    consumer = FakeConsumer(
        [{TP0: [rec(TP0, 0), rec(TP0, 1, b"poison"), rec(TP0, 2, b"bug"), rec(TP0, 3)]}]
    )
    pipeline = FakePipeline()
    runner, stop, registry = make_runner(tmp_path, pipeline, consumer, [0.0], batch_max_records=4)
    task = asyncio.create_task(runner.run())
    await until(lambda: consumer.commits)
    stop.set()
    await task
    assert pipeline.writes == [([(0, 0), (0, 3)], "fake:t:0:0-3")]
    assert consumer.commits == [{TP0: 4}]
    for reason in ("bad_json", "process_error"):
        labels = {"consumer": "fake", "reason": reason}
        assert registry.get_sample_value("viraltrace_consumer_dlq_messages_total", labels) == 1


async def test_revoke_flushes_or_leaves_uncommitted(tmp_path: Path) -> None:
    consumer = FakeConsumer([])
    pipeline = FakePipeline(fail=1, consumer=consumer)
    runner, _, _ = make_runner(tmp_path, pipeline, consumer, [0.0])
    runner.batch.add(TP0, 7, [(0, 7)], now=0.0)
    await runner.flush_on_revoke()  # the write fails: dropped, NOT committed (redelivered)
    assert consumer.commits == [] and not runner.batch
    runner.batch.add(TP1, 8, [(1, 8)], now=0.0)
    await runner.flush_on_revoke()
    assert consumer.commits == [{TP1: 9}]
    assert pipeline.writes == [([(1, 8)], "fake:t:1:8-8")]


async def test_stop_during_an_outage_exits_without_committing(tmp_path: Path) -> None:
    consumer = FakeConsumer([{TP0: [rec(TP0, 0)]}])
    pipeline = FakePipeline(fail=10**6, consumer=consumer)
    runner, stop, _ = make_runner(tmp_path, pipeline, consumer, [0.0], batch_max_records=1)
    task = asyncio.create_task(runner.run())
    await until(lambda: len(pipeline.failures) >= 3)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert consumer.commits == []
    assert consumer.stopped


@pytest.mark.parametrize("bootstrap", [None, ""])
async def test_runner_needs_a_bootstrap(tmp_path: Path, bootstrap: str | None) -> None:
    settings = make_settings(tmp_path, kafka={"bootstrap": bootstrap})
    with pytest.raises(ValueError, match="bootstrap"):
        KafkaTransport.from_settings(settings)


def test_consume_cli_has_the_sink_command() -> None:
    from typer.testing import CliRunner

    from consumers.cli import consume_app

    listing = CliRunner().invoke(consume_app, ["--help"])
    assert listing.exit_code == 0, listing.output
    assert "sink" in listing.output
    result = CliRunner().invoke(consume_app, ["sink", "--help"])
    assert result.exit_code == 0, result.output
    assert "ClickHouse" in result.output


def test_observe_many_matches_one_observe_per_value() -> None:
    from prometheus_client import Histogram

    from consumers.base import observe_many

    registry = CollectorRegistry()
    bulk = Histogram("bulk", "", buckets=(0.1, 1.0), registry=registry)
    single = Histogram("single", "", buckets=(0.1, 1.0), registry=registry)
    values = [0.05, 0.1, 0.5, 1.0, 2.0, 0.0, 30.0]
    observe_many(bulk, values)
    observe_many(bulk, [])
    for value in values:
        single.observe(value)

    def samples(name: str) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for family in registry.collect()
            if family.name == name
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert samples("bulk") == samples("single")
    assert registry.get_sample_value("bulk_count") == len(values)

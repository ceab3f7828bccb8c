"""The ingestion path against both real Kafka-protocol brokers (noida-db and Tansu)."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from app.events import EventV1
from app.settings import Settings
from tests.apphelpers import running_app
from tests.conftest import make_settings
from tests.kafkahelpers import consume, values

pytestmark = pytest.mark.kafka


def kafka_settings(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str, **kafka: Any
) -> Settings:
    _, bootstrap, idempotence = broker
    return make_settings(
        tmp_path,
        kafka={
            "bootstrap": bootstrap,
            "idempotence": idempotence,
            "topic": f"events-{unique}",
            "dlq_topic": f"events-dlq-{unique}",
            "partitions": 6,
            "send_timeout_s": 10,
            **kafka,
        },
    )


async def test_topics_are_created_with_the_configured_partitions(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str
) -> None:
    cfg = kafka_settings(tmp_path, broker, unique)
    async with running_app(cfg) as (app, _):
        assert app.state.vt.bus.broker_up
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap)
    await consumer.start()
    try:
        topics = await consumer.topics()
        assert {cfg.kafka.topic, cfg.kafka.dlq_topic} <= topics
        assert consumer.partitions_for_topic(cfg.kafka.topic) == set(range(6))
        assert consumer.partitions_for_topic(cfg.kafka.dlq_topic) == set(range(6))
    finally:
        await consumer.stop()


async def test_events_arrive_keyed_by_root_with_one_partition_per_cascade(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str
) -> None:
    cfg = kafka_settings(tmp_path, broker, unique)
    async with running_app(cfg) as (app, client):
        signer = app.state.vt.signer
        cascades = []
        for _ in range(8):
            chain = [signer.mint_root("spring")]
            for _ in range(5):
                chain.append(signer.mint_child(chain[-1]))
            cascades.append(chain)
        batch = [
            {"type": "click", "campaign": "spring", "token": t.raw, "event_id": str(uuid.uuid4())}
            for chain in cascades
            for t in chain
        ]
        resp = await client.post("/v1/events", json=batch)
        assert resp.status_code == 202 and resp.json()["accepted"] == 48
        for chain in cascades:
            pixel = await client.get(
                "/p.gif", params={"c": "spring", "e": "view", "t": chain[-1].raw}
            )
            assert pixel.status_code == 200
        share = await client.post(
            "/v1/shares", json={"campaign": "spring", "parent": cascades[0][2].raw}
        )
        assert share.status_code == 201
        await client.get("/p.gif", params={"c": "spring", "t": "forged"})

    records = await consume(cfg.kafka.bootstrap or "", cfg.kafka.topic, expected=57)
    decoded = values(records)
    assert len(records) == 57, f"expected 57 events in {cfg.kafka.topic}, found {len(records)}"
    assert {e["event_id"] for e in decoded} >= {e["event_id"] for e in batch}
    partitions_by_root: dict[str, set[int]] = defaultdict(set)
    for record, event in zip(records, decoded, strict=True):
        EventV1.model_validate(event)
        assert record.key == event["root"].encode()
        partitions_by_root[event["root"]].add(record.partition)
    assert len(partitions_by_root) == 8
    assert all(len(p) == 1 for p in partitions_by_root.values()), partitions_by_root
    assert len({p for ps in partitions_by_root.values() for p in ps}) > 1, "all on one partition"

    [dead] = values(await consume(cfg.kafka.bootstrap or "", cfg.kafka.dlq_topic, expected=1))
    assert dead["reason"] == "bad_token" and dead["payload"]["campaign"] == "spring"


def test_cached_partitioner_matches_aiokafka() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from app.bus.partitioning import partition_for

    default = DefaultPartitioner()
    for count in (1, 3, 12, 64):
        partitions = list(range(count))
        for i in range(500):
            key = f"{i:016x}".encode()
            assert partition_for(key, count) == default(key, partitions, partitions)


async def test_concurrent_publishes_to_one_hot_partition_are_all_acked(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str
) -> None:
    """A viral cascade puts every request on one partition. aiokafka keeps one
    pending batch per partition, so the bus must merge concurrent publishes
    (group commit) instead of letting them queue into send timeouts, which
    used to mark a healthy broker down and spool everything."""
    from app.bus.base import Record
    from app.bus.kafka import KafkaBus
    from app.bus.spool import Spool
    from app.metrics import ApiMetrics

    cfg = kafka_settings(tmp_path, broker, unique, send_timeout_s=5)
    metrics = ApiMetrics()
    spool = Spool(tmp_path / "spool", cfg.spool.max_bytes, cfg.spool.segment_bytes)
    bus = KafkaBus(cfg.kafka, cfg.spool, spool, metrics)
    await bus.start()
    try:
        assert bus.broker_up

        async def request(n: int) -> None:
            await bus.publish(
                [
                    Record(cfg.kafka.topic, b"0123456789abcdef", f"{n}-{i}".encode())
                    for i in range(100)
                ]
            )

        await asyncio.gather(*(request(n) for n in range(64)))
        assert bus.broker_up, "a healthy broker was marked down under load"
        assert metrics.registry.get_sample_value("viraltrace_spooled_records_total") == 0
    finally:
        await bus.stop()
    records = await consume(cfg.kafka.bootstrap or "", cfg.kafka.topic, expected=6400)
    assert len({r.value for r in records}) == 6400
    assert len({r.partition for r in records}) == 1

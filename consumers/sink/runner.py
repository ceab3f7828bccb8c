"""Runs the sink: two ``ConsumerRunner``s over one ClickHouse client.

``share-events`` -> ``events`` (poison -> ``share-events-dlq``) and
``share-events-dlq`` -> ``events_dlq``. The DLQ sink has no DLQ of its own:
a message on the DLQ topic that is not a valid envelope is logged, counted
(``viraltrace_consumer_dlq_messages_total{consumer="sink-dlq"}``) and skipped,
its offset committed with the batch around it.

The tables must exist (``viraltrace migrate``); until they do, writes fail
and are retried with backoff, nothing committed.
"""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY, CollectorRegistry

from app.settings import Settings
from app.storage.clickhouse import ClickHouse
from consumers.base import (
    ConsumerMetrics,
    ConsumerRunner,
    KafkaTransport,
    Pipeline,
    Transport,
    open_clickhouse,
    run_all,
)
from consumers.sink.pipeline import DlqPipeline, EventsPipeline


def sink_runners(
    settings: Settings,
    clickhouse: ClickHouse,
    stop: asyncio.Event,
    metrics: ConsumerMetrics,
    transport: Transport,
    *,
    events_pipeline: Pipeline | None = None,
) -> list[ConsumerRunner]:
    """The two runners of the sink (not started). ``events_pipeline`` replaces the
    events pipeline (tests wrap its ``write``)."""
    kafka = settings.kafka
    return [
        ConsumerRunner(
            settings,
            events_pipeline or EventsPipeline(clickhouse),
            kafka.topic,
            transport=transport,
            metrics=metrics,
            stop=stop,
            dlq_topic=kafka.dlq_topic,
        ),
        ConsumerRunner(
            settings,
            DlqPipeline(clickhouse),
            kafka.dlq_topic,
            transport=transport,
            metrics=metrics,
            stop=stop,
            dlq_topic=None,
        ),
    ]


async def run_sink(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    clickhouse: ClickHouse | None = None,
    registry: CollectorRegistry | None = None,
    transport: Transport | None = None,
) -> None:
    """Run the sink until ``stop`` is set (forever if None). Awaits; returns after the
    final flush and commit. Opens ``ClickHouse(settings.clickhouse_dsn)`` unless
    ``clickhouse`` is given (then the caller owns and closes it). ``transport``
    defaults to Kafka at ``settings.kafka.bootstrap`` (``ValueError`` if unset).
    Raises ``StorageError`` if ClickHouse cannot be opened."""
    stop = stop or asyncio.Event()
    transport = transport or KafkaTransport.from_settings(settings)
    metrics = ConsumerMetrics(registry or REGISTRY)
    async with open_clickhouse(settings, clickhouse) as ch:
        await run_all(sink_runners(settings, ch, stop, metrics, transport), stop)

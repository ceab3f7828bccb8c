"""Runs the cascades consumer: one ``ConsumerRunner`` over ``share-events``.

Needs the ClickHouse tables (``viraltrace migrate``) and publishes spread
signals to ``kafka.signals_topic`` through the transport's producer.
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
    Transport,
    open_clickhouse,
    publisher,
    run_all,
)
from consumers.cascades.pipeline import CascadesPipeline


def cascades_runner(
    settings: Settings,
    clickhouse: ClickHouse,
    stop: asyncio.Event,
    metrics: ConsumerMetrics,
    transport: Transport,
) -> ConsumerRunner:
    """The cascades runner (not started); signals go out through the runner's producer."""
    pipeline = CascadesPipeline(
        settings.cascades, clickhouse, signals_topic=settings.kafka.signals_topic
    )
    runner = ConsumerRunner(
        settings,
        pipeline,
        settings.kafka.topic,
        transport=transport,
        metrics=metrics,
        stop=stop,
        dlq_topic=settings.kafka.dlq_topic,
    )
    pipeline.publish = publisher(runner)
    return runner


async def run_cascades(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    clickhouse: ClickHouse | None = None,
    registry: CollectorRegistry | None = None,
    transport: Transport | None = None,
) -> None:
    """Run the cascades consumer until ``stop`` is set (forever if None).

    Opens ``ClickHouse(settings.clickhouse_dsn)`` unless ``clickhouse`` is given
    (then the caller closes it). ``transport`` defaults to Kafka at
    ``settings.kafka.bootstrap`` (``ValueError`` if unset).
    """
    stop = stop or asyncio.Event()
    transport = transport or KafkaTransport.from_settings(settings)
    metrics = ConsumerMetrics(registry or REGISTRY)
    async with open_clickhouse(settings, clickhouse) as ch:
        await run_all([cascades_runner(settings, ch, stop, metrics, transport)], stop)

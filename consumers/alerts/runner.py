"""Runs the buzz and alerts consumers (``ConsumerRunner`` each).

- buzz: ``share-events`` -> scored items on ``kafka.signals_topic`` (keyed by campaign).
- alerts: ``kafka.signals_topic`` -> ``buzz_items``, ``buzz_windows``, ``alerts``
  (ClickHouse) and the webhook outbox (control-plane database), which the
  notifier delivers.

Both need the control-plane database (campaign languages, alert rules); the
alerts consumer also needs the ClickHouse tables (``viraltrace migrate``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.session import create_engine, database_url, sessionmaker
from app.sentiment import default_scorer
from app.settings import Settings, WebhookSettings
from app.storage.clickhouse import ClickHouse
from app.webhooks.outbox import PayloadTooLarge, enqueue
from consumers.alerts.detect import Transition
from consumers.alerts.pipeline import AlertsPipeline, Notify
from consumers.base import (
    ConsumerMetrics,
    ConsumerRunner,
    KafkaTransport,
    Transport,
    open_clickhouse,
    publisher,
    run_all,
)
from consumers.buzz.pipeline import BuzzPipeline

log = logging.getLogger(__name__)


def outbox_notifier(
    sessions: async_sessionmaker[AsyncSession], webhooks: WebhookSettings
) -> Notify:
    """Alert transitions -> webhook deliveries, in one transaction; idempotent per transition."""

    async def notify(batch: list[tuple[Transition, dict[str, Any]]]) -> None:
        async with sessions() as session:
            for transition, data in batch:
                at = transition.resolved_at or transition.opened_at
                for attempt in (data, {**data, "explanation": {"truncated": True}}):
                    try:
                        await enqueue(
                            session,
                            campaign=transition.campaign,
                            event_type=transition.kind,
                            event_id=f"{transition.id}:{transition.state}",
                            data=attempt,
                            timestamp=datetime.fromtimestamp(at / 1000, UTC),
                            webhooks=webhooks,
                        )
                        break
                    except PayloadTooLarge:
                        # Explanations are bounded, but a body limit set very low must
                        # not stop alerting: deliver the alert without its details.
                        continue
                else:
                    log.error(
                        "alert %s is too large to deliver even without its "
                        "explanation; raise webhooks.max_body_bytes",
                        transition.id,
                    )
            await session.commit()

    return notify


def buzz_runner(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession] | None,
    stop: asyncio.Event,
    metrics: ConsumerMetrics,
    transport: Transport,
) -> ConsumerRunner:
    """The buzz runner (not started); items go out through the runner's producer."""
    pipeline = BuzzPipeline(
        settings.alerts, default_scorer(), sessions=sessions,
        signals_topic=settings.kafka.signals_topic,
    )  # fmt: skip
    runner = ConsumerRunner(
        settings, pipeline, settings.kafka.topic, transport=transport, metrics=metrics,
        stop=stop, dlq_topic=settings.kafka.dlq_topic,
    )  # fmt: skip
    pipeline.publish = publisher(runner)
    return runner


def alerts_runner(
    settings: Settings,
    clickhouse: ClickHouse,
    sessions: async_sessionmaker[AsyncSession] | None,
    stop: asyncio.Event,
    metrics: ConsumerMetrics,
    transport: Transport,
) -> ConsumerRunner:
    """The alerts runner (not started)."""
    pipeline = AlertsPipeline(
        settings.alerts, clickhouse, sessions=sessions,
        notify=outbox_notifier(sessions, settings.webhooks) if sessions is not None else None,
        public_base_url=settings.tracking.public_base_url,
    )  # fmt: skip
    return ConsumerRunner(
        settings, pipeline, settings.kafka.signals_topic, transport=transport, metrics=metrics,
        stop=stop, dlq_topic=settings.kafka.dlq_topic,
    )  # fmt: skip


async def run_alerts(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    buzz: bool = True,
    alerts: bool = True,
    clickhouse: ClickHouse | None = None,
    registry: CollectorRegistry | None = None,
    transport: Transport | None = None,
) -> None:
    """Run the buzz and/or alerts consumers until ``stop`` is set (forever if None).

    Opens the control-plane database from settings, and ClickHouse unless
    ``clickhouse`` is given. ``transport`` defaults to Kafka.
    """
    stop = stop or asyncio.Event()
    transport = transport or KafkaTransport.from_settings(settings)
    metrics = ConsumerMetrics(registry or REGISTRY)
    engine = create_engine(database_url(settings))
    sessions = sessionmaker(engine)
    try:
        async with open_clickhouse(settings, clickhouse) as ch:
            runners = []
            if buzz:
                runners.append(buzz_runner(settings, sessions, stop, metrics, transport))
            if alerts:
                runners.append(alerts_runner(settings, ch, sessions, stop, metrics, transport))
            await run_all(runners, stop)
    finally:
        await engine.dispose()

"""Control-plane tables (SQLAlchemy 2): campaigns, tracked links, API keys,
webhook endpoints, alert rules and the webhook delivery outbox.

The same models run on SQLite (the embedded default, aiosqlite) and on
PostgreSQL (asyncpg). Lists are JSON columns; times are timezone-aware UTC.
The schema is owned by Alembic (``migrations/alembic``), never by
``create_all``: a test checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Constraint names the same on every database, so Alembic can drop them by name.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SCOPES = ("read", "write", "admin")
# What an alert rule can be about (consumers/alerts). Names are the webhook event types.
BUZZ_ALERT_KINDS = ("buzz.negative_spike", "buzz.volume_spike", "buzz.negative_velocity")
SPREAD_ALERT_KINDS = (
    "spread.accelerating",
    "spread.viral",
    "spread.forecast_exceeds",
    "spread.structural_virality",
)
ALERT_KINDS = BUZZ_ALERT_KINDS + SPREAD_ALERT_KINDS
# pending: waits for its next attempt (``next_attempt_at``), or is being attempted
#   (then ``next_attempt_at`` is the claim's lease expiry); a disabled endpoint's
#   pending deliveries wait until it is enabled again.
# delivered: the receiver answered 2xx. failed: every scheduled attempt failed.
# dead: can never be sent as stored (e.g. its endpoint's secret cannot sign).
# failed, delivered and dead deliveries go back to pending only by a redeliver.
DELIVERY_STATES = ("pending", "delivered", "failed", "dead")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always reads back aware UTC (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC time")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class Campaign(Timestamped, Base):
    """A campaign: what the events of one slug belong to."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Browser origins allowed to call /v1/events and /v1/shares (CORS).
    allowed_origins: Mapped[list[str]] = mapped_column(default=list)
    retention_days: Mapped[int] = mapped_column(Integer, default=400)
    # ISO 639-1 codes whose buzz is watched (en, ms, id, ar, no, ...).
    languages: Mapped[list[str]] = mapped_column(default=lambda: ["en"])
    # /v1/events needs a write key for this campaign when set.
    require_write_key: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    links: Mapped[list[TrackedLink]] = relationship(
        back_populates="campaign", cascade="all, delete-orphan", passive_deletes=True
    )


class TrackedLink(Timestamped, Base):
    """``/r/{slug}``: a seed share that redirects to ``destination``."""

    __tablename__ = "tracked_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(2048))
    # Hosts the destination may point at; empty means the destination's own host.
    allowed_hosts: Mapped[list[str]] = mapped_column(default=list)
    # The link's root share token, minted when the link is made.
    root_token: Mapped[str] = mapped_column(String(64))

    campaign: Mapped[Campaign] = relationship(back_populates="links")


api_key_campaigns = Table(
    "api_key_campaigns",
    Base.metadata,
    Column("api_key_id", ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
    Column("campaign_id", ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
)


class ApiKey(Base):
    """A bearer key. Only its SHA-256 is stored; ``prefix`` is what users see."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_prefix", "prefix"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column()
    # True: every campaign. False: only ``campaigns`` (none left means none at all:
    # deleting a key's last campaign must not widen it).
    all_campaigns: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    campaigns: Mapped[list[Campaign]] = relationship(secondary=api_key_campaigns)


class WebhookEndpoint(Timestamped, Base):
    """Where alerts are delivered, signed per Standard Webhooks with ``secret`` (and
    with ``previous_secret`` too until ``previous_secret_expires_at``, after a rotation)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    # "whsec_" + base64 of the signing key (Standard Webhooks form).
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list[str]] = mapped_column(default=list)  # empty: all
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    previous_secret: Mapped[str | None] = mapped_column(String(100), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class AlertRule(Timestamped, Base):
    """When to alert for one campaign."""

    __tablename__ = "alert_rules"
    __table_args__ = (
        CheckConstraint("window_s > 0", name="window_positive"),
        CheckConstraint("min_volume >= 0", name="min_volume_nonnegative"),
        CheckConstraint("cooldown_s >= 0", name="cooldown_nonnegative"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Defaults as AlertSettings: a rule row always carries all its values.
    window_s: Mapped[int] = mapped_column(Integer, default=120)
    min_volume: Mapped[int] = mapped_column(Integer, default=20)
    cooldown_s: Mapped[int] = mapped_column(Integer, default=1800)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)


class WebhookDelivery(Base):
    """The outbox: one row per message per endpoint, retried until delivered or failed
    (states: ``DELIVERY_STATES``). ``attempts`` counts attempts started since the
    last (re)delivery; a notifier owns an attempt only while ``attempts`` is what it
    claimed, which fences out a notifier whose lease ran out."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    # The Standard Webhooks webhook-id: the receiver's idempotency key.
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(String(1000), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """The delivery log: one row per attempt, written when the attempt starts and
    completed with its outcome. A row left without status, error or latency belongs
    to a notifier that died mid-attempt (marked ``interrupted`` when it is retried)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(String(1000), default=None)
    latency_ms: Mapped[int | None] = mapped_column(Integer, default=None)
    response_excerpt: Mapped[str | None] = mapped_column(String(500), default=None)

"""The webhook outbox in the control-plane database: what the alerts consumer
enqueues, what the notifier claims and records, what an admin redelivers.

Delivery contract: at least once per (event, endpoint). A delivery keeps one
``webhook-id`` (``message_id``) through all its attempts and redeliveries, so a
receiver that dedupes by it sees each event once. The one duplicate we cannot
rule out: a notifier that dies after the receiver's 2xx and before it recorded
the outcome (the lease runs out and the attempt is made again).

Claiming is safe with several notifiers: on PostgreSQL the due rows are selected
``FOR UPDATE SKIP LOCKED``; on both databases a claim is a compare-and-set on
``attempts``, so one attempt is claimed by one notifier only, and a notifier whose
lease ran out can no longer record over the one that took the delivery over.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.keys import new_webhook_secret
from app.db.models import (
    ALERT_KINDS,
    Campaign,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from app.settings import WebhookSettings
from app.webhooks import WebhookError
from app.webhooks.policy import AttemptResult, Decision, RetryPolicy, first_attempt_at
from app.webhooks.signing import active_secrets

# The event types the alerts consumer sends; the alert's state (open/resolved)
# travels in ``data``. Endpoints subscribe to exact types or dotted prefixes.
EVENT_TYPES = ALERT_KINDS
INTERRUPTED = "interrupted: the notifier stopped before recording this attempt's outcome"
EXCERPT_CHARS = 500
ERROR_CHARS = 1000
_DEFAULTS = WebhookSettings()


class PayloadTooLarge(WebhookError):
    """The JSON body is over ``max_body_bytes``. Not retriable."""

    retriable = False

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"webhook body is {size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


class NotRedeliverable(WebhookError):
    """A redeliver of a delivery that is still pending."""

    retriable = False


def subscribed(event_types: Sequence[str], event_type: str) -> bool:
    """Empty: every type. Else an entry equal to ``event_type`` or a dotted prefix of
    it (``buzz`` matches ``buzz.negative_spike``; ``bu`` does not)."""
    if not event_types:
        return True
    return any(event_type == t or event_type.startswith(t.rstrip(".") + ".") for t in event_types)


def message_id(event_id: str, endpoint_id: int) -> str:
    """The ``webhook-id`` of an event's delivery to one endpoint: the same on every
    call, every process and every database (so enqueuing twice is a no-op)."""
    digest = hashlib.sha256(f"{event_id}\x00{endpoint_id}".encode()).digest()
    return "msg_" + base64.b32encode(digest[:20]).decode().lower()


def iso_utc(at: datetime) -> str:
    """``2026-11-23T15:04:05.123456Z``: the body's timestamp form."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body(event_type: str, timestamp: datetime, data: dict[str, Any], max_bytes: int) -> str:
    """``{"type", "timestamp", "data"}`` as compact JSON; raises ``PayloadTooLarge``
    and ``TypeError`` (``data`` not JSON-serializable)."""
    raw = orjson.dumps({"type": event_type, "timestamp": iso_utc(timestamp), "data": data})
    if len(raw) > max_bytes:
        raise PayloadTooLarge(len(raw), max_bytes)
    return raw.decode()


def _insert(session: AsyncSession) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing``."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise NotImplementedError(f"the webhook outbox runs on SQLite or PostgreSQL, not {dialect}")


async def enqueue(
    session: AsyncSession,
    *,
    campaign: str,
    event_type: str,
    event_id: str,
    data: dict[str, Any],
    timestamp: datetime,
    webhooks: WebhookSettings | None = None,
    now: datetime | None = None,
) -> int:
    """Adds one delivery per enabled endpoint of campaign ``campaign`` (slug) subscribed
    to ``event_type``; does NOT commit (the caller commits, with whatever else it
    writes). Idempotent: the same (event_id, endpoint) always gets the same
    webhook-id (``message_id``) and enqueuing it again adds nothing, on SQLite and
    PostgreSQL, with concurrent callers too (INSERT ... ON CONFLICT DO NOTHING).

    The body is ``{"type": event_type, "timestamp": <ISO-8601 UTC>, "data": data}``,
    at most ``webhooks.max_body_bytes`` (settings default 20 000): raises
    ``PayloadTooLarge`` otherwise, ``TypeError`` for data JSON cannot carry and
    ``ValueError`` for a naive ``timestamp``. An unknown campaign has no endpoints
    (returns 0). Returns the number of new deliveries.
    """
    config = webhooks or _DEFAULTS
    payload = body(event_type, timestamp, data, config.max_body_bytes)
    endpoints = await session.scalars(
        select(WebhookEndpoint)
        .join(Campaign)
        .where(Campaign.slug == campaign, WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookEndpoint.id)
    )
    now = now or datetime.now(UTC)
    due = first_attempt_at(now, RetryPolicy.from_settings(config))
    rows = [
        {
            "endpoint_id": endpoint.id,
            "message_id": message_id(event_id, endpoint.id),
            "event_type": event_type,
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": due,
            "created_at": now,
        }
        for endpoint in endpoints
        if subscribed(endpoint.event_types, event_type)
    ]
    if not rows:
        return 0
    insert = _insert(session)
    statement = (
        insert(WebhookDelivery)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["message_id"])
        .returning(WebhookDelivery.id)
    )
    return len((await session.execute(statement)).all())


# ---- the notifier's side --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """One attempt a notifier owns until ``lease_until``: everything needed to send it."""

    delivery_id: int
    endpoint_id: int
    attempt: int  # this attempt's number since the last (re)delivery, from 1
    log_id: int  # its row in webhook_attempts
    message_id: str
    url: str
    payload: str
    secrets: tuple[str, ...]
    lease_until: datetime


async def claim_due(
    session: AsyncSession, *, now: datetime, limit: int, lease_s: float
) -> list[Claimed]:
    """Claims up to ``limit`` due deliveries of enabled endpoints, oldest due first,
    logs each attempt's start, and COMMITS. A claimed delivery is due again at
    ``now + lease_s`` (the notifier that claimed it died if it is still pending then)."""
    is_pg = session.get_bind().dialect.name == "postgresql"
    query = (
        select(
            WebhookDelivery.id,
            WebhookDelivery.attempts,
            WebhookDelivery.message_id,
            WebhookDelivery.payload,
            WebhookEndpoint.id,
            WebhookEndpoint.url,
            WebhookEndpoint.secret,
            WebhookEndpoint.previous_secret,
            WebhookEndpoint.previous_secret_expires_at,
        )
        .join(WebhookEndpoint, WebhookDelivery.endpoint_id == WebhookEndpoint.id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if is_pg:
        query = query.with_for_update(skip_locked=True, of=WebhookDelivery)
    lease_until = now + timedelta(seconds=lease_s)
    claimed: list[Claimed] = []
    try:
        for row in (await session.execute(query)).all():
            (delivery_id, attempts, msg_id, payload, endpoint_id, url, secret, previous, until) = (
                row
            )
            won = await session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.attempts == attempts,
                    WebhookDelivery.state == "pending",
                )
                .values(attempts=attempts + 1, next_attempt_at=lease_until)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another notifier (SQLite: another process) took it first
            # An earlier attempt left unfinished was cut short by a dead notifier.
            await session.execute(
                update(WebhookAttempt)
                .where(
                    WebhookAttempt.delivery_id == delivery_id,
                    WebhookAttempt.status_code.is_(None),
                    WebhookAttempt.error.is_(None),
                    WebhookAttempt.latency_ms.is_(None),
                )
                .values(error=INTERRUPTED)
            )
            log = WebhookAttempt(
                delivery_id=delivery_id,
                endpoint_id=endpoint_id,
                attempt=attempts + 1,
                started_at=now,
            )
            session.add(log)
            await session.flush()
            claimed.append(
                Claimed(
                    delivery_id=delivery_id,
                    endpoint_id=endpoint_id,
                    attempt=attempts + 1,
                    log_id=log.id,
                    message_id=msg_id,
                    url=url,
                    payload=payload,
                    secrets=tuple(active_secrets(secret, previous, until, now)),
                    lease_until=lease_until,
                )
            )
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return claimed


async def record_attempt(
    session: AsyncSession,
    claimed: Claimed,
    result: AttemptResult,
    decision: Decision,
    *,
    now: datetime,
) -> bool:
    """Stores an attempt's outcome and the delivery's next state, and COMMITS.

    Returns False when the delivery was no longer ours (our lease ran out and another
    notifier claimed it): then only the attempt's log row is completed.
    """
    # Locks in the order claim_due takes them (the delivery first), so a late notifier
    # recording while another claims the same delivery cannot deadlock with it.
    values: dict[str, Any] = {
        "state": decision.state,
        "last_status": result.status,
        "last_error": _clip(result.error, ERROR_CHARS),
    }
    if decision.next_attempt_at is not None:
        values["next_attempt_at"] = decision.next_attempt_at
    if decision.state == "delivered":
        values["delivered_at"] = now
    try:
        owned = await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == claimed.delivery_id,
                WebhookDelivery.attempts == claimed.attempt,
                WebhookDelivery.state == "pending",
            )
            .values(**values)
        )
        still_ours: bool = owned.rowcount == 1  # type: ignore[attr-defined]
        if still_ours and decision.disable_endpoint is not None:
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == claimed.endpoint_id, WebhookEndpoint.enabled)
                .values(enabled=False, disabled_reason=decision.disable_endpoint)
            )
        await session.execute(
            update(WebhookAttempt)
            .where(WebhookAttempt.id == claimed.log_id)
            .values(
                status_code=result.status,
                error=_clip(result.error, ERROR_CHARS),
                latency_ms=result.latency_ms,
                response_excerpt=_clip(result.excerpt, EXCERPT_CHARS),
            )
        )
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    return still_ours


async def count_pending(session: AsyncSession) -> int:
    result = await session.scalar(
        select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.state == "pending")
    )
    return int(result or 0)


FINISHED_STATES = ("delivered", "failed", "dead")


async def prune_finished(session: AsyncSession, *, before: datetime, batch: int = 5_000) -> int:
    """Deletes finished deliveries enqueued before ``before``, with their attempt
    log, ``batch`` deliveries per transaction (commits each); returns how many.
    Pending deliveries are kept whatever their age: they are still owed."""
    removed = 0
    while True:
        ids = list(
            await session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state.in_(FINISHED_STATES),
                    WebhookDelivery.created_at < before,
                )
                .order_by(WebhookDelivery.id)
                .limit(batch)
            )
        )
        if not ids:
            return removed
        # Attempts first and explicitly: the foreign key cascades, but not on a
        # database opened without foreign-key enforcement.
        await session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
        await session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
        await session.commit()
        removed += len(ids)


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


# ---- the admin's side --------------------------------------------------------------


def redeliver(delivery: WebhookDelivery, now: datetime) -> None:
    """Puts a delivered, failed or dead delivery back to pending, due now, with its
    attempt schedule restarted and the SAME webhook-id. Not committed. Raises
    ``NotRedeliverable`` for a pending one (it is still being tried)."""
    if delivery.state == "pending":
        raise NotRedeliverable("the delivery is still pending: it is being retried already")
    delivery.state = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.delivered_at = None


def rotate_secret(endpoint: WebhookEndpoint, now: datetime, grace_s: float) -> str:
    """A new current secret (returned, to show once); the old one keeps signing next
    to it for ``grace_s`` seconds. A second rotation within the grace period drops
    the oldest secret. Not committed."""
    if grace_s > 0:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = now + timedelta(seconds=grace_s)
    else:
        endpoint.previous_secret = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret = new_webhook_secret()
    return endpoint.secret

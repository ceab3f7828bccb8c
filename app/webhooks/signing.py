"""Standard Webhooks signatures (pure; signed with the ``standardwebhooks`` library).

Every request carries::

    webhook-id: msg_...            same for every attempt of one delivery
    webhook-timestamp: 1763910000  when this attempt was signed (Unix seconds)
    webhook-signature: v1,<base64> [v1,<base64>]

Each signature is HMAC-SHA256 over ``"{id}.{timestamp}.{body}"`` with one active
secret: the endpoint's current secret, plus its previous one while a rotation's
grace period lasts, so a receiver holding either secret verifies the request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

from app.webhooks import WebhookError


class BadSecret(WebhookError):
    """A stored secret that cannot sign (not ``whsec_`` + base64). Not retriable."""

    retriable = False


def active_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """The secrets that sign at ``now``: the current one first, then the previous one
    while its grace period lasts."""
    secrets = [secret]
    if previous and previous_expires_at is not None and now < previous_expires_at:
        secrets.append(previous)
    return secrets


def sign(message_id: str, timestamp: datetime, body: str, secrets: Sequence[str]) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt. Raises ``BadSecret``."""
    if timestamp.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    at = timestamp.astimezone(UTC)
    signatures = []
    for secret in secrets:
        try:
            signatures.append(Webhook(secret).sign(message_id, at, body))
        except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, ...
            raise BadSecret(f"the endpoint's signing secret is unusable: {exc}") from exc
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }

"""What happens after an attempt (pure): delivered, retried later, failed, or the
endpoint disabled. No I/O and no clock of its own: ``now`` and the random
generator are passed in, so a test drives every case without sleeping.

- 2xx: delivered.
- 410 Gone: the receiver wants no more; its endpoint is disabled with a reason and
  this delivery, like the endpoint's other pending ones, waits (pending) until an
  admin enables the endpoint again.
- Anything else (other statuses, redirects, timeouts, connection errors, an address
  the SSRF guard refuses): retried after the next delay of the schedule, or
  ``failed`` after the last scheduled attempt. A ``Retry-After`` answer moves the
  retry later when it asks for more than the schedule, up to ``max_retry_after_s``.
- An attempt that can never succeed as stored (``retriable=False``, e.g. a secret
  that cannot sign): ``dead``.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from app.settings import WebhookSettings

State = Literal["pending", "delivered", "failed", "dead"]
# Metric label values of one attempt (``viraltrace_webhook_attempts_total{outcome}``).
Outcome = Literal[
    "delivered", "gone", "http_error", "timeout", "network_error", "refused", "invalid"
]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to. ``status`` is None when no answer arrived."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    latency_ms: int = 0
    excerpt: str | None = None
    retry_after: str | None = None  # the raw Retry-After header
    retriable: bool = True


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``schedule[i]``: seconds from the end of attempt i to attempt i + 1 (``schedule[0]``
    is the first attempt's delay after enqueue); its length is the number of attempts."""

    schedule: tuple[float, ...]
    jitter: float = 0.1
    max_retry_after_s: float = 86_400.0

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> RetryPolicy:
        return cls(tuple(settings.retry_schedule_s), settings.jitter, settings.max_retry_after_s)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP-date
    (a date in the past is 0). None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_delay(
    attempts_made: int,
    policy: RetryPolicy,
    rng: random.Random,
    retry_after_s: float | None = None,
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` attempts, or None when the
    schedule is used up. Jitter scales the scheduled delay by a factor in
    ``[1 - jitter, 1 + jitter]`` (never below zero); a Retry-After later than that
    wins, capped at ``max_retry_after_s``."""
    if attempts_made >= len(policy.schedule):
        return None
    delay = policy.schedule[attempts_made]
    if policy.jitter:
        delay *= 1 + rng.uniform(-policy.jitter, policy.jitter)
    delay = max(0.0, delay)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.max_retry_after_s))
    return delay


def first_attempt_at(now: datetime, policy: RetryPolicy) -> datetime:
    """When a new delivery's first attempt is due (``schedule[0]`` after ``now``)."""
    return now + timedelta(seconds=policy.schedule[0])


@dataclass(frozen=True, slots=True)
class Decision:
    state: State
    next_attempt_at: datetime | None  # when ``state`` is pending
    disable_endpoint: str | None = None  # the reason, when the endpoint is to be disabled


def decide(
    result: AttemptResult,
    attempts_made: int,
    now: datetime,
    policy: RetryPolicy,
    rng: random.Random,
) -> Decision:
    """The delivery's next state after its attempt number ``attempts_made``."""
    if result.status is not None and 200 <= result.status < 300:
        return Decision("delivered", None)
    if result.status == 410:
        at = now.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return Decision("pending", now, f"receiver answered 410 Gone at {at}")
    if not result.retriable:
        return Decision("dead", None)
    delay = next_delay(attempts_made, policy, rng, parse_retry_after(result.retry_after, now))
    if delay is None:
        return Decision("failed", None)
    return Decision("pending", now + timedelta(seconds=delay))

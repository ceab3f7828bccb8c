"""The notifier loop: claim due deliveries, send them, record what happened.

- Claims at most ``webhooks.concurrency`` attempts at a time (a claim is committed
  before anything is sent; see ``app.webhooks.outbox.claim_due``), sends each in
  its own task, and records each outcome in its own transaction.
- Looks again at once while it finds a full batch due, else every
  ``poll_interval_s``.
- A database outage is logged (rate limited) and waited out; a send never raises.
- ``stop`` ends claiming; attempts in flight get up to ``timeout_s`` (+1 s) to
  finish and be recorded, then are cancelled: their leases run out and another
  notifier (or this one, restarted) makes the attempt again.
- SIGKILL at any point loses nothing: an unrecorded attempt is made again after
  ``lease_s`` with the same webhook-id (at least once; docs/webhooks.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.metrics import WebhookMetrics
from app.settings import Settings, WebhookSettings
from app.webhooks.client import new_client, send_attempt
from app.webhooks.outbox import Claimed, claim_due, count_pending, prune_finished, record_attempt
from app.webhooks.policy import AttemptResult, RetryPolicy, decide
from app.webhooks.ssrf import Guard, Resolver

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# Extra time granted to attempts in flight at shutdown, beyond their own timeout.
SHUTDOWN_GRACE_S = 1.0
# How often the pending gauge is recounted (at least).
PENDING_COUNT_EVERY_S = 5.0
RECORD_TRIES = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


class Notifier:
    """One notifier process's loop (see the module docstring). ``run`` blocks until stop."""

    def __init__(
        self,
        config: WebhookSettings,
        sessions: async_sessionmaker[AsyncSession],
        *,
        client: httpx.AsyncClient,
        guard: Guard,
        metrics: WebhookMetrics,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.client = client
        self.guard = guard
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.policy = RetryPolicy.from_settings(config)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_count = -PENDING_COUNT_EVERY_S
        self._last_prune = -self.config.prune_interval_s
        self._last_db_warning = -60.0

    async def run(self, stop: asyncio.Event) -> None:
        log.info(
            "webhook notifier started: concurrency %d, %d attempts, poll every %s s",
            self.config.concurrency,
            len(self.policy.schedule),
            self.config.poll_interval_s,
        )
        stopping = asyncio.create_task(stop.wait(), name="notifier-stop")
        try:
            while not stop.is_set():
                free = self.config.concurrency - len(self._tasks)
                claimed = await self._claim(free) if free > 0 else []
                for item in claimed:
                    task = asyncio.create_task(
                        self._deliver(item), name=f"webhook-{item.message_id}"
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                await self._count_pending()
                await self._prune()
                if claimed and len(claimed) == free:
                    continue  # a full batch: more may be due
                # Wake on stop, on a free slot when all are busy, or after the interval.
                full = len(self._tasks) >= self.config.concurrency
                waiters: set[asyncio.Future[Any]] = {stopping, *(self._tasks if full else ())}
                await asyncio.wait(
                    waiters,
                    timeout=self.config.poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stopping.cancel()
            await self._finish_in_flight()
            log.info("webhook notifier stopped")

    async def _finish_in_flight(self) -> None:
        if not self._tasks:
            return
        tasks = set(self._tasks)
        _, unfinished = await asyncio.wait(tasks, timeout=self.config.timeout_s + SHUTDOWN_GRACE_S)
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        if unfinished:
            log.warning(
                "%d webhook attempts cut short by shutdown: retried after their lease",
                len(unfinished),
            )

    async def _claim(self, limit: int) -> list[Claimed]:
        try:
            async with self.sessions() as session:
                return await claim_due(
                    session, now=self.clock(), limit=limit, lease_s=self.config.lease_s
                )
        except (SQLAlchemyError, OSError) as exc:
            self._database_warning("cannot claim webhook deliveries (will retry): %s", exc)
            return []

    async def _count_pending(self) -> None:
        if time.monotonic() - self._last_count < PENDING_COUNT_EVERY_S:
            return
        self._last_count = time.monotonic()
        try:
            async with self.sessions() as session:
                self.metrics.pending.set(await count_pending(session))
        except (SQLAlchemyError, OSError) as exc:
            self._database_warning("cannot count pending webhook deliveries: %s", exc)

    async def _prune(self) -> None:
        """Deletes expired finished deliveries, at most every ``prune_interval_s``."""
        if time.monotonic() - self._last_prune < self.config.prune_interval_s:
            return
        self._last_prune = time.monotonic()
        before = self.clock() - timedelta(days=self.config.retention_days)
        try:
            async with self.sessions() as session:
                removed = await prune_finished(session, before=before)
        except (SQLAlchemyError, OSError) as exc:
            self._database_warning("cannot prune old webhook deliveries: %s", exc)
            return
        if removed:
            log.info("pruned %d webhook deliveries finished before %s", removed, before)

    def _database_warning(self, message: str, exc: BaseException) -> None:
        if time.monotonic() - self._last_db_warning >= 60.0:
            self._last_db_warning = time.monotonic()
            log.warning(message, exc)

    async def _deliver(self, claimed: Claimed) -> None:
        try:
            result = await send_attempt(
                self.client, self.guard, claimed, now=self.clock(), timeout_s=self.config.timeout_s
            )
            self.metrics.attempts.labels(result.outcome).inc()
            self.metrics.delivery_seconds.observe(result.latency_ms / 1000)
            await self._record(claimed, result)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: keep delivering the rest; the lease retries this one
            log.exception(
                "webhook %s attempt %d failed unexpectedly", claimed.message_id, claimed.attempt
            )

    async def _record(self, claimed: Claimed, result: AttemptResult) -> None:
        now = self.clock()
        decision = decide(result, claimed.attempt, now, self.policy, self.rng)
        for attempt in range(RECORD_TRIES):
            try:
                async with self.sessions() as session:
                    ours = await record_attempt(session, claimed, result, decision, now=now)
                break
            except (SQLAlchemyError, OSError) as exc:
                log.warning(
                    "webhook %s: outcome not recorded (try %d of %d): %s",
                    claimed.message_id,
                    attempt + 1,
                    RECORD_TRIES,
                    exc,
                )
                await asyncio.sleep(0.2 * 2**attempt)
        else:
            log.error(
                "webhook %s attempt %d: outcome %s lost; attempted again after its lease",
                claimed.message_id,
                claimed.attempt,
                result.outcome,
            )
            return
        log.info(
            "webhook %s attempt %d to endpoint %d: %s status=%s %d ms -> %s%s",
            claimed.message_id,
            claimed.attempt,
            claimed.endpoint_id,
            result.outcome,
            result.status,
            result.latency_ms,
            decision.state,
            f" (error: {result.error})" if result.error else "",
        )
        if not ours:
            log.warning(
                "webhook %s: the lease ran out before attempt %d was recorded; "
                "another notifier owns the delivery now",
                claimed.message_id,
                claimed.attempt,
            )
            return
        if decision.state != "pending":
            self.metrics.deliveries.labels(decision.state).inc()
        if decision.disable_endpoint is not None:
            self.metrics.endpoints_disabled.inc()
            log.warning(
                "webhook endpoint %d disabled: %s", claimed.endpoint_id, decision.disable_endpoint
            )


async def run_notifier(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    clock: Clock = utcnow,
    session_factory: async_sessionmaker[AsyncSession] | None = None,
    resolver: Resolver | None = None,
    registry: CollectorRegistry | None = None,
    rng: random.Random | None = None,
) -> None:
    """Deliver the webhook outbox until ``stop`` is set (forever if None). Awaits;
    returns once attempts in flight are recorded or cut short.

    Opens the control-plane database of ``settings`` unless ``session_factory`` is
    given (then the caller owns its engine). The database must be migrated.
    ``resolver`` replaces DNS for the SSRF guard (tests); ``registry`` receives the
    metrics (default: prometheus_client's global registry).
    """
    from prometheus_client import REGISTRY

    from app.db.session import create_engine, database_url, sessionmaker

    stop = stop or asyncio.Event()
    config = settings.webhooks
    guard = Guard.from_hosts(config.allowed_hosts, resolver)
    engine = None
    if session_factory is None:
        engine = create_engine(database_url(settings))
        session_factory = sessionmaker(engine)
    metrics = WebhookMetrics(registry or REGISTRY)
    try:
        async with new_client(guard, config.timeout_s, config.concurrency) as client:
            notifier = Notifier(
                config,
                session_factory,
                client=client,
                guard=guard,
                metrics=metrics,
                clock=clock,
                rng=rng,
            )
            await notifier.run(stop)
    finally:
        if engine is not None:
            await engine.dispose()

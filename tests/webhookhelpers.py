"""A real webhook receiver, a controllable clock, and outbox set-up for webhook tests."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook, WebhookVerificationError

from app.db import migrate
from app.db.models import Campaign, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.db.rows import new_webhook
from app.db.session import create_engine, sessionmaker
from app.settings import Settings
from consumers.notifier.runner import Clock, run_notifier


@dataclass(frozen=True)
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes = b"ok"


@dataclass(frozen=True)
class Receipt:
    """One request as the receiver saw it."""

    path: str
    webhook_id: str
    verified_with: tuple[str, ...]  # the receiver's secrets for the path that verified it
    body: bytes
    headers: dict[str, str]
    status: int  # what the receiver answered
    at: float  # time.monotonic() when it answered

    @property
    def verified(self) -> bool:
        return bool(self.verified_with)


# (path, webhook-id, how many requests with this webhook-id arrived before) -> Answer
Plan = Callable[[str, str, int], Answer]


class Receiver:
    """An HTTP server on 127.0.0.1 (own thread) that verifies every request with the
    ``standardwebhooks`` library against the secrets registered for its path, answers
    per ``plan`` and records every request. Like a careful receiver it dedupes by
    webhook-id: ``processed`` holds each id once, ``duplicates`` counts re-receipts
    of an id it had already accepted (2xx)."""

    def __init__(self, plan: Plan | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.plan: Plan = plan or (lambda path, webhook_id, before: Answer())
        self.secrets: dict[str, list[str]] = {}
        self.receipts: list[Receipt] = []
        self.processed: dict[str, bytes] = {}
        self.duplicates: Counter[str] = Counter()
        self._arrivals: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str = "/hook") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("content-length", "0"))
        payload = request.rfile.read(length)
        headers = {k.lower(): v for k, v in request.headers.items()}
        webhook_id = headers.get("webhook-id", "")
        path = request.path
        verified = []
        for secret in self.secrets.get(path, []):
            try:
                Webhook(secret).verify(payload, headers)
                verified.append(secret)
            except WebhookVerificationError:
                pass
        with self._lock:  # counted on arrival: a slow answer must not hide a request
            before = self._arrivals[webhook_id]
            self._arrivals[webhook_id] += 1
        answer = self.plan(path, webhook_id, before)
        if answer.delay_s:
            time.sleep(answer.delay_s)
        try:
            request.send_response(answer.status)
            for name, value in answer.headers.items():
                request.send_header(name, value)
            request.send_header("content-length", str(len(answer.body)))
            request.end_headers()
            request.wfile.write(answer.body)
        except OSError:  # the sender gave up (timeout) or died
            pass
        with self._lock:
            self.receipts.append(
                Receipt(
                    path,
                    webhook_id,
                    tuple(verified),
                    payload,
                    headers,
                    answer.status,
                    time.monotonic(),
                )
            )
            if 200 <= answer.status < 300 and verified:
                if webhook_id in self.processed:
                    self.duplicates[webhook_id] += 1
                else:
                    self.processed[webhook_id] = payload

    def for_id(self, webhook_id: str) -> list[Receipt]:
        with self._lock:
            return [r for r in self.receipts if r.webhook_id == webhook_id]

    def snapshot(self) -> list[Receipt]:
        with self._lock:
            return list(self.receipts)


@asynccontextmanager
async def receiving(
    plan: Plan | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[Receiver]:
    receiver = Receiver(plan, tls).start()
    try:
        yield receiver
    finally:
        await asyncio.to_thread(receiver.stop)


class FakeClock:
    """A clock the test moves; starts at the real time so signatures stay fresh."""

    def __init__(self, start: datetime | None = None) -> None:
        self.at = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def webhook_settings(tmp_path: Any, database_url: str, **webhooks: Any) -> Settings:
    """Test settings with a compressed schedule: nothing in these tests waits for minutes."""
    from tests.conftest import make_settings

    config = {
        "allowed_hosts": ["127.0.0.1"],
        "retry_schedule_s": [0, 0.05, 0.05, 0.05, 0.05],
        "jitter": 0.0,
        "poll_interval_s": 0.02,
        "timeout_s": 2.0,
        "lease_s": 5.0,
        **webhooks,
    }
    return make_settings(tmp_path, database={"url": database_url}, webhooks=config)


@asynccontextmanager
async def outbox_db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The migrated control-plane database's sessions."""
    await migrate.upgrade(database_url)
    engine = create_engine(database_url)
    try:
        yield sessionmaker(engine)
    finally:
        await engine.dispose()


async def add_endpoint(
    sessions: async_sessionmaker[AsyncSession],
    url: str,
    *,
    campaign: str = "spring",
    event_types: list[str] | None = None,
    enabled: bool = True,
) -> WebhookEndpoint:
    async with sessions() as session:
        row = await session.scalar(select(Campaign).where(Campaign.slug == campaign))
        if row is None:
            row = Campaign(slug=campaign, name=campaign)
            session.add(row)
            await session.flush()
        endpoint = new_webhook(row, url, event_types, enabled=enabled)
        session.add(endpoint)
        await session.commit()
        return endpoint


async def listening(
    sessions: async_sessionmaker[AsyncSession], receiver: Receiver, path: str = "/hook"
) -> WebhookEndpoint:
    """An endpoint at ``receiver``'s ``path``, whose secret the receiver verifies with."""
    endpoint = await add_endpoint(sessions, receiver.url(path))
    receiver.secrets[path] = [endpoint.secret]
    return endpoint


async def deliveries(sessions: async_sessionmaker[AsyncSession]) -> list[WebhookDelivery]:
    async with sessions() as session:
        return list(await session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


async def attempt_log(
    sessions: async_sessionmaker[AsyncSession], delivery_id: int
) -> list[WebhookAttempt]:
    async with sessions() as session:
        return list(
            await session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.id)
            )
        )


@asynccontextmanager
async def notifier(
    settings: Settings,
    sessions: async_sessionmaker[AsyncSession],
    *,
    clock: Clock | None = None,
    resolver: Any = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """``run_notifier`` as a task for the block; stopped (cleanly) at its end."""
    stop = asyncio.Event()
    kwargs: dict[str, Any] = {"session_factory": sessions, "registry": CollectorRegistry()}
    if clock is not None:
        kwargs["clock"] = clock
    if resolver is not None:
        kwargs["resolver"] = resolver
    task = asyncio.create_task(run_notifier(settings, stop, **kwargs))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def settled(
    sessions: async_sessionmaker[AsyncSession], count: int
) -> list[WebhookDelivery] | None:
    """The deliveries once ``count`` exist and none is pending any more."""
    rows = await deliveries(sessions)
    done = len(rows) == count and all(d.state != "pending" for d in rows)
    return rows if done else None


async def run_until_settled(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], count: int, **kwargs: Any
) -> list[WebhookDelivery]:
    """Runs a notifier until ``count`` deliveries exist and none is pending; returns them."""
    async with notifier(settings, sessions, **kwargs):
        rows: list[WebhookDelivery] = await until(
            lambda: settled(sessions, count), what=f"{count} deliveries to settle"
        )
        return rows


async def until(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Polls ``check`` (sync or async) until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out waiting for {what or check}; last seen: {last!r}")


async def states(sessions: async_sessionmaker[AsyncSession]) -> Counter[str]:
    return Counter(d.state for d in await deliveries(sessions))


async def count_in_state(sessions: async_sessionmaker[AsyncSession], state: str) -> int:
    async with sessions() as session:
        count = await session.scalar(
            select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.state == state)
        )
        return int(count or 0)

"""What one running API holds, built by ``create_app`` and reached by routes
through the ``StateDep`` dependency alias."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.bus.base import Bus, Record
from app.db.keys import Principal, authenticate, hash_key
from app.enrich import Enricher
from app.events import InvalidEvent
from app.links import CampaignPolicy, LinkRegistry
from app.metrics import ApiMetrics
from app.ratelimit import TokenBuckets
from app.settings import Settings
from app.storage.clickhouse import ClickHouse
from app.tokens import TokenSigner
from app.webhooks.ssrf import Guard, Resolver

if TYPE_CHECKING:
    from app.ingest import PixelIngest

DLQ_PAYLOAD_MAX_CHARS = 8192
KEY_CACHE_MAX = 10_000


@dataclass(slots=True)
class AppState:
    settings: Settings
    signer: TokenSigner
    enricher: Enricher
    links: LinkRegistry
    metrics: ApiMetrics
    ip_buckets: TokenBuckets
    campaign_buckets: TokenBuckets
    bus: Bus | None = None
    pixels: PixelIngest | None = None
    # Reads for the query API (app.routes.query); owned by whoever set it.
    clickhouse: ClickHouse | None = None
    # The control-plane database (app.db); built in the lifespan.
    db: async_sessionmaker[AsyncSession] | None = None
    # Cached from the database by app.links.LinkRefresher.
    campaign_policies: dict[str, CampaignPolicy] = field(default_factory=dict)
    cors_origins: frozenset[str] = frozenset()
    # Campaigns whose /v1/events need a write key (empty: the check is skipped).
    write_key_campaigns: frozenset[str] = frozenset()
    # sha256(key) -> principal (None: not a valid key); cleared on every refresh
    # (app.links.LinkRefresher) and, for one key, when the admin API revokes it.
    key_cache: dict[str, Principal | None] = field(default_factory=dict)
    # The query API's caches (app.routes.query), built on first use.
    query_caches: Any = None
    # DNS for the webhook URL check (None: the system's); tests put a fake here.
    webhook_resolver: Resolver | None = None
    started_at: float = field(default_factory=time.time)

    @property
    def topic(self) -> str:
        return self.settings.kafka.topic

    def require_bus(self) -> Bus:
        if self.bus is None:  # only before the lifespan has started
            raise RuntimeError("the bus is not started")
        return self.bus

    def require_db(self) -> async_sessionmaker[AsyncSession]:
        if self.db is None:
            raise RuntimeError("the control-plane database is not open")
        return self.db

    async def principal(self, key: str) -> Principal | None:
        """The principal of an API key (None: unknown or revoked), from ``key_cache``
        or the control-plane database. A key stays cached until the next refresh
        (``tracking.links_cache_ttl_s``), so a revocation made elsewhere takes up to
        that long. Raises ``SQLAlchemyError``/``OSError`` when the database cannot
        be reached (nothing is cached then)."""
        digest = hash_key(key)
        if digest not in self.key_cache:
            if len(self.key_cache) >= KEY_CACHE_MAX:
                self.key_cache.clear()  # bounded: a flood of random keys cannot grow it
            async with self.require_db()() as session:
                principal = await authenticate(session, key)
                await session.commit()  # last_used_at
            self.key_cache[digest] = principal
        return self.key_cache[digest]

    def webhook_guard(self) -> Guard:
        """The SSRF guard that checks webhook URLs as admins save them."""
        return Guard.from_hosts(self.settings.webhooks.allowed_hosts, self.webhook_resolver)

    def require_pixels(self) -> PixelIngest:
        if self.pixels is None:
            raise RuntimeError("the pixel pipeline is not started")
        return self.pixels

    def dead_letter(
        self,
        error: InvalidEvent,
        source: str,
        payload: Any,
        received_ms: int,
        campaign: str | None = None,
    ) -> None:
        """Routes a refused event to the DLQ topic without waiting, and counts it.

        The payload is what the client sent (never the client's address),
        truncated to keep one hostile request from filling the topic.
        """
        envelope = {
            "reason": error.reason,
            "field": error.field,
            "message": error.message,
            "source": source,
            "received_at": received_ms,
        }
        body = orjson.dumps({**envelope, "payload": payload}, default=str)
        if len(body) > DLQ_PAYLOAD_MAX_CHARS:
            excerpt = body[:DLQ_PAYLOAD_MAX_CHARS].decode("utf-8", "replace")
            body = orjson.dumps({**envelope, "truncated": True, "payload": excerpt})
        key = campaign.encode() if campaign else None
        self.require_bus().publish_nowait(Record(self.settings.kafka.dlq_topic, key, body))
        self.metrics.count_dlq(error.reason)


async def get_state(request: Request) -> AppState:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread
    # pool, a thread hop on every request.
    state: AppState = request.app.state.vt
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000

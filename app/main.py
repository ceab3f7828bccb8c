"""The application factory.

``create_app(settings)`` builds the ASGI app; its lifespan starts and stops
the bus (the Kafka producer and spool, or the in-process bus). Nothing
connects at import time. ``app_from_env`` is the factory the servers import
by name: it is the one place that builds ``Settings`` for a server process.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from app.bus.base import Bus
from app.bus.spool import Spool, SpoolLocked
from app.db.session import create_engine, database_url, sessionmaker
from app.enrich import Enricher
from app.errors import install_error_handlers
from app.ingest import PixelIngest
from app.links import LinkRefresher, LinkRegistry
from app.metrics import ApiMetrics
from app.pixel import PixelFastPath
from app.ratelimit import TokenBuckets
from app.routes import admin, dashboard, query, tracking
from app.settings import Settings
from app.state import AppState
from app.storage.clickhouse import ClickHouse
from app.tokens import TokenSigner


def build_bus(settings: Settings, metrics: ApiMetrics) -> Bus:
    """Kafka with the spool when ``kafka.bootstrap`` is set, else the in-process bus."""
    if settings.kafka.bootstrap:
        from app.bus.kafka import KafkaBus

        return KafkaBus(settings.kafka, settings.spool, open_worker_spool(settings), metrics)
    from app.bus.memory import MemoryBus

    return MemoryBus(settings.kafka.partitions)


MAX_SPOOL_SLOTS = 256


def open_worker_spool(settings: Settings) -> Spool:
    """Opens the first free spool slot ``<spool dir>/worker-N``.

    Each server worker process needs its own spool (a spool is locked by one
    process). Slots are taken lowest first, so after a restart with the same
    worker count every slot is reopened and replayed. A slot left behind
    when the worker count shrinks is replayed only when a worker takes it
    again (see the README's limits).
    """
    for slot in range(MAX_SPOOL_SLOTS):
        try:
            return Spool(
                settings.spool_dir / f"worker-{slot}",
                settings.spool.max_bytes,
                settings.spool.segment_bytes,
            )
        except SpoolLocked:
            continue
    raise RuntimeError(f"all {MAX_SPOOL_SLOTS} spool slots under {settings.spool_dir} are in use")


def create_app(
    settings: Settings,
    bus: Bus | None = None,
    clickhouse: ClickHouse | None = None,
    metrics: ApiMetrics | None = None,
) -> FastAPI:
    """Builds the FastAPI app; ``create_asgi`` wraps it for serving.

    ``bus`` overrides the one the settings select (tests, embedded mode);
    the app starts and stops whichever bus it ends up with. ``clickhouse``
    is the query API's reader (embedded mode; the caller closes it); without
    it, one is opened on first use for an ``http(s)://`` DSN and closed at
    shutdown. ``metrics`` lets the embedded mode share the registry with its
    consumers (one ``/metrics``).
    """
    tracking_settings = settings.tracking
    signer = TokenSigner.from_settings(tracking_settings)
    file_links = LinkRegistry.load(tracking_settings.links_file, signer)
    metrics = metrics or ApiMetrics()
    state = AppState(
        settings=settings,
        signer=signer,
        enricher=Enricher(tracking_settings),
        links=file_links,
        metrics=metrics,
        clickhouse=clickhouse,
        ip_buckets=TokenBuckets(
            tracking_settings.rate_ip_per_s,
            tracking_settings.rate_ip_burst,
            tracking_settings.rate_table_size,
        ),
        campaign_buckets=TokenBuckets(
            tracking_settings.rate_campaign_per_s,
            tracking_settings.rate_campaign_burst,
            tracking_settings.rate_table_size,
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(database_url(settings))
        state.db = sessionmaker(engine)
        links = LinkRefresher(state, file_links, tracking_settings.links_cache_ttl_s)
        await links.start()
        state.bus = bus if bus is not None else build_bus(settings, metrics)
        await state.bus.start()
        state.pixels = PixelIngest(state)
        try:
            yield
        finally:
            state.pixels.drain()  # hits accepted before shutdown still reach the bus
            await state.bus.stop()
            await links.stop()
            await engine.dispose()
            if state.clickhouse is not None and state.clickhouse is not clickhouse:
                await asyncio.to_thread(state.clickhouse.close)

    app = FastAPI(
        title="viraltrace",
        version="0.1.0",
        summary="Live share-cascade tracking",
        lifespan=lifespan,
    )
    app.state.vt = state
    install_error_handlers(app)
    app.include_router(tracking.router)
    app.include_router(query.router)
    app.include_router(admin.router)
    app.include_router(dashboard.build_router())
    app.add_middleware(
        # mypy cannot match a keyword-only extra argument to Starlette's factory protocol.
        CampaignCORSMiddleware,  # type: ignore[arg-type]
        state=state,
        allow_origins=tracking_settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["content-type", "authorization"],
        max_age=tracking_settings.cors_max_age_s,
    )
    return app


class CampaignCORSMiddleware(CORSMiddleware):
    """CORS allowing the origins in settings plus every campaign's ``allowed_origins``
    (from the control-plane cache, so a new origin works within one refresh)."""

    def __init__(self, app: ASGIApp, *, state: AppState, **options: Any) -> None:
        super().__init__(app, **options)
        self.state = state

    def is_allowed_origin(self, origin: str) -> bool:
        return super().is_allowed_origin(origin) or origin in self.state.cors_origins


def create_asgi(
    settings: Settings,
    bus: Bus | None = None,
    clickhouse: ClickHouse | None = None,
    metrics: ApiMetrics | None = None,
) -> PixelFastPath:
    """What servers run: the app behind the pixel fast path (``app.pixel``)."""
    return PixelFastPath(create_app(settings, bus=bus, clickhouse=clickhouse, metrics=metrics))


def app_from_env() -> PixelFastPath:
    """Server entry point: settings from the environment, built once per process."""
    return create_asgi(Settings())

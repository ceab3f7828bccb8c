"""``viraltrace up``: the API, every consumer and the webhook notifier in one process.

Order of start: migrations, the ClickHouse client (chdb unless a DSN is
set), the bus (in-process unless ``kafka.bootstrap`` is set), then the HTTP
server, the consumers and the webhook notifier side by side on one event loop.

Order of stop (SIGINT/SIGTERM): the HTTP server first (no new events; the
pixel micro-batch drains into the bus), then, on the in-process bus, the
consumers read what is left (up to ``DRAIN_TIMEOUT_S``), then they make
their final write and commit (the notifier finishes its attempts in flight),
then ClickHouse closes. A second signal stops at once. On Kafka nothing
needs draining: what the consumers have not read stays in Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Iterator

import uvicorn
from pydantic import SecretStr

from app.bus.memory import MemoryBus
from app.db.session import create_engine, database_url, sessionmaker
from app.main import build_bus, create_asgi
from app.metrics import ApiMetrics
from app.settings import Settings
from app.storage.clickhouse import ClickHouse
from app.storage.migrate import MIGRATIONS_DIR, migrate
from consumers.alerts.runner import alerts_runner, buzz_runner
from consumers.base import ConsumerMetrics, KafkaTransport, Transport, run_all
from consumers.cascades.runner import cascades_runner
from consumers.notifier.runner import run_notifier
from consumers.sink.runner import sink_runners

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0
READ_KEY_FILE = "read-key"


def apply_migrations(settings: Settings, clickhouse: ClickHouse) -> list[str]:
    """Apply pending ClickHouse migrations; returns the names applied (idempotent)."""
    return migrate(
        clickhouse,
        settings.clickhouse.migrations_dir or MIGRATIONS_DIR,
        settings_ttl_days=settings.clickhouse.events_ttl_days,
        cluster=settings.clickhouse.cluster_spec(),
    )


async def apply_database_migrations(settings: Settings) -> list[str]:
    """Upgrade the control-plane database to head; returns the revisions applied."""
    from app.db import migrate as alembic

    return await alembic.upgrade(database_url(settings), directory=settings.database.migrations_dir)


def ensure_read_key(settings: Settings) -> tuple[Settings, str | None]:
    """Settings with a read key: the configured ones, else one kept in
    ``<data_dir>/read-key`` (made on first run, mode 0600). Returns the key
    from the file, or None when keys were configured."""
    if settings.query.read_keys:
        return settings, None
    path = settings.data_dir / READ_KEY_FILE
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(f"vt_read_{secrets.token_urlsafe(24)}\n")
    key = path.read_text().strip()
    query = settings.query.model_copy(update={"read_keys": [SecretStr(key)]})
    return settings.model_copy(update={"query": query}), key


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``Embedded`` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Embedded:
    """One ``up`` run. ``run()`` blocks until a signal (or ``request_stop``)."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.api_stopping = asyncio.Event()
        self.consumers_stop = asyncio.Event()
        self.server: _Server | None = None

    def request_stop(self) -> None:
        """First call: graceful stop; a second call: stop at once."""
        if self.api_stopping.is_set():
            log.warning("second stop request: exiting without draining")
            self.consumers_stop.set()
            if self.server is not None:
                self.server.force_exit = True
        self.api_stopping.set()
        if self.server is not None:
            self.server.should_exit = True

    async def run(self) -> None:
        settings = self.settings
        clickhouse = await asyncio.to_thread(ClickHouse, settings.clickhouse_dsn)
        try:
            applied = await asyncio.to_thread(apply_migrations, settings, clickhouse)
            applied += await apply_database_migrations(settings)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            await self._serve(clickhouse)
        finally:
            await asyncio.to_thread(clickhouse.close)

    async def _serve(self, clickhouse: ClickHouse) -> None:
        settings = self.settings
        api_metrics = ApiMetrics()
        bus = build_bus(settings, api_metrics)
        transport: Transport = (
            bus if isinstance(bus, MemoryBus) else KafkaTransport.from_settings(settings)
        )
        asgi = create_asgi(settings, bus=bus, clickhouse=clickhouse, metrics=api_metrics)
        config = uvicorn.Config(
            asgi,
            host=self.host,
            port=self.port,
            access_log=False,
            log_config=None,
            lifespan="on",
        )
        self.server = _Server(config)
        consumer_metrics = ConsumerMetrics(api_metrics.registry)
        engine = create_engine(database_url(settings))
        sessions = sessionmaker(engine)
        runners = [
            *sink_runners(settings, clickhouse, self.consumers_stop, consumer_metrics, transport),
            cascades_runner(settings, clickhouse, self.consumers_stop, consumer_metrics, transport),
            buzz_runner(settings, sessions, self.consumers_stop, consumer_metrics, transport),
            alerts_runner(
                settings, clickhouse, sessions, self.consumers_stop, consumer_metrics, transport
            ),
        ]
        consumers = asyncio.create_task(run_all(runners, self.consumers_stop), name="consumers")
        notifier = asyncio.create_task(
            run_notifier(settings, self.consumers_stop, registry=api_metrics.registry),
            name="notifier",
        )
        background = (consumers, notifier)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            server = asyncio.create_task(self.server.serve(), name="api")
            await asyncio.wait({server, *background}, return_when=asyncio.FIRST_COMPLETED)
            if any(task.done() for task in background):  # one failed: take the API down too
                self.request_stop()
            await server
            if isinstance(bus, MemoryBus):
                await self._drain(bus, [r.group_id for r in runners])
            self.consumers_stop.set()
            await asyncio.gather(*background)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self.consumers_stop.set()
            for task in background:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await engine.dispose()

    async def _drain(self, bus: MemoryBus, groups: list[str]) -> None:
        """Wait until every group has committed everything (or the timeout, or a 2nd stop)."""
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
        while any(bus.lag(group) for group in groups):
            if self.consumers_stop.is_set() or asyncio.get_running_loop().time() > deadline:
                left = sum(bus.lag(group) for group in groups)
                log.warning("stopping with %d records unwritten (in-process bus)", left)
                return
            await asyncio.sleep(0.05)

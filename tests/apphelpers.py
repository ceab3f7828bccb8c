"""Helpers to run the app in-process with its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI

from app.bus.base import Bus
from app.bus.memory import MemoryBus
from app.main import create_asgi
from app.settings import Settings
from app.storage.clickhouse import ClickHouse

CLIENT_ADDR = ("203.0.113.9", 4321)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


@asynccontextmanager
async def running_app(
    settings: Settings, bus: Bus | None = None, clickhouse: ClickHouse | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    asgi = create_asgi(settings, bus=bus, clickhouse=clickhouse)
    app = asgi.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=asgi, client=CLIENT_ADDR)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"user-agent": CHROME}
        ) as client:
            yield app, client


def memory_records(app: FastAPI, topic: str) -> list[tuple[int, bytes | None, dict[str, Any]]]:
    """(partition, key, decoded value) of every record the in-process bus holds for ``topic``."""
    app.state.vt.require_pixels().drain()  # pixel hits are processed on the next loop turn
    bus = app.state.vt.bus
    assert isinstance(bus, MemoryBus)
    out = []
    for partition in range(bus.partitions):
        for record in bus.read(topic, partition, 0, 10**9):
            out.append((partition, record.key, orjson.loads(record.value)))
    return out


def events(app: FastAPI) -> list[dict[str, Any]]:
    return [value for _, _, value in memory_records(app, app.state.vt.settings.kafka.topic)]


def dead_letters(app: FastAPI) -> list[dict[str, Any]]:
    return [value for _, _, value in memory_records(app, app.state.vt.settings.kafka.dlq_topic)]

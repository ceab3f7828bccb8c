"""The tracking pixel: ``GET``/``HEAD /p.gif``.

The browser always gets the 43-byte GIF, whatever the input; a bad event
goes to the DLQ with its reason. The pixel never waits for the broker.
``PixelFastPath`` answers it as raw ASGI ahead of FastAPI's routing, because
this is the hottest path of the service (see docs/benchmarks.md); the
FastAPI route of the same path exists for the OpenAPI document and calls
the same ``track_pixel``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from app.bus.base import Record
from app.events import (
    PIXEL_PARAMS,
    InvalidEvent,
    build_event,
    check_time,
    clean_url,
    parse_event,
    partition_key,
    resolve_token,
)
from app.state import AppState, now_ms

log = logging.getLogger(__name__)

# The smallest transparent GIF (1x1, 43 bytes).
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
PIXEL_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(PIXEL_GIF)).encode()),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
]
PIXEL_HEADER_MAP = {k.decode(): v.decode() for k, v in PIXEL_HEADERS}


def _pixel_fields(query: str) -> dict[str, str]:
    fields: dict[str, str] = {"type": "view"}
    for name, value in parse_qsl(query, keep_blank_values=False):
        field = PIXEL_PARAMS.get(name)
        if field is not None:
            fields[field] = value
    return fields


def track_pixel(state: AppState, scope: Mapping[str, Any]) -> None:
    """Validates, enriches and hands one pixel event to the bus. Never raises
    for bad input (it goes to the DLQ) and never waits."""
    received = now_ms()
    raw_query: bytes = scope.get("query_string", b"")
    tracking = state.settings.tracking
    if len(raw_query) > tracking.max_query_bytes:
        error = InvalidEvent("oversized", "query", "query string is too long")
        state.dead_letter(
            error, "pixel", raw_query[: tracking.max_query_bytes].decode("latin-1"), received
        )
        state.metrics.ingest_events.labels("unknown", "rejected").inc()
        return
    fields = _pixel_fields(raw_query.decode("latin-1"))
    campaign = fields.get("campaign")
    try:
        if state.ip_buckets.take(state.enricher.client_ip(scope)) or (
            campaign is not None and state.campaign_buckets.take(campaign)
        ):
            raise InvalidEvent("rate_limited", None, "too many events from this client or campaign")
        event = parse_event(fields)
        ts = check_time(event.ts, received, tracking.max_event_age_s, tracking.max_event_skew_s)
        url = clean_url(event.url)
        token = resolve_token(state.signer, event.token, event.campaign)
    except InvalidEvent as error:
        state.dead_letter(error, "pixel", fields, received, campaign)
        outcome = "rate_limited" if error.reason == "rate_limited" else "rejected"
        state.metrics.ingest_events.labels(fields.get("type", "unknown")[:16], outcome).inc()
        return
    client = state.enricher.from_scope(scope, event.campaign)
    event_type = "preview" if scope.get("method") == "HEAD" or client.preview else event.type
    parent = None
    if event_type == "share":
        parent = token
        token = state.signer.mint_child(token) if token else state.signer.mint_root(event.campaign)
    wire = build_event(
        event,
        event_type=event_type,
        token=token,
        client=client,
        source="pixel",
        ts=ts,
        received_ms=received,
        url=url,
        parent=parent,
    )
    state.require_bus().publish_nowait(Record(state.topic, partition_key(wire), orjson.dumps(wire)))
    state.metrics.ingest_events.labels(event_type, "accepted").inc()


class PixelFastPath:
    """Pure ASGI middleware: answers ``/p.gif`` before routing, passes the rest on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/p.gif"
            and scope["method"] in ("GET", "HEAD")
        ):
            try:
                track_pixel(scope["app"].state.vt, scope)
            except Exception:  # the browser must never see an error from the pixel
                log.exception("pixel tracking failed")
            await send_pixel(send, head=scope["method"] == "HEAD")
            return
        await self.app(scope, receive, send)


async def send_pixel(send: Send, head: bool) -> None:
    start: MutableMapping[str, Any] = {
        "type": "http.response.start",
        "status": 200,
        "headers": PIXEL_HEADERS,
    }
    await send(start)
    await send({"type": "http.response.body", "body": b"" if head else PIXEL_GIF})

"""The tracking pixel: ``GET``/``HEAD /p.gif``.

The browser always gets the 43-byte GIF, whatever the input; a bad event
goes to the DLQ with its reason (see ``app.ingest``, which does the work in
micro-batches after the answer). The pixel never waits for the broker.
``PixelFastPath`` answers it as raw ASGI in front of the FastAPI app,
because this is the hottest path of the service (see docs/benchmarks.md);
the FastAPI route of the same path exists for the OpenAPI document (and
for an app mounted without the wrapper) and calls the same ``track_pixel``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.state import AppState

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


def track_pixel(state: AppState, scope: Mapping[str, Any]) -> None:
    """Hands the hit to the ingest pipeline. Never raises: the browser must
    never see an error from the pixel, whatever happens behind it."""
    try:
        state.require_pixels().submit(scope)
    except Exception:
        log.exception("pixel tracking failed")


class PixelFastPath:
    """The ASGI entry point servers run: answers ``/p.gif`` itself, passes the rest on.

    It wraps the FastAPI app from the outside, so the hottest path skips
    FastAPI's middleware stack entirely; everything else (lifespan
    included) goes to the app unchanged.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state: AppState = app.state.vt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/p.gif"
            and scope["method"] in ("GET", "HEAD")
        ):
            track_pixel(self.state, scope)
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

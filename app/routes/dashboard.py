"""The live page (``/dashboard``) and the tracking snippet (``/t.js``).

Both are static files shipped in the package (``app/static``, package data),
read once when the app is built and answered from memory with their content
type, a strong ETag (``If-None-Match`` gives 304) and the headers below. The
page is plain HTML, JS and CSS with no inline script or style, so its
Content-Security-Policy allows only this origin's files and API.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, Request, Response

# Only this origin's script, style and API; no inline code, no framing, and a
# form that cannot submit natively (the key must never land in a URL).
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": DASHBOARD_CSP,
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    # Unversioned file names: revalidate every time (the ETag makes that a 304).
    "Cache-Control": "no-cache",
}
ASSET_HEADERS = {
    **SECURITY_HEADERS,
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}
# The snippet runs on customers' pages: any origin may load it (CORS for SRI's
# crossorigin attribute, CORP for pages with COEP), cached briefly so that a new
# release reaches every page within minutes.
SNIPPET_HEADERS = {
    **SECURITY_HEADERS,
    "Access-Control-Allow-Origin": "*",
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Cache-Control": "public, max-age=300",
}

JS = "text/javascript; charset=utf-8"

# URL path -> (file under app/static, content type, headers)
FILES: dict[str, tuple[str, str, dict[str, str]]] = {
    "/dashboard": ("dashboard/index.html", "text/html; charset=utf-8", PAGE_HEADERS),
    "/dashboard/dashboard.js": ("dashboard/dashboard.js", JS, ASSET_HEADERS),
    "/dashboard/dashboard.css": (
        "dashboard/dashboard.css",
        "text/css; charset=utf-8",
        ASSET_HEADERS,
    ),
    "/dashboard/favicon.svg": ("dashboard/favicon.svg", "image/svg+xml", ASSET_HEADERS),
    "/t.js": ("t.js", JS, SNIPPET_HEADERS),
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    headers: dict[str, str]  # content type, ETag and the path's own headers

    @property
    def etag(self) -> str:
        return self.headers["ETag"]


def load_static(name: str, media_type: str, headers: dict[str, str]) -> StaticFile:
    """Reads ``app/static/<name>`` from the installed package."""
    body = resources.files("app").joinpath("static", *name.split("/")).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return StaticFile(body, {**headers, "Content-Type": media_type, "ETag": etag})


def _not_modified(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match")
    if given is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in given.split(",")}
    return etag in tags or "*" in tags


def build_router() -> APIRouter:
    """The routes of the shipped static files (read now, so a missing file fails at start)."""
    router = APIRouter(include_in_schema=False)
    for path, (name, media_type, headers) in FILES.items():
        router.add_api_route(path, _responder(load_static(name, media_type, headers)),
                             methods=["GET", "HEAD"])  # fmt: skip
    return router


def _responder(static: StaticFile) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        if _not_modified(request, static.etag):
            headers = {k: v for k, v in static.headers.items() if k != "Content-Type"}
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else static.body
        headers = {**static.headers, "Content-Length": str(len(static.body))}
        return Response(body, headers=headers)

    return serve

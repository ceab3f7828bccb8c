"""The live page and the snippet as served files: content types, CSP, caching,
the snippet's size budget, and what the shipped JS must never do.

What they do in a browser is in tests/test_browser.py.
"""

from __future__ import annotations

import gzip
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import httpx
import pytest

from app.routes.dashboard import DASHBOARD_CSP, FILES
from tests.apphelpers import running_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "app" / "static"
SNIPPET_BUDGET_BYTES = 3 * 1024


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(make_settings(tmp_path)) as (_, http):
        yield http


async def test_the_page_is_html_with_a_strict_csp_and_revalidated(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert csp == DASHBOARD_CSP
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["form-action"] == "'none'"  # the key form can never submit into a URL
    assert directives["frame-ancestors"] == "'none'"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-cache"
    assert page.text == (STATIC / "dashboard" / "index.html").read_text()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard/dashboard.css", "text/css; charset=utf-8"),
        ("/dashboard/favicon.svg", "image/svg+xml"),
    ],
)
async def test_page_assets_have_their_types_and_stay_same_origin(
    client: httpx.AsyncClient, path: str, content_type: str
) -> None:
    asset = await client.get(path)
    assert asset.status_code == 200
    assert asset.headers["content-type"] == content_type
    assert asset.headers["x-content-type-options"] == "nosniff"
    assert asset.headers["cross-origin-resource-policy"] == "same-origin"
    assert asset.headers["cache-control"] == "no-cache"
    assert "access-control-allow-origin" not in asset.headers


async def test_the_snippet_is_javascript_any_site_may_load_and_cache_briefly(
    client: httpx.AsyncClient,
) -> None:
    snippet = await client.get("/t.js", headers={"origin": "https://blog.example"})
    assert snippet.status_code == 200
    assert snippet.headers["content-type"] == "text/javascript; charset=utf-8"
    assert snippet.headers["access-control-allow-origin"] == "*"
    assert snippet.headers["cross-origin-resource-policy"] == "cross-origin"
    assert snippet.headers["cache-control"] == "public, max-age=300"
    assert snippet.content == (STATIC / "t.js").read_bytes()


async def test_etag_gives_304_and_head_gives_headers_only(client: httpx.AsyncClient) -> None:
    for path in FILES:
        first = await client.get(path)
        etag = first.headers["etag"]
        assert re.fullmatch(r'"[0-9a-f]{32}"', etag)
        again = await client.get(path, headers={"if-none-match": f'W/"other", {etag}'})
        assert again.status_code == 304, path
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == first.headers["cache-control"]
        changed = await client.get(path, headers={"if-none-match": '"stale"'})
        assert changed.status_code == 200 and changed.content == first.content
        head = await client.head(path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(first.content))
        assert head.headers["content-type"] == first.headers["content-type"]


async def test_the_static_routes_stay_out_of_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not set(FILES) & set(paths)


def test_the_snippet_fits_its_3_kb_gzip_budget() -> None:
    body = (STATIC / "t.js").read_bytes()
    # Level 6 is what servers and CDNs use by default; -9 would flatter it.
    size = len(gzip.compress(body, compresslevel=6))
    assert size <= SNIPPET_BUDGET_BYTES, f"t.js is {size} bytes gzipped, over 3 kB"


def shipped_js() -> list[Path]:
    return sorted(STATIC.rglob("*.js"))


@pytest.mark.parametrize("path", shipped_js(), ids=lambda p: p.name)
def test_shipped_js_never_turns_strings_into_html_or_code(path: Path) -> None:
    """API strings (alert samples are visitors' own words) must reach the page as text."""
    source = path.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "DOMParser", "createContextualFragment"):  # fmt: skip
        assert sink not in source, f"{path.name} uses {sink}"
    if path.name == "dashboard.js":
        # The page's CSP has no 'unsafe-inline' for styles: CSSOM only, no style attributes.
        assert not re.search(r"setAttribute\(\s*[\"']style", source)
        assert not re.search(r"setAttribute\(\s*[\"']on", source)


def test_the_page_has_no_inline_script_style_or_handler() -> None:
    """Everything the CSP would block: inline <script>/<style>, style= and on*= attributes."""
    html = (STATIC / "dashboard" / "index.html").read_text()
    for script in re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S):
        attributes, body = script
        assert "src=" in attributes and not body.strip()
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    # Only the page's own files: nothing from a CDN.
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith("/dashboard/"), url


def test_every_static_file_is_package_data() -> None:
    """So that `pip install .` (and the Docker image) carries the page and the snippet."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    files = [p.relative_to(ROOT / "app").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert files
    for name in files:
        assert any(PurePosixPath(name).match(pattern) for pattern in patterns), name
    served = {name for name, _, _ in FILES.values()}
    assert {f"static/{name}" for name in served} == set(files)

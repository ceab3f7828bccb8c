"""Schemathesis against the app's own OpenAPI: no input may produce a 5xx.

The app runs in-process on the in-process bus; hypothesis drives
schema-conforming and schema-violating inputs into every operation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bus.memory import MemoryBus
from app.ingest import PixelIngest
from app.main import create_asgi
from app.pixel import PIXEL_GIF
from tests.conftest import make_settings

ASGI = create_asgi(
    make_settings(Path("/nonexistent-fuzz-dir"), tracking={"cors_origins": ["https://a.example"]})
)
APP = ASGI.app
# Schemathesis calls the app without running its lifespan; the in-process bus needs no start.
APP.state.vt.bus = MemoryBus(4)
APP.state.vt.pixels = PixelIngest(APP.state.vt)
schema = schemathesis.openapi.from_asgi("/openapi.json", ASGI)


def call(method: str, url: str, **kwargs: object) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=ASGI)
        async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(go())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    )
    if case.path == "/p.gif" and case.method == "GET":
        assert response.status_code == 200 and response.headers["content-type"][0] == "image/gif"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_schema_covers_the_tracking_surface(method: str) -> None:
    operations = {
        (op.method.upper(), op.path) for op in (r.ok() for r in schema.get_all_operations())
    }
    assert (method, "/p.gif") in operations
    assert {("POST", "/v1/events"), ("POST", "/v1/shares"), ("GET", "/r/{slug}")} <= operations


def encode(value: object) -> bytes:
    # The stdlib encoder, because it also writes what orjson refuses (huge ints, NaN).
    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
event_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["view", "share", "click", "bogus"]),
        "campaign": st.sampled_from(["spring", "X!"]),
    },
    optional={
        "token": st.text(max_size=50),
        "ts": json_values,
        "value": json_values,
        "channel": st.text(max_size=40),
        "event_id": st.text(max_size=40),
        "url": st.text(max_size=60),
    },
)


@given(
    body=st.one_of(
        st.binary(max_size=300),
        json_values.map(encode),
        st.lists(event_like | json_values, max_size=20).map(encode),
    )
)
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_events_body_fuzz_gets_a_documented_answer(body: bytes) -> None:
    resp = call("POST", "/v1/events", content=body, headers={"content-type": "text/plain"})
    assert resp.status_code in (202, 400, 413), resp.text
    if resp.status_code != 202:
        error = resp.json()["error"]
        assert error["reason"] and error["status"] == resp.status_code
    else:
        body_json = resp.json()
        assert all(
            {"index", "reason", "field", "message"} <= r.keys() for r in body_json["rejected"]
        )


@given(query=st.binary(max_size=400))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_pixel_query_fuzz_always_answers_the_gif(query: bytes) -> None:
    # Straight into the ASGI app: raw bytes that no HTTP client would even send.
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/p.gif",
        "raw_path": b"/p.gif",
        "query_string": query,
        "root_path": "",
        "headers": [(b"user-agent", query[:50])],
        "client": ("198.51.100.7", 1),
        "server": ("fuzz", 80),
    }

    async def hit() -> None:
        await ASGI(scope, receive, send)  # type: ignore[arg-type]
        APP.state.vt.require_pixels().drain()

    asyncio.run(hit())
    assert sent[0]["status"] == 200 and sent[1]["body"] == PIXEL_GIF
    # drain() logs and counts a batch that crashed instead of raising: none may have.
    dropped = APP.state.vt.metrics.registry.get_sample_value(
        "viraltrace_ingest_events_total", {"type": "invalid", "outcome": "dropped"}
    )
    assert not dropped

"""The pixel's fast path must do exactly what the generic stages do.

``PixelIngest`` skips pydantic and builds the wire dict directly; these
tests drive it and the generic ``EventStages`` (``reference=True``, the
pixel's path before the fast one) with the same random hits, and require
the same records (bytes), the same dead letters and the same counters.
"""

from __future__ import annotations

import asyncio
import itertools
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app.events
import app.ingest
import app.tokens
from app.bus.memory import MemoryBus
from app.events import PIXEL_PARAMS, InvalidEvent, parse_event
from app.ingest import PixelIngest, event_values, pixel_event
from app.main import create_app
from app.ratelimit import TokenBuckets
from app.state import AppState
from app.tokens import MAX_DEPTH, TokenSigner
from tests.conftest import TEST_TOKEN_KEY, make_settings

FIXED_NS = 1_796_000_000_123_456_789
FIXED_MS = FIXED_NS // 1_000_000
SIGNER = TokenSigner({1: TEST_TOKEN_KEY.encode()}, 1)
ROOT = SIGNER.mint_root("spring")
CHILD = SIGNER.mint_child(ROOT)
OTHER = SIGNER.mint_root("autumn")
TOO_DEEP = SIGNER._encode(ROOT.root, 77, MAX_DEPTH, "spring")
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


# -- field values: the fast checks against pydantic's -----------------------------

values = {
    "type": st.sampled_from(
        ["view", "click", "share", "convert", "preview", "VIEW", "bogus", " view", "view\n"]
    ),
    "campaign": st.sampled_from(
        ["spring", "autumn", "Spring", "a" * 64, "a" * 65, "-x", "spring\n", "x y", "ü"]
    ),
    "token": st.sampled_from(
        [ROOT.raw, CHILD.raw, OTHER.raw, TOO_DEEP.raw, "garbage", "t" * 64, "t" * 65]
    ),
    "channel": st.sampled_from(
        ["email", "EMAIL", "e.mail-x_1", "e mail", ".x", "a" * 32, "a" * 33, "email\n", "İ"]
    ),
    "event_id": st.sampled_from(
        [
            "0f8e3c8a-1b2c-4d3e-8f4a-5b6c7d8e9f00",
            "0F8E3C8A-1B2C-4D3E-8F4A-5B6C7D8E9F00",
            "0f8e3c8a1b2c4d3e8f4a5b6c7d8e9f00",
            "0f8e3c8a-1b2c-4d3e-8f4a-5b6c7d8e9f00\n",
            "nope",
        ]
    ),
    "ts": st.sampled_from(
        [
            str(FIXED_MS),
            str(FIXED_MS - 5_000),
            "0",
            "0012",
            " 12",
            "1_000",
            "12.0",
            "-1",
            "+5",
            "abc",
            "١٢",
            "9" * 25,
            str(FIXED_MS - 400 * 86_400_000),
            str(FIXED_MS + 3_600_000),
        ]
    ),
    "url": st.sampled_from(
        [
            "https://shop.example/page",
            "https://u:p@shop.example/p?q=1#f",
            "http://shop.example",
            "ftp://shop.example/x",
            "https://",
            "not a url",
            "https://shop.example/" + "a" * 2030,
            "https://shop.example/" + "a" * 2027,
        ]
    ),
}
any_text = st.text(max_size=12)
field_dicts = st.fixed_dictionaries(
    {"type": st.one_of(values["type"], any_text)},
    optional={
        name: st.one_of(strategy, any_text) for name, strategy in values.items() if name != "type"
    },
)


def outcome(fields: Mapping[str, str], parse: Any) -> Any:
    try:
        return parse(fields)
    except InvalidEvent as error:
        return error.as_dict()


def by_pydantic(fields: Mapping[str, str]) -> Any:
    return event_values(parse_event(fields))


@given(field_dicts)
@settings(max_examples=1_000)
def test_pixel_event_agrees_with_parse_event(fields: dict[str, str]) -> None:
    assert outcome(fields, pixel_event) == outcome(fields, by_pydantic)


# -- whole batches: fast path vs the generic stages -------------------------------


class Clock:
    """A rate-limit clock that advances on every read, so both runs see the same times."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def build_state(tmp_path: Path, name: str) -> AppState:
    cfg = make_settings(tmp_path / name, tracking={"country_header": "cf-ipcountry"})
    state: AppState = create_app(cfg).state.vt
    # Small buckets, so some hits are refused; the clock makes both runs alike.
    state.ip_buckets = TokenBuckets(50.0, 4.0, 100, clock=Clock())
    state.campaign_buckets = TokenBuckets(80.0, 6.0, 100, clock=Clock())
    return state


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AppState, AppState]]:
    monkeypatch.setattr(app.ingest, "time", types.SimpleNamespace(time_ns=lambda: FIXED_NS))
    yield build_state(tmp_path, "reference"), build_state(tmp_path, "fast")


# Mostly valid events (random field values are mostly refused, so they would
# rarely reach enrichment and serialization), and some of anything.
valid_values = {
    "campaign": st.sampled_from(["spring", "autumn"]),
    "token": st.sampled_from([ROOT.raw, CHILD.raw, OTHER.raw, TOO_DEEP.raw]),
    "channel": st.sampled_from(["email", "EMAIL", "x.y"]),
    "event_id": st.sampled_from(
        ["0f8e3c8a-1b2c-4d3e-8f4a-5b6c7d8e9f00", "0F8E3C8A-1B2C-4D3E-8F4A-5B6C7D8E9F0A"]
    ),
    "ts": st.sampled_from([str(FIXED_MS), str(FIXED_MS - 5_000), f"0{FIXED_MS}"]),
    "url": st.sampled_from(["https://shop.example/page", "https://u:p@shop.example/p?q=1#f"]),
}
likely_valid = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["view", "view", "click", "share", "convert"]),
        "campaign": valid_values["campaign"],
    },
    optional={name: valid_values[name] for name in ("token", "channel", "event_id", "ts", "url")},
)
hit_strategy = st.fixed_dictionaries(
    {
        "fields": st.one_of(likely_valid, likely_valid, field_dicts),
        "extra": st.sampled_from(["", "&x=1", "&cb=123&c=", "&u=&e="]),
        "method": st.sampled_from(["GET", "GET", "HEAD"]),
        "ua": st.sampled_from([CHROME, CHROME, SLACKBOT, GOOGLEBOT, "", "x" * 600]),
        "dnt": st.sampled_from([None, b"1", b"0"]),
        "gpc": st.sampled_from([None, b"1"]),
        "country": st.sampled_from([None, b"de", b"XX", b"T1"]),
        "ip": st.sampled_from(["203.0.113.7", "198.51.100.9", "2001:db8::1", None]),
    }
)
FIELD_PARAMS = {field: param for param, field in PIXEL_PARAMS.items()}


def scope_of(hit: dict[str, Any]) -> dict[str, Any]:
    query = urlencode({FIELD_PARAMS[k]: v for k, v in hit["fields"].items()}) + hit["extra"]
    headers = [(b"host", b"t.example"), (b"user-agent", hit["ua"].encode())]
    for name, value in ((b"dnt", hit["dnt"]), (b"sec-gpc", hit["gpc"])):
        if value is not None:
            headers.append((name, value))
    if hit["country"] is not None:
        headers.append((b"cf-ipcountry", hit["country"]))
    return {
        "type": "http",
        "method": hit["method"],
        "path": "/p.gif",
        "query_string": query.encode(),
        "headers": headers,
        "client": (hit["ip"], 5000) if hit["ip"] else None,
    }


def run(state: AppState, reference: bool, scopes: list[dict[str, Any]]) -> dict[str, Any]:
    """Every scope through one drain; returns what was published and counted."""
    counter = itertools.count(1)

    def event_id() -> str:
        return f"00000000-0000-4000-8000-{next(counter):012x}"

    nodes = itertools.count(1 << 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(app.ingest, "new_event_id", event_id)
        patch.setattr(app.events, "new_event_id", event_id)
        patch.setattr(app.tokens, "_random_node_id", lambda: next(nodes))
        bus = state.bus = MemoryBus(4)
        ingest = state.pixels = PixelIngest(state, reference=reference)

        async def go() -> None:
            for scope in scopes:
                ingest.submit(scope)
            ingest.drain()

        asyncio.run(go())
    published = {
        topic: [
            (record.partition, record.key, record.value)
            for partition in range(4)
            for record in bus.read(topic, partition, 0, 10_000)
        ]
        for topic in (state.topic, state.settings.kafka.dlq_topic)
    }
    counters = {
        tuple(sample.labels.values()): sample.value
        for metric in (state.metrics.ingest_events, state.metrics.dlq_events)
        for sample in metric.collect()[0].samples
        if sample.name.endswith("_total")
    }
    return {"published": published, "counters": counters}


@given(hits=st.lists(hit_strategy, min_size=1, max_size=8))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fast_path_publishes_what_the_generic_stages_publish(
    pair: tuple[AppState, AppState], hits: list[dict[str, Any]]
) -> None:
    reference_state, fast_state = pair
    scopes = [scope_of(hit) for hit in hits]
    expected = run(reference_state, True, scopes)
    actual = run(fast_state, False, scopes)
    assert actual == expected


def test_the_comparison_sees_every_kind_of_outcome(
    pair: tuple[AppState, AppState],
) -> None:
    """The random batches above can only prove equality if both paths produce
    events, previews, shares and refusals; this batch has each kind."""
    reference_state, fast_state = pair
    base = {"ua": CHROME, "dnt": None, "gpc": None, "country": b"de", "ip": "203.0.113.7"}
    hits = [
        {"fields": {"type": "view", "campaign": "spring", "token": ROOT.raw}, "extra": ""},
        {"fields": {"type": "share", "campaign": "spring", "token": CHILD.raw}, "extra": ""},
        {"fields": {"type": "share", "campaign": "spring", "token": TOO_DEEP.raw}, "extra": ""},
        {"fields": {"type": "click", "campaign": "spring", "ts": f"0{FIXED_MS}"}, "extra": "&x=1"},
        {"fields": {"type": "view", "campaign": "Spring"}, "extra": ""},
        {"fields": {"type": "view", "campaign": "spring", "url": "ftp://x/y"}, "extra": ""},
    ]
    scopes = [
        scope_of({**base, "method": "GET", **hit, "ip": f"203.0.113.{i}"})
        for i, hit in enumerate(hits)
    ]
    scopes.append(scope_of({**base, **hits[0], "method": "HEAD", "ip": "198.51.100.9"}))
    expected = run(reference_state, True, scopes)
    assert run(fast_state, False, scopes) == expected
    events = expected["published"][reference_state.topic]
    dead = expected["published"][reference_state.settings.kafka.dlq_topic]
    assert len(events) == 4  # view, share, click (zero-padded ts: pydantic's), preview
    reasons = sorted(value.split(b'"reason":"')[1].split(b'"')[0] for _, _, value in dead)
    assert reasons == [b"bad_campaign", b"bad_token", b"bad_url"]
    assert any(b'"type":"preview"' in value for _, _, value in events)
    assert any(b'"type":"share"' in value and b'"parent":"' in value for _, _, value in events)

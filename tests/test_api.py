"""Tracking endpoints against the in-process bus: every documented answer."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.bus.memory import MemoryBus
from app.events import EventV1
from app.links import LinkConfigError, LinkRegistry
from app.pixel import PIXEL_GIF
from app.tokens import TokenSigner
from tests.apphelpers import dead_letters, events, memory_records, running_app
from tests.conftest import make_settings

SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def links_file(tmp_path: Path, extra: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "links.json"
    spec = {
        "launch": {"campaign": "spring", "destination": "https://shop.example/launch?ref=x#top"}
    }
    path.write_text(json.dumps({**spec, **(extra or {})}))
    return path


@pytest.fixture
def cfg(tmp_path: Path) -> Any:
    return make_settings(
        tmp_path,
        tracking={
            "links_file": links_file(tmp_path),
            "country_header": "cf-ipcountry",
            "cors_origins": ["https://shop.example"],
            "public_base_url": "https://t.example",
        },
    )


def signer_of(app: Any) -> TokenSigner:
    signer: TokenSigner = app.state.vt.signer
    return signer


# -- pixel ---------------------------------------------------------------------


async def test_pixel_answers_the_gif_and_publishes_the_event(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        root = signer_of(app).mint_root("spring")
        eid = str(uuid.uuid4())
        resp = await client.get(
            "/p.gif",
            params={
                "c": "spring",
                "e": "view",
                "t": root.raw,
                "ch": "WhatsApp",
                "eid": eid,
                "u": "https://shop.example/p?email=a@b.c#x",
            },
            headers={"cf-ipcountry": "no"},
        )
        assert resp.status_code == 200
        assert resp.content == PIXEL_GIF and len(resp.content) == 43
        assert resp.headers["content-type"] == "image/gif"
        assert resp.headers["cache-control"] == "no-store, no-cache, must-revalidate, max-age=0"
        assert "set-cookie" not in resp.headers
        [(partition, key, event)] = memory_records(app, "share-events")
        EventV1.model_validate(event)
        assert key == root.root_hex.encode()
        assert event["event_id"] == eid and event["type"] == "view" and event["source"] == "pixel"
        assert event["node"] == root.node_hex and event["channel"] == "whatsapp"
        assert event["url"] == "https://shop.example/p"  # query and fragment stripped
        assert event["country"] == "NO" and len(event["visitor"]) == 16
        assert "203.0.113.9" not in json.dumps(event)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({}, "missing_campaign"),
        ({"c": "Bad Campaign!"}, "bad_campaign"),
        ({"c": "spring", "e": "explode"}, "bad_type"),
        ({"c": "spring", "e": "preview"}, "bad_type"),
        ({"c": "spring", "t": "forged-token"}, "bad_token"),
        ({"c": "spring", "eid": "not-a-uuid"}, "bad_event_id"),
        ({"c": "spring", "ts": "12"}, "bad_ts"),
        ({"c": "spring", "ts": "soon"}, "bad_ts"),
        ({"c": "spring", "ch": "no spaces allowed"}, "bad_channel"),
        ({"c": "spring", "u": "javascript:alert(1)"}, "bad_url"),
        ({"c": "spring", "u": "x" * 3000}, "bad_url"),
        ({"c": "spring", "pad": "x" * 9000}, "oversized"),
    ],
)
async def test_bad_pixel_input_still_gets_the_gif_and_goes_to_the_dlq(
    cfg: Any, params: dict[str, str], reason: str
) -> None:
    async with running_app(cfg) as (app, client):
        resp = await client.get("/p.gif", params=params)
        assert resp.status_code == 200 and resp.content == PIXEL_GIF
        assert events(app) == []
        [dead] = dead_letters(app)
        assert dead["reason"] == reason and dead["source"] == "pixel"
        metrics = (await client.get("/metrics")).text
        assert f'viraltrace_dlq_events_total{{reason="{reason}"}} 1.0' in metrics


async def test_token_of_another_campaign_is_a_bad_token(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        other = signer_of(app).mint_root("autumn")
        await client.get("/p.gif", params={"c": "spring", "t": other.raw})
        [dead] = dead_letters(app)
        assert dead["reason"] == "bad_token" and "wrong_campaign" in dead["message"]


async def test_head_and_link_previews_are_recorded_as_preview(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        head = await client.head("/p.gif", params={"c": "spring", "e": "click"})
        assert head.status_code == 200 and head.content == b""
        await client.get("/p.gif", params={"c": "spring"}, headers={"user-agent": SLACKBOT})
        await client.get("/p.gif", params={"c": "spring"}, headers={"user-agent": GOOGLEBOT})
        first, second, third = events(app)
        assert (first["type"], first["preview_of"]) == ("preview", "click")
        assert (second["type"], second["bot"]) == ("preview", True)
        # A known crawler is flagged, not dropped and not a preview.
        assert (third["type"], third["bot"]) == ("view", True)


async def test_dnt_and_gpc_drop_visitor_and_ip_derived_fields(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        for header in ({"dnt": "1"}, {"sec-gpc": "1"}):
            await client.get(
                "/p.gif", params={"c": "spring"}, headers={**header, "cf-ipcountry": "MY"}
            )
        dnt, gpc = events(app)
        assert dnt["visitor"] is None and dnt["country"] is None and dnt["privacy"] == "dnt"
        assert gpc["visitor"] is None and gpc["country"] is None and gpc["privacy"] == "gpc"
        assert dnt["net"] is None and gpc["net"] is None


async def test_every_source_carries_the_network_bucket(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        await client.get("/p.gif", params={"c": "spring"})
        await client.get("/r/launch")
        await client.post("/v1/events", json=[{"type": "signup", "campaign": "spring"}])
        await client.post("/v1/shares", json={"campaign": "spring"})
        published = events(app)
        sources = sorted(e["source"] for e in published)  # pixel and link do not wait
        assert sources == ["api", "link", "pixel", "shares"]
        # One client address: one bucket, whatever the endpoint, and no address in it.
        expected = app.state.vt.enricher.net_id("203.0.113.9", "spring")
        assert expected is not None and len(expected) == 16
        for event in published:
            EventV1.model_validate(event)
            assert event["net"] == expected, event["source"]
            assert event["net"] != event["visitor"]
            assert "203.0.113" not in json.dumps(event)


async def test_share_with_the_callers_visitor_id_has_no_network_bucket(cfg: Any) -> None:
    # A server minting shares for its users would give them all its own network.
    async with running_app(cfg) as (app, client):
        for visitor in ("crm-42", "crm-43"):
            await client.post("/v1/shares", json={"campaign": "spring", "visitor": visitor})
        first, second = events(app)
        assert first["net"] is None and second["net"] is None
        assert first["visitor"] != second["visitor"]


async def test_pixel_share_mints_a_child_node(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        root = signer_of(app).mint_root("spring")
        await client.get("/p.gif", params={"c": "spring", "e": "share", "t": root.raw})
        [event] = events(app)
        assert event["parent"] == root.node_hex and event["root"] == root.root_hex
        assert event["depth"] == 1 and event["node"] != root.node_hex


async def test_pixel_rate_limit_answers_gif_and_dead_letters(tmp_path: Path) -> None:
    cfg = make_settings(tmp_path, tracking={"rate_ip_per_s": 0.001, "rate_ip_burst": 2})
    async with running_app(cfg) as (app, client):
        for _ in range(4):
            assert (await client.get("/p.gif", params={"c": "spring"})).content == PIXEL_GIF
        assert len(events(app)) == 2
        assert [d["reason"] for d in dead_letters(app)] == ["rate_limited", "rate_limited"]


# -- tracked links -------------------------------------------------------------


async def test_tracked_link_redirects_to_destination_with_the_token(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        link_root = signer_of(app).link_root("spring", "launch")
        resp = await client.get("/r/launch")
        assert resp.status_code == 302
        assert (
            resp.headers["location"] == f"https://shop.example/launch?ref=x&vt={link_root.raw}#top"
        )
        assert "set-cookie" not in resp.headers
        [click] = events(app)
        assert click["type"] == "click" and click["node"] == link_root.node_hex
        assert click["source"] == "link"


async def test_tracked_link_credits_a_valid_share_token(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        child = signer_of(app).mint_child(signer_of(app).link_root("spring", "launch"))
        resp = await client.get("/r/launch", params={"t": child.raw, "ch": "email"})
        assert resp.headers["location"].endswith(f"vt={child.raw}#top")
        [click] = events(app)
        assert (
            click["node"] == child.node_hex and click["depth"] == 1 and click["channel"] == "email"
        )


async def test_tracked_link_with_a_forged_token_falls_back_to_the_link_root(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        resp = await client.get("/r/launch", params={"t": "A" * 40})
        root = signer_of(app).link_root("spring", "launch")
        assert resp.status_code == 302 and f"vt={root.raw}" in resp.headers["location"]
        assert [d["reason"] for d in dead_letters(app)] == ["bad_token"]


@pytest.mark.parametrize(
    "query",
    [
        {"url": "https://evil.example"},
        {"destination": "//evil.example"},
        {"next": "javascript:alert(1)"},
        {"vt": "https://evil.example"},
    ],
)
async def test_redirect_cannot_be_pointed_elsewhere(cfg: Any, query: dict[str, str]) -> None:
    async with running_app(cfg) as (_, client):
        resp = await client.get("/r/launch", params=query)
        assert resp.status_code == 302
        assert resp.headers["location"].startswith("https://shop.example/launch?")
        assert (
            "evil" not in resp.headers["location"] and "javascript" not in resp.headers["location"]
        )


async def test_unknown_slug_is_404(cfg: Any) -> None:
    async with running_app(cfg) as (_, client):
        resp = await client.get("/r/nope")
        assert resp.status_code == 404
        assert resp.json()["error"] == {
            "status": 404,
            "reason": "unknown_link",
            "field": "slug",
            "message": "no tracked link 'nope'",
        }


@pytest.mark.parametrize(
    "spec",
    [
        {"campaign": "spring", "destination": "javascript:alert(1)"},
        {"campaign": "spring", "destination": "//evil.example/x"},
        {"campaign": "spring", "destination": "https://user:pw@shop.example/"},
        {
            "campaign": "spring",
            "destination": "http://10.0.0.1/",
            "allowed_hosts": ["shop.example"],
        },
        {
            "campaign": "spring",
            "destination": "https://evil.example/",
            "allowed_hosts": ["shop.example"],
        },
        {"campaign": "Bad!", "destination": "https://shop.example/"},
    ],
)
def test_links_file_refuses_unsafe_destinations(tmp_path: Path, spec: dict[str, Any]) -> None:
    path = tmp_path / "links.json"
    path.write_text(json.dumps({"x": spec}))
    with pytest.raises(LinkConfigError):
        LinkRegistry.load(path, TokenSigner({1: b"k" * 32}, 1))


# -- shares --------------------------------------------------------------------


async def test_share_without_parent_is_a_new_root_with_a_share_url(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        resp = await client.post("/v1/shares", json={"campaign": "spring", "channel": "email"})
        assert resp.status_code == 201
        body = resp.json()
        assert body["depth"] == 0 and len(body["token"]) <= 40
        assert body["share_url"] == f"https://t.example/r/launch?t={body['token']}"
        [event] = events(app)
        assert (
            event["type"] == "share" and event["parent"] is None and event["root"] == body["root"]
        )


async def test_share_with_parent_is_its_child(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        first = (await client.post("/v1/shares", json={"campaign": "spring"})).json()
        second = (
            await client.post(
                "/v1/shares",
                json={"campaign": "spring", "parent": first["token"], "visitor": "crm-42"},
            )
        ).json()
        assert second["root"] == first["root"] and second["depth"] == 1
        _, child = events(app)
        assert child["parent"] == signer_of(app).verify(first["token"], "spring").node_hex
        assert child["visitor"] is not None and "crm-42" not in json.dumps(child)


async def test_a_share_recorded_later_keeps_its_own_time(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        when = int(time.time() * 1000) - 3_600_000
        resp = await client.post("/v1/shares", json={"campaign": "spring", "ts": when})
        assert resp.status_code == 201
        [event] = events(app)
        assert event["ts"] == when and event["received_at"] > when


@pytest.mark.parametrize(
    ("body", "status", "reason", "field"),
    [
        ({"campaign": "spring", "parent": "A" * 40}, 400, "unknown_key", "parent"),
        (
            {
                "campaign": "spring",
                "parent": TokenSigner({1: b"x" * 32}, 1).mint_root("spring").raw,
            },
            400,
            "bad_signature",
            "parent",
        ),
        ({"campaign": "spring", "parent": "nope"}, 400, "malformed", "parent"),
        ({"campaign": "spring", "ts": 1_000}, 400, "bad_ts", "ts"),
        ({"campaign": "spring", "ts": 2**62}, 400, "bad_ts", "ts"),
        ({"campaign": "spring", "ts": -5}, 422, "invalid", "ts"),
        ({"campaign": "Spring Sale"}, 422, "invalid", "campaign"),
        ({"campaign": "spring", "extra": 1}, 422, "invalid", "extra"),
        ({}, 422, "invalid", "campaign"),
    ],
)
async def test_share_errors(
    cfg: Any, body: dict[str, Any], status: int, reason: str, field: str
) -> None:
    async with running_app(cfg) as (app, client):
        resp = await client.post("/v1/shares", json=body)
        assert resp.status_code == status
        error = resp.json()["error"]
        assert (error["reason"], error["field"]) == (reason, field)
        assert events(app) == []


async def test_share_parent_of_another_campaign_is_refused(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        other = signer_of(app).mint_root("autumn")
        resp = await client.post("/v1/shares", json={"campaign": "spring", "parent": other.raw})
        assert resp.status_code == 400
        assert resp.json()["error"]["reason"] == "wrong_campaign"


# -- batch events --------------------------------------------------------------


def ev(**fields: Any) -> dict[str, Any]:
    return {"type": "view", "campaign": "spring", **fields}


async def test_events_accepts_array_and_object_and_text_plain(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        r1 = await client.post("/v1/events", json=[ev(), ev(type="click")])
        r2 = await client.post("/v1/events", json={"events": [ev(type="convert", value=9.5)]})
        r3 = await client.post(
            "/v1/events",
            content=json.dumps([ev(type="comment", text="ikke bra")]),
            headers={"content-type": "text/plain;charset=UTF-8"},
        )
        for resp, n in ((r1, 2), (r2, 1), (r3, 1)):
            assert resp.status_code == 202 and resp.json() == {"accepted": n, "rejected": []}
        published = events(app)
        assert [e["type"] for e in published] == ["view", "click", "convert", "comment"]
        for event in published:
            EventV1.model_validate(event)


async def test_events_validates_each_event_on_its_own(cfg: Any) -> None:
    now = int(time.time() * 1000)
    async with running_app(cfg) as (app, client):
        resp = await client.post(
            "/v1/events",
            json=[
                ev(ts=now),
                ev(type="nope"),
                "not an object",
                ev(campaign=None),
                ev(t="x"),
                ev(token="A" * 40),
                ev(ts=now + 10 * 86_400_000),
                ev(value=-1),
                ev(),
            ],
        )
        assert resp.status_code == 202
        body = resp.json()
        assert body["accepted"] == 2
        assert [(r["index"], r["reason"], r["field"]) for r in body["rejected"]] == [
            (1, "bad_type", "type"),
            (2, "not_an_object", None),
            (3, "bad_campaign", "campaign"),
            (4, "unknown_field", "t"),
            (5, "bad_token", "token"),
            (6, "bad_ts", "ts"),
            (7, "bad_value", "value"),
        ]
        assert len(dead_letters(app)) == 7 and len(events(app)) == 2
        # Rejected events keep their type when it is a known one; the rest are "invalid".
        assert ingest_counts(app, "rejected") == {"view": 5, "invalid": 2}
        assert ingest_counts(app, "accepted") == {"view": 2}


def ingest_counts(app: Any, outcome: str) -> dict[str, float]:
    """``viraltrace_ingest_events_total`` for one outcome, by type (non-zero only)."""
    registry = app.state.vt.metrics.registry
    return {
        sample.labels["type"]: sample.value
        for family in registry.collect()
        if family.name == "viraltrace_ingest_events"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["outcome"] == outcome and sample.value
    }


async def test_events_schema_valid_batch_still_checks_tokens_and_times(cfg: Any) -> None:
    # Every event passes the one-pass schema check, so the fast path runs; the
    # token and time checks that follow must still refuse by index.
    async with running_app(cfg) as (app, client):
        good = signer_of(app).mint_root("spring").raw
        resp = await client.post(
            "/v1/events", json=[ev(token=good), ev(token="B" * 40), ev(ts=1), ev(type="share")]
        )
        assert resp.status_code == 202
        body = resp.json()
        assert body["accepted"] == 2
        assert [(r["index"], r["reason"]) for r in body["rejected"]] == [
            (1, "bad_token"),
            (2, "bad_ts"),
        ]
        dead = dead_letters(app)
        assert [d["payload"]["token"] for d in dead] == ["B" * 40, None]


@pytest.mark.parametrize(
    ("content", "ctype", "status", "reason"),
    [
        (b"{not json", "application/json", 400, "malformed_json"),
        (b'{"nope": []}', "application/json", 400, "bad_shape"),
        (b'"a string"', "application/json", 400, "bad_shape"),
        (b"[]", "application/xml", 415, "unsupported_media_type"),
        (json.dumps([ev()] * 501).encode(), "application/json", 413, "too_many_events"),
        (b"[" + b" " * 1_100_000 + b"]", "application/json", 413, "too_large"),
    ],
)
async def test_events_request_errors(
    cfg: Any, content: bytes, ctype: str, status: int, reason: str
) -> None:
    async with running_app(cfg) as (app, client):
        resp = await client.post("/v1/events", content=content, headers={"content-type": ctype})
        assert resp.status_code == status
        assert resp.json()["error"]["reason"] == reason
        assert events(app) == []


async def test_events_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    cfg = make_settings(tmp_path, tracking={"rate_campaign_per_s": 1, "rate_campaign_burst": 3})
    async with running_app(cfg) as (app, client):
        assert (await client.post("/v1/events", json=[ev()] * 3)).status_code == 202
        resp = await client.post("/v1/events", json=[ev()] * 2)
        assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
        assert resp.json()["error"]["field"] == "campaign"
        assert len(events(app)) == 3
        assert ingest_counts(app, "rate_limited") == {"view": 2}


async def test_events_503_with_retry_after_when_the_bus_cannot_take_them(cfg: Any) -> None:
    async with running_app(cfg, bus=MemoryBus(4, max_records=2)) as (app, client):
        resp = await client.post("/v1/events", json=[ev()] * 3)
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["reason"] == "unavailable"
        assert ingest_counts(app, "unavailable") == {"view": 3}
        assert ingest_counts(app, "accepted") == {}


async def test_events_of_one_cascade_share_a_key_and_partition(cfg: Any) -> None:
    async with running_app(cfg) as (app, client):
        root = signer_of(app).mint_root("spring")
        tokens = [root]
        for _ in range(20):
            tokens.append(signer_of(app).mint_child(tokens[-1]))
        await client.post("/v1/events", json=[ev(token=t.raw, type="click") for t in tokens])
        records = memory_records(app, "share-events")
        assert len(records) == 21
        assert {(partition, key) for partition, key, _ in records} == {
            (records[0][0], root.root_hex.encode())
        }


# -- CORS, health, metrics -----------------------------------------------------


async def test_cors_preflight_is_allowlisted_and_cached(cfg: Any) -> None:
    async with running_app(cfg) as (_, client):
        headers = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type",
        }
        ok = await client.options(
            "/v1/events", headers={"origin": "https://shop.example", **headers}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        assert ok.headers["access-control-max-age"] == "600"
        bad = await client.options(
            "/v1/events", headers={"origin": "https://evil.example", **headers}
        )
        assert "access-control-allow-origin" not in bad.headers


async def test_health_and_readiness(cfg: Any) -> None:
    async with running_app(cfg) as (_, client):
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_share_from_a_token_at_the_depth_limit_is_refused_not_a_crash(cfg: Any) -> None:
    from app.tokens import MAX_DEPTH

    async with running_app(cfg) as (app, client):
        signer = signer_of(app)
        root = signer.mint_root("spring")
        deepest = signer._encode(root.root, 12345, MAX_DEPTH, "spring")  # noqa: SLF001
        resp = await client.post("/v1/events", json=[ev(type="share", token=deepest.raw), ev()])
        assert resp.status_code == 202
        assert resp.json()["rejected"][0]["reason"] == "bad_token"
        await client.get("/p.gif", params={"c": "spring", "e": "share", "t": deepest.raw})
        await client.get("/p.gif", params={"c": "spring"})
        # The pixel's batch lost nothing but the refused hit.
        assert [e["type"] for e in events(app)] == ["view", "view"]
        assert [d["reason"] for d in dead_letters(app)] == ["bad_token", "bad_token"]


async def test_an_unexpected_error_costs_one_pixel_hit_not_the_batch(
    cfg: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(cfg) as (app, _):
        enricher = app.state.vt.enricher
        real = enricher.from_scope

        def flaky(scope: Any, campaign: str) -> Any:
            if campaign == "boom":
                raise RuntimeError("bug")
            return real(scope, campaign)

        monkeypatch.setattr(enricher, "from_scope", flaky)
        pixels = app.state.vt.require_pixels()
        # Three hits submitted in one loop turn form one batch, as under load.
        for campaign in (b"spring", b"boom", b"spring"):
            pixels.submit(
                {
                    "type": "http",
                    "method": "GET",
                    "path": "/p.gif",
                    "headers": [],
                    "query_string": b"c=" + campaign,
                    "client": ("198.51.100.1", 1),
                }
            )
        assert [e["campaign"] for e in events(app)] == ["spring", "spring"]
        dropped = app.state.vt.metrics.registry.get_sample_value(
            "viraltrace_ingest_events_total", {"type": "invalid", "outcome": "dropped"}
        )
        assert dropped == 1

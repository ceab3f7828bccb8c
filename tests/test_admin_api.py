"""The admin API (``/v1/admin/...``) end to end, on SQLite and on real PostgreSQL.

Each test migrates a fresh control-plane database, bootstraps an unbound admin key
straight through the database, then drives the running app over HTTP.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import migrate
from app.db.keys import create_key
from app.db.session import create_engine, sessionmaker
from tests.apphelpers import running_app
from tests.conftest import make_settings

ADMIN = "/v1/admin"
UNSET: Any = object()


async def bootstrap_admin_key(database_url: str) -> str:
    """An unbound ``admin`` key, written straight to the database."""
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as session:
            key, _ = await create_key(session, ["admin"], [])
            await session.commit()
    finally:
        await engine.dispose()
    return key


@dataclass
class Api:
    """The running app's client, plus the bootstrap admin key used by default."""

    client: httpx.AsyncClient
    key: str

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = UNSET,
        json: Any = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """``key=None`` sends no Authorization header; by default the bootstrap key."""
        key = self.key if key is UNSET else key
        headers = {} if key is None else {"authorization": f"Bearer {key}"}
        return await self.client.request(
            method, ADMIN + path, json=json, params=params, headers=headers
        )

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        resp = await self.call(method, path, **kwargs)
        assert resp.status_code == status, f"{method} {path}: {resp.status_code} {resp.text}"
        return resp.json() if resp.content else None

    async def campaign(self, slug: str, **fields: Any) -> dict[str, Any]:
        body = {"slug": slug, "name": f"Campaign {slug}", **fields}
        result: dict[str, Any] = await self.ok("POST", "/campaigns", 201, json=body)
        return result

    async def link(self, slug: str, campaign: str, **fields: Any) -> dict[str, Any]:
        body = {
            "slug": slug,
            "campaign": campaign,
            "destination": "https://shop.example/",
            **fields,
        }
        result: dict[str, Any] = await self.ok("POST", "/links", 201, json=body)
        return result

    async def webhook(self, campaign: str, **fields: Any) -> dict[str, Any]:
        body = {"campaign": campaign, "url": "https://hooks.example/in", **fields}
        result: dict[str, Any] = await self.ok("POST", "/webhooks", 201, json=body)
        return result

    async def rule(self, campaign: str, **fields: Any) -> dict[str, Any]:
        body = {"campaign": campaign, "kind": "buzz.negative_spike", **fields}
        result: dict[str, Any] = await self.ok("POST", "/alert-rules", 201, json=body)
        return result

    async def new_key(self, scopes: list[str], campaigns: list[str] | None = None) -> str:
        body = {"scopes": scopes, "campaigns": campaigns or []}
        key: str = (await self.ok("POST", "/keys", 201, json=body))["key"]
        return key


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    await migrate.upgrade(database_url)
    key = await bootstrap_admin_key(database_url)
    settings = make_settings(tmp_path, database={"url": database_url})
    async with running_app(settings) as (_, client):
        yield Api(client, key)


def assert_error(
    resp: httpx.Response, status: int, reason: str, field: str | None = UNSET
) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["status"] == status
    assert error["reason"] == reason, error
    if field is not UNSET:
        assert error["field"] == field, error
    assert error["message"]
    return error


def instant(value: str) -> datetime:
    """A response timestamp as an aware datetime (naive is read as UTC; see the tz test)."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ---- CRUD ---------------------------------------------------------------------------------


async def test_campaign_crud(api: Api) -> None:
    created = await api.campaign(
        "spring", allowed_origins=["https://shop.example"], languages=["en", "ms"]
    )
    assert created["slug"] == "spring"
    assert created["name"] == "Campaign spring"
    assert created["allowed_origins"] == ["https://shop.example"]
    assert created["languages"] == ["en", "ms"]
    assert created["retention_days"] == 400
    assert created["require_write_key"] is False
    assert created["active"] is True
    await api.campaign("autumn")

    listed = await api.ok("GET", "/campaigns")
    assert [c["slug"] for c in listed] == ["autumn", "spring"]
    fetched = await api.ok("GET", "/campaigns/spring")
    assert {k: v for k, v in fetched.items() if not k.endswith("_at")} == {
        k: v for k, v in created.items() if not k.endswith("_at")
    }

    patched = await api.ok(
        "PATCH",
        "/campaigns/spring",
        json={"name": "Spring 2", "retention_days": 30, "active": False, "languages": ["ar"]},
    )
    assert patched["name"] == "Spring 2"
    assert patched["retention_days"] == 30
    assert patched["active"] is False
    assert patched["languages"] == ["ar"]
    assert patched["allowed_origins"] == ["https://shop.example"]  # untouched
    assert instant(patched["updated_at"]) >= instant(created["updated_at"])
    assert (await api.ok("GET", "/campaigns/spring"))["name"] == "Spring 2"

    assert await api.ok("DELETE", "/campaigns/spring", 204) is None
    assert_error(await api.call("GET", "/campaigns/spring"), 404, "not_found", "campaign")
    assert_error(await api.call("DELETE", "/campaigns/spring"), 404, "not_found", "campaign")
    assert [c["slug"] for c in await api.ok("GET", "/campaigns")] == ["autumn"]


async def test_link_crud(api: Api) -> None:
    await api.campaign("spring")
    await api.campaign("autumn")
    created = await api.link("spring-go", "spring", destination="https://shop.example/launch?x=1")
    assert created["slug"] == "spring-go"
    assert created["campaign"] == "spring"
    assert created["destination"] == "https://shop.example/launch?x=1"
    assert created["allowed_hosts"] == ["shop.example"]  # the destination's own host
    assert created["url_path"] == "/r/spring-go"
    await api.link("fall-go", "autumn")

    assert [link["slug"] for link in await api.ok("GET", "/links")] == ["fall-go", "spring-go"]
    only = await api.ok("GET", "/links", params={"campaign": "spring"})
    assert [link["slug"] for link in only] == ["spring-go"]
    fetched = await api.ok("GET", "/links/spring-go")
    assert fetched["destination"] == created["destination"]
    assert fetched["url_path"] == "/r/spring-go"

    patched = await api.ok(
        "PATCH",
        "/links/spring-go",
        json={
            "destination": "https://www.shop.example/b",
            "allowed_hosts": ["www.shop.example", "Shop.Example"],
        },
    )
    assert patched["destination"] == "https://www.shop.example/b"
    assert patched["allowed_hosts"] == ["shop.example", "www.shop.example"]  # lowered, sorted
    assert patched["campaign"] == "spring"
    patched = await api.ok(
        "PATCH", "/links/spring-go", json={"allowed_hosts": ["WWW.shop.example"]}
    )
    assert patched["allowed_hosts"] == ["www.shop.example"]
    assert patched["destination"] == "https://www.shop.example/b"
    assert (await api.ok("GET", "/links/spring-go"))["allowed_hosts"] == ["www.shop.example"]

    assert await api.ok("DELETE", "/links/spring-go", 204) is None
    assert_error(await api.call("GET", "/links/spring-go"), 404, "not_found", "slug")
    assert [link["slug"] for link in await api.ok("GET", "/links")] == ["fall-go"]


async def test_key_lifecycle(api: Api) -> None:
    await api.campaign("spring")
    created = await api.ok(
        "POST", "/keys", 201, json={"name": "ci", "scopes": ["read", "write"], "campaigns": []}
    )
    key, prefix = created["key"], created["prefix"]
    assert re.fullmatch(r"vt_[A-Za-z0-9]{8}", prefix)
    assert key.startswith("vt_")
    assert re.fullmatch(re.escape(prefix) + r"_[A-Za-z0-9]{32}", key)
    assert created["name"] == "ci"
    assert created["scopes"] == ["read", "write"]
    assert created["campaigns"] == []
    assert created["revoked_at"] is None
    assert created["last_used_at"] is None

    bound = await api.ok("POST", "/keys", 201, json={"scopes": ["admin"], "campaigns": ["spring"]})
    assert bound["campaigns"] == ["spring"]

    resp = await api.call("GET", "/keys")
    assert resp.status_code == 200
    listed = resp.json()
    assert [k["id"] for k in listed][-2:] == [created["id"], bound["id"]]
    assert all("key" not in k for k in listed)
    assert key not in resp.text and bound["key"] not in resp.text
    assert {k["prefix"] for k in listed} >= {prefix, bound["prefix"]}

    resp = await api.call("GET", f"/keys/{created['id']}")
    assert resp.status_code == 200
    assert "key" not in resp.json() and key not in resp.text
    assert resp.json()["prefix"] == prefix

    # A working key: using it records last_used_at.
    assert (await api.ok("GET", "/campaigns", key=bound["key"]))[0]["slug"] == "spring"
    assert (await api.ok("GET", f"/keys/{bound['id']}"))["last_used_at"] is not None

    revoked = await api.ok("DELETE", f"/keys/{bound['id']}")
    assert revoked["id"] == bound["id"]
    assert revoked["revoked_at"] is not None
    assert "key" not in revoked
    resp = await api.call("GET", "/campaigns", key=bound["key"])
    assert_error(resp, 401, "bad_key", "authorization")
    assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    # Kept for the audit trail; revoking again changes nothing.
    fetched = await api.ok("GET", f"/keys/{bound['id']}")
    assert instant(fetched["revoked_at"]) == instant(revoked["revoked_at"])
    again = await api.ok("DELETE", f"/keys/{bound['id']}")
    assert instant(again["revoked_at"]) == instant(revoked["revoked_at"])
    assert bound["id"] in [k["id"] for k in await api.ok("GET", "/keys")]


async def test_webhook_crud(api: Api) -> None:
    await api.campaign("spring")
    created = await api.webhook("spring", event_types=["alert.fired"])
    secret = created["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert created["campaign"] == "spring"
    assert created["url"] == "https://hooks.example/in"
    assert created["event_types"] == ["alert.fired"]
    assert created["enabled"] is True
    assert created["disabled_reason"] is None
    hook_id = created["id"]

    resp = await api.call("GET", "/webhooks")
    assert resp.status_code == 200
    assert [h["id"] for h in resp.json()] == [hook_id]
    assert "secret" not in resp.json()[0] and secret not in resp.text
    resp = await api.call("GET", f"/webhooks/{hook_id}")
    assert resp.status_code == 200
    assert "secret" not in resp.json() and secret not in resp.text
    assert resp.json()["url"] == "https://hooks.example/in"

    resp = await api.call(
        "PATCH",
        f"/webhooks/{hook_id}",
        json={"url": "https://hooks.example/v2", "enabled": False, "event_types": []},
    )
    assert resp.status_code == 200, resp.text
    patched = resp.json()
    assert "secret" not in patched and secret not in resp.text
    assert patched["url"] == "https://hooks.example/v2"
    assert patched["enabled"] is False
    assert patched["event_types"] == []
    assert (await api.ok("GET", f"/webhooks/{hook_id}"))["enabled"] is False

    assert await api.ok("DELETE", f"/webhooks/{hook_id}", 204) is None
    assert_error(await api.call("GET", f"/webhooks/{hook_id}"), 404, "not_found", "id")
    assert await api.ok("GET", "/webhooks") == []


async def test_alert_rule_crud(api: Api) -> None:
    await api.campaign("spring")
    created = await api.rule(
        "spring", kind="spread.accelerating", thresholds={"open": 5}, window_s=60
    )
    assert created["campaign"] == "spring"
    assert created["kind"] == "spread.accelerating"
    assert created["thresholds"] == {"open": 5.0}
    assert created["window_s"] == 60
    assert created["min_volume"] == 20  # defaults
    assert created["cooldown_s"] == 1800
    assert created["enabled"] is True
    rule_id = created["id"]

    assert [r["id"] for r in await api.ok("GET", "/alert-rules")] == [rule_id]
    assert (await api.ok("GET", f"/alert-rules/{rule_id}"))["window_s"] == 60

    patched = await api.ok(
        "PATCH",
        f"/alert-rules/{rule_id}",
        json={"window_s": 600, "enabled": False, "thresholds": {"open": 8, "resolve": 2}},
    )
    assert patched["window_s"] == 600
    assert patched["enabled"] is False
    assert patched["thresholds"] == {"open": 8.0, "resolve": 2.0}
    assert patched["kind"] == "spread.accelerating"
    assert patched["min_volume"] == 20
    assert (await api.ok("GET", f"/alert-rules/{rule_id}"))["window_s"] == 600

    assert await api.ok("DELETE", f"/alert-rules/{rule_id}", 204) is None
    assert_error(await api.call("GET", f"/alert-rules/{rule_id}"), 404, "not_found", "id")
    assert await api.ok("GET", "/alert-rules") == []


async def test_deleting_a_campaign_deletes_its_links_webhooks_and_rules(api: Api) -> None:
    await api.campaign("spring")
    await api.link("go", "spring")
    hook = await api.webhook("spring")
    rule = await api.rule("spring")
    await api.ok("DELETE", "/campaigns/spring", 204)
    assert_error(await api.call("GET", "/links/go"), 404, "not_found", "slug")
    assert_error(await api.call("GET", f"/webhooks/{hook['id']}"), 404, "not_found", "id")
    assert_error(await api.call("GET", f"/alert-rules/{rule['id']}"), 404, "not_found", "id")
    for path in ("/links", "/webhooks", "/alert-rules"):
        assert await api.ok("GET", path) == []


# ---- authentication and authorization ------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "vt_abc"],
    ids=["absent", "empty", "basic", "bearer-no-key", "bearer-blank", "no-scheme"],
)
async def test_missing_or_malformed_authorization_is_401(
    api: Api, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    resp = await api.client.get(f"{ADMIN}/campaigns", headers=headers)
    assert_error(resp, 401, "unauthorized", "authorization")
    assert resp.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("key", ["vt_AAAAAAAA_" + "B" * 32, "not-a-viraltrace-key"])
async def test_an_unknown_key_is_401(api: Api, key: str) -> None:
    resp = await api.call("GET", "/campaigns", key=key)
    assert_error(resp, 401, "bad_key", "authorization")
    assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("scopes", [["read"], ["write"], ["read", "write"]])
async def test_a_key_without_admin_scope_is_403(api: Api, scopes: list[str]) -> None:
    await api.campaign("spring")
    key = await api.new_key(scopes)
    for method, path, body in [
        ("GET", "/campaigns", None),
        ("GET", "/campaigns/spring", None),
        ("POST", "/campaigns", {"slug": "x", "name": "X"}),
        ("GET", "/keys", None),
        ("POST", "/keys", {"scopes": ["admin"]}),
    ]:
        resp = await api.call(method, path, key=key, json=body)
        assert_error(resp, 403, "forbidden", "authorization")
    assert [c["slug"] for c in await api.ok("GET", "/campaigns")] == ["spring"]


async def test_a_campaign_bound_admin_cannot_touch_another_campaign(api: Api) -> None:
    await api.campaign("a")
    await api.campaign("b")
    await api.link("b-go", "b")
    hook = await api.webhook("b")
    rule = await api.rule("b")
    root_id = (await api.ok("GET", "/keys"))[0]["id"]
    bound = await api.new_key(["admin"], ["a"])

    async def refused(
        method: str, path: str, status: int, reason: str, field: Any, body: Any = None
    ):
        resp = await api.call(method, path, key=bound, json=body)
        assert_error(resp, status, reason, field)

    await refused("GET", "/campaigns/b", 403, "forbidden", "campaign")
    await refused("PATCH", "/campaigns/b", 403, "forbidden", "campaign", {"name": "mine"})
    await refused("DELETE", "/campaigns/b", 403, "forbidden", "campaign")
    await refused("POST", "/campaigns", 403, "forbidden", None, {"slug": "c", "name": "C"})
    link_b = {"slug": "mine", "campaign": "b", "destination": "https://shop.example/"}
    await refused("POST", "/links", 403, "forbidden", "campaign", link_b)
    # Another campaign's link is not revealed to exist (as for webhooks and rules).
    await refused("GET", "/links/b-go", 404, "not_found", "slug")
    await refused("PATCH", "/links/b-go", 404, "not_found", "slug", {"allowed_hosts": ["x"]})
    await refused("DELETE", "/links/b-go", 404, "not_found", "slug")
    for campaigns in (["b"], ["a", "b"], []):
        body = {"scopes": ["admin"], "campaigns": campaigns}
        await refused("POST", "/keys", 403, "forbidden", "campaigns", body)
    hook_b = {"campaign": "b", "url": "https://evil.example/"}
    await refused("POST", "/webhooks", 403, "forbidden", "campaign", hook_b)
    await refused(
        "POST",
        "/alert-rules",
        403,
        "forbidden",
        "campaign",
        {"campaign": "b", "kind": "buzz.negative_spike"},
    )
    # Rows of another campaign, and keys beyond the bound key's reach, do not exist for it.
    for path in (f"/webhooks/{hook['id']}", f"/alert-rules/{rule['id']}"):
        await refused("GET", path, 404, "not_found", "id")
        await refused("PATCH", path, 404, "not_found", "id", {"enabled": False})
        await refused("DELETE", path, 404, "not_found", "id")
    await refused("GET", f"/keys/{root_id}", 404, "not_found", "id")
    await refused("DELETE", f"/keys/{root_id}", 404, "not_found", "id")

    # Nothing in campaign b changed, and the root key still works.
    assert (await api.ok("GET", "/campaigns/b"))["name"] == "Campaign b"
    assert (await api.ok("GET", "/links/b-go"))["allowed_hosts"] == ["shop.example"]
    assert (await api.ok("GET", f"/webhooks/{hook['id']}"))["enabled"] is True
    assert (await api.ok("GET", f"/alert-rules/{rule['id']}"))["enabled"] is True
    assert (await api.ok("GET", f"/keys/{root_id}"))["revoked_at"] is None
    assert [k["campaigns"] for k in await api.ok("GET", "/keys")] == [[], ["a"]]

    # Its own campaign it manages fully.
    await api.ok("PATCH", "/campaigns/a", json={"name": "mine"}, key=bound)
    link_a = {"slug": "a-go", "campaign": "a", "destination": "https://shop.example/"}
    await api.ok("POST", "/links", 201, json=link_a, key=bound)
    await api.ok(
        "POST", "/webhooks", 201, json={"campaign": "a", "url": "https://h.example/"}, key=bound
    )
    await api.ok(
        "POST",
        "/alert-rules",
        201,
        json={"campaign": "a", "kind": "buzz.negative_spike"},
        key=bound,
    )
    made = await api.ok(
        "POST", "/keys", 201, json={"scopes": ["read"], "campaigns": ["a"]}, key=bound
    )
    assert made["campaigns"] == ["a"]


async def test_a_campaign_bound_admin_lists_only_its_campaigns(api: Api) -> None:
    for slug in ("a", "b"):
        await api.campaign(slug)
        await api.link(f"{slug}-go", slug)
        await api.webhook(slug)
        await api.rule(slug)
    bound = await api.ok("POST", "/keys", 201, json={"scopes": ["admin"], "campaigns": ["a"]})
    peer = await api.ok("POST", "/keys", 201, json={"scopes": ["read"], "campaigns": ["a"]})
    await api.new_key(["read"], ["b"])
    await api.new_key(["read"], ["a", "b"])
    await api.new_key(["read"])  # unbound: every campaign
    key = bound["key"]

    assert [c["slug"] for c in await api.ok("GET", "/campaigns", key=key)] == ["a"]
    assert [link["slug"] for link in await api.ok("GET", "/links", key=key)] == ["a-go"]
    assert await api.ok("GET", "/links", key=key, params={"campaign": "b"}) == []
    assert [h["campaign"] for h in await api.ok("GET", "/webhooks", key=key)] == ["a"]
    assert [r["campaign"] for r in await api.ok("GET", "/alert-rules", key=key)] == ["a"]
    keys = await api.ok("GET", "/keys", key=key)
    assert [k["id"] for k in keys] == [bound["id"], peer["id"]]
    assert all(k["campaigns"] == ["a"] for k in keys)

    # The unbound key sees everything.
    assert [c["slug"] for c in await api.ok("GET", "/campaigns")] == ["a", "b"]
    assert len(await api.ok("GET", "/links")) == 2
    assert len(await api.ok("GET", "/webhooks")) == 2
    assert len(await api.ok("GET", "/alert-rules")) == 2
    assert len(await api.ok("GET", "/keys")) == 6


async def test_deleting_its_only_campaign_does_not_unbind_a_key(api: Api) -> None:
    await api.campaign("a")
    await api.campaign("b")
    bound = await api.new_key(["admin"], ["a"])
    assert_error(await api.call("GET", "/campaigns/b", key=bound), 403, "forbidden", "campaign")

    await api.ok("DELETE", "/campaigns/a", 204, key=bound)  # its own campaign: allowed

    assert (await api.call("GET", "/campaigns/b", key=bound)).status_code in (401, 403)
    body = {"slug": "c", "name": "C"}
    assert (await api.call("POST", "/campaigns", key=bound, json=body)).status_code in (401, 403)


# ---- not found, conflicts and bad input ---------------------------------------------------


async def test_unknown_ids_are_404(api: Api) -> None:
    await api.campaign("spring")
    cases = [
        ("GET", "/campaigns/nope", None, "campaign"),
        ("PATCH", "/campaigns/nope", {"name": "x"}, "campaign"),
        ("DELETE", "/campaigns/nope", None, "campaign"),
        (
            "POST",
            "/links",
            {"slug": "go", "campaign": "nope", "destination": "https://a.example/"},
            "campaign",
        ),
        ("GET", "/links/nope", None, "slug"),
        ("PATCH", "/links/nope", {"allowed_hosts": ["a.example"]}, "slug"),
        ("DELETE", "/links/nope", None, "slug"),
        ("GET", "/keys/999999", None, "id"),
        ("DELETE", "/keys/999999", None, "id"),
        ("POST", "/webhooks", {"campaign": "nope", "url": "https://h.example/"}, "campaign"),
        ("GET", "/webhooks/999999", None, "id"),
        ("PATCH", "/webhooks/999999", {"enabled": False}, "id"),
        ("DELETE", "/webhooks/999999", None, "id"),
        ("POST", "/alert-rules", {"campaign": "nope", "kind": "buzz.negative_spike"}, "campaign"),
        ("GET", "/alert-rules/999999", None, "id"),
        ("PATCH", "/alert-rules/999999", {"enabled": False}, "id"),
        ("DELETE", "/alert-rules/999999", None, "id"),
    ]
    for method, path, body, field in cases:
        resp = await api.call(method, path, json=body)
        assert resp.status_code == 404, f"{method} {path}: {resp.text}"
        assert_error(resp, 404, "not_found", field)


async def test_a_key_for_an_unknown_campaign_is_422(api: Api) -> None:
    resp = await api.call("POST", "/keys", json={"scopes": ["read"], "campaigns": ["nope"]})
    assert_error(resp, 422, "bad_key_request", "campaigns")
    assert len(await api.ok("GET", "/keys")) == 1  # nothing was stored


async def test_duplicate_slugs_are_409(api: Api) -> None:
    await api.campaign("spring")
    await api.campaign("autumn")
    resp = await api.call("POST", "/campaigns", json={"slug": "spring", "name": "Again"})
    assert_error(resp, 409, "conflict", "slug")
    assert (await api.ok("GET", "/campaigns/spring"))["name"] == "Campaign spring"

    await api.link("go", "spring")
    for campaign in ("spring", "autumn"):  # link slugs are global, not per campaign
        body = {"slug": "go", "campaign": campaign, "destination": "https://other.example/"}
        assert_error(await api.call("POST", "/links", json=body), 409, "conflict", "slug")
    assert (await api.ok("GET", "/links/go"))["destination"] == "https://shop.example/"
    # The session recovers after the conflict.
    await api.link("go2", "autumn")


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "error_type"),
    [
        (
            "POST",
            "/campaigns",
            {"slug": "Bad Slug", "name": "x"},
            "slug",
            "string_pattern_mismatch",
        ),
        ("POST", "/campaigns", {"slug": "-lead", "name": "x"}, "slug", "string_pattern_mismatch"),
        ("POST", "/campaigns", {"slug": "a" * 65, "name": "x"}, "slug", "string_pattern_mismatch"),
        ("POST", "/campaigns", {"slug": "ok", "name": ""}, "name", "string_too_short"),
        (
            "POST",
            "/campaigns",
            {"slug": "ok", "name": "x", "colour": "red"},
            "colour",
            "extra_forbidden",
        ),
        (
            "POST",
            "/campaigns",
            {"slug": "ok", "name": "x", "retention_days": 0},
            "retention_days",
            "greater_than_equal",
        ),
        (
            "POST",
            "/campaigns",
            {"slug": "ok", "name": "x", "languages": ["EN"]},
            "languages.0",
            "string_pattern_mismatch",
        ),
        (
            "POST",
            "/campaigns",
            {"slug": "ok", "name": "x", "allowed_origins": ["https://a.example/path"]},
            "allowed_origins.0",
            "string_pattern_mismatch",
        ),
        ("PATCH", "/campaigns/spring", {"slug": "renamed"}, "slug", "extra_forbidden"),
        ("GET", "/campaigns/Not_Valid", None, "path.slug", "string_pattern_mismatch"),
        (
            "POST",
            "/links",
            {"slug": "go", "campaign": "spring", "destination": "https://a.example/", "extra": 1},
            "extra",
            "extra_forbidden",
        ),
        (
            "POST",
            "/links",
            {"slug": "-go", "campaign": "spring", "destination": "https://a.example/"},
            "slug",
            "string_pattern_mismatch",
        ),
        ("POST", "/links", {"slug": "go", "campaign": "spring"}, "destination", "missing"),
        ("POST", "/keys", {"scopes": ["superuser"]}, "scopes", "value_error"),
        ("POST", "/keys", {"scopes": ["read", "root"]}, "scopes", "value_error"),
        ("POST", "/keys", {"scopes": []}, "scopes", "too_short"),
        (
            "POST",
            "/keys",
            {"scopes": ["read"], "campaigns": ["Bad!"]},
            "campaigns.0",
            "string_pattern_mismatch",
        ),
        ("POST", "/keys", {"scopes": ["read"], "admin": True}, "admin", "extra_forbidden"),
        ("GET", "/keys/abc", None, "path.key_id", "int_parsing"),
        ("POST", "/webhooks", {"campaign": "spring", "url": "not a url"}, "url", "url_parsing"),
        (
            "POST",
            "/webhooks",
            {"campaign": "spring", "url": "https://h.example/", "event_types": ["Bad Type"]},
            "event_types.0",
            "string_pattern_mismatch",
        ),
        (
            "POST",
            "/webhooks",
            {"campaign": "spring", "url": "https://h.example/", "secret": "mine"},
            "secret",
            "extra_forbidden",
        ),
        ("POST", "/alert-rules", {"campaign": "spring", "kind": "weather"}, "kind", "value_error"),
        (
            "POST",
            "/alert-rules",
            {"campaign": "spring", "kind": "buzz.negative_spike", "window_s": 9},
            "window_s",
            "greater_than_equal",
        ),
        (
            "POST",
            "/alert-rules",
            {"campaign": "spring", "kind": "buzz.negative_spike", "window_s": 0},
            "window_s",
            "greater_than_equal",
        ),
        (
            "POST",
            "/alert-rules",
            {"campaign": "spring", "kind": "buzz.negative_spike", "min_volume": -1},
            "min_volume",
            "greater_than_equal",
        ),
        (
            "POST",
            "/alert-rules",
            {"campaign": "spring", "kind": "buzz.negative_spike", "id": 1},
            "id",
            "extra_forbidden",
        ),
        (
            "POST",
            "/alert-rules",
            {"campaign": "spring", "kind": "buzz.negative_spike", "thresholds": {"z": 3}},
            "thresholds",
            "value_error",
        ),
        (
            "POST",
            "/alert-rules",
            {
                "campaign": "spring",
                "kind": "buzz.negative_spike",
                "thresholds": {"open": 2, "resolve": 3},
            },
            "thresholds",
            "value_error",
        ),
    ],
)
async def test_bad_input_is_422(
    api: Api, method: str, path: str, body: Any, field: str, error_type: str
) -> None:
    await api.campaign("spring")
    resp = await api.call(method, path, json=body)
    error = assert_error(resp, 422, "invalid", field)
    assert error["errors"][0]["type"] == error_type
    assert error["errors"][0]["field"] == field
    # Nothing was written.
    assert [c["slug"] for c in await api.ok("GET", "/campaigns")] == ["spring"]
    assert await api.ok("GET", "/links") == []
    assert len(await api.ok("GET", "/keys")) == 1
    assert await api.ok("GET", "/webhooks") == []
    assert await api.ok("GET", "/alert-rules") == []


async def test_patching_an_alert_rule_below_the_minimum_window_is_422(api: Api) -> None:
    await api.campaign("spring")
    rule = await api.rule("spring", window_s=60)
    for body, field in [({"window_s": 9}, "window_s"), ({"kind": "spread.accelerating"}, "kind")]:
        resp = await api.call("PATCH", f"/alert-rules/{rule['id']}", json=body)
        assert_error(resp, 422, "invalid", field)
    fetched = await api.ok("GET", f"/alert-rules/{rule['id']}")
    assert (fetched["window_s"], fetched["kind"]) == (60, "buzz.negative_spike")


# ---- redirect destination safety --------------------------------------------------------------

UNSAFE_DESTINATIONS = [
    # (destination, allowed_hosts, reason, pydantic error type or None)
    pytest.param("javascript:alert(1)", None, "invalid", "url_scheme", id="javascript"),
    pytest.param("ftp://shop.example/x", None, "invalid", "url_scheme", id="ftp"),
    pytest.param("//evil.example/x", None, "invalid", "url_parsing", id="scheme-relative"),
    pytest.param("/local/path", None, "invalid", "url_parsing", id="relative"),
    pytest.param("http://user:pw@shop.example/", None, "bad_destination", None, id="credentials"),
    pytest.param("http://user@shop.example/", None, "bad_destination", None, id="username"),
    pytest.param("http://10.0.0.1/", ["shop.example"], "bad_destination", None, id="ip-literal"),
    pytest.param("http://[::1]/", ["shop.example"], "bad_destination", None, id="ipv6-literal"),
    pytest.param("https://evil.example/", ["shop.example"], "bad_destination", None, id="host"),
    pytest.param(
        "https://shop.example.evil.example/",
        ["shop.example"],
        "bad_destination",
        None,
        id="suffixed-host",
    ),
]


def assert_refused_destination(resp: httpx.Response, reason: str, error_type: str | None) -> None:
    error = assert_error(resp, 422, reason, "destination")
    if error_type is None:
        assert "errors" not in error
    else:
        assert error["errors"][0]["type"] == error_type


@pytest.mark.parametrize(("destination", "hosts", "reason", "error_type"), UNSAFE_DESTINATIONS)
async def test_an_unsafe_destination_is_refused_on_create(
    api: Api, destination: str, hosts: list[str] | None, reason: str, error_type: str | None
) -> None:
    await api.campaign("spring")
    body: dict[str, Any] = {"slug": "go", "campaign": "spring", "destination": destination}
    if hosts is not None:
        body["allowed_hosts"] = hosts
    assert_refused_destination(await api.call("POST", "/links", json=body), reason, error_type)
    assert_error(await api.call("GET", "/links/go"), 404, "not_found", "slug")


@pytest.mark.parametrize(("destination", "hosts", "reason", "error_type"), UNSAFE_DESTINATIONS)
async def test_an_unsafe_destination_is_refused_on_patch(
    api: Api, destination: str, hosts: list[str] | None, reason: str, error_type: str | None
) -> None:
    await api.campaign("spring")
    original = await api.link("go", "spring", destination="https://shop.example/a")
    body: dict[str, Any] = {"destination": destination}
    if hosts is not None:
        body["allowed_hosts"] = hosts
    assert_refused_destination(await api.call("PATCH", "/links/go", json=body), reason, error_type)
    fetched = await api.ok("GET", "/links/go")
    assert fetched["destination"] == original["destination"]
    assert fetched["allowed_hosts"] == ["shop.example"]


async def test_a_patch_cannot_move_a_link_outside_its_allowed_hosts(api: Api) -> None:
    await api.campaign("spring")
    await api.link("go", "spring", destination="https://shop.example/a")
    # A new destination is checked against the hosts the link already allows...
    resp = await api.call("PATCH", "/links/go", json={"destination": "https://evil.example/"})
    assert_refused_destination(resp, "bad_destination", None)
    # ...and new allowed hosts against the destination the link already has.
    resp = await api.call("PATCH", "/links/go", json={"allowed_hosts": ["other.example"]})
    assert_refused_destination(resp, "bad_destination", None)
    fetched = await api.ok("GET", "/links/go")
    assert (fetched["destination"], fetched["allowed_hosts"]) == (
        "https://shop.example/a",
        ["shop.example"],
    )


async def test_a_listed_ip_literal_is_accepted(api: Api) -> None:
    await api.campaign("spring")
    created = await api.link(
        "go", "spring", destination="http://10.0.0.1:8080/x", allowed_hosts=["10.0.0.1"]
    )
    assert created["destination"] == "http://10.0.0.1:8080/x"
    assert created["allowed_hosts"] == ["10.0.0.1"]
    patched = await api.ok(
        "PATCH",
        "/links/go",
        json={"destination": "http://192.0.2.7/", "allowed_hosts": ["192.0.2.7", "10.0.0.1"]},
    )
    assert patched["destination"] == "http://192.0.2.7/"
    assert patched["allowed_hosts"] == ["10.0.0.1", "192.0.2.7"]


# ---- timestamps -------------------------------------------------------------------------------


async def test_timestamps_read_back_are_timezone_aware(
    api: Api, database_url: str, request: pytest.FixtureRequest
) -> None:
    created = await api.campaign("spring")
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    fetched = await api.ok("GET", "/campaigns/spring")
    for name in ("created_at", "updated_at"):
        value = datetime.fromisoformat(fetched[name])
        assert value.tzinfo is not None, f"{name}={fetched[name]!r}"
        assert value == datetime.fromisoformat(created[name])


async def test_an_ip_literal_destination_must_be_listed_explicitly(api: Api) -> None:
    await api.campaign("spring")
    body = {"slug": "ip", "campaign": "spring", "destination": "http://10.0.0.1/x"}
    assert_error(await api.call("POST", "/links", json=body), 422, "bad_destination", "destination")
    listed = await api.ok("POST", "/links", 201, json={**body, "allowed_hosts": ["10.0.0.1"]})
    assert listed["allowed_hosts"] == ["10.0.0.1"]


async def test_keys_say_whether_they_cover_every_campaign(api: Api) -> None:
    await api.campaign("spring")
    unbound = await api.ok("POST", "/keys", 201, json={"scopes": ["read"]})
    bound = await api.ok("POST", "/keys", 201, json={"scopes": ["read"], "campaigns": ["spring"]})
    assert (unbound["all_campaigns"], bound["all_campaigns"]) == (True, False)

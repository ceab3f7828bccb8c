"""The control-plane CLI on SQLite and real PostgreSQL, and links it makes redirecting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.db import migrate
from tests.apphelpers import running_app
from tests.conftest import make_settings


@pytest.fixture
def run(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """``run(*args)`` invokes ``viraltrace *args`` on the test database; returns the result."""
    asyncio.run(migrate.upgrade(database_url))
    monkeypatch.setenv("VIRALTRACE_DATABASE_URL", database_url)
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no wrapped cells
    runner = CliRunner()

    def invoke(*args: str) -> object:
        return runner.invoke(cli, list(args))

    return invoke


def ok(result: object) -> str:
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def test_cli_creates_lists_and_refuses(run: object) -> None:
    invoke = run  # type: ignore[assignment]
    assert "campaign spring created" in ok(
        invoke("campaigns", "create", "spring", "--name", "Spring")
    )
    duplicate = invoke("campaigns", "create", "spring")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    assert "spring" in ok(invoke("campaigns", "list"))

    key = ok(invoke("keys", "create", "--scope", "admin")).strip()
    assert key.startswith("vt_") and len(key) > 40
    scoped = ok(invoke("keys", "create", "--scope", "read", "--campaign", "spring")).strip()
    listing = ok(invoke("keys", "list"))
    assert key not in listing and scoped not in listing  # only prefixes are shown
    assert key[:11] in listing
    unknown = invoke("keys", "create", "--scope", "read", "--campaign", "nope")
    assert unknown.exit_code == 1 and "unknown campaigns: nope" in unknown.output
    bad_scope = invoke("keys", "create", "--scope", "root")
    assert bad_scope.exit_code == 1 and "scopes must be among" in bad_scope.output
    assert "revoked" in ok(invoke("keys", "revoke", key[:11]))

    secret = ok(
        invoke("webhooks", "add", "--url", "https://hooks.example/in", "--campaign", "spring")
    ).strip()
    assert secret.startswith("whsec_")
    hooks = ok(invoke("webhooks", "list"))
    assert "https://hooks.example/in" in hooks and secret not in hooks

    for destination in ("javascript:alert(1)", "//evil.example/x", "http://u:p@shop.example/"):
        refused = invoke(
            "links", "create", "--campaign", "spring", "--slug", "x", "--destination", destination
        )
        assert refused.exit_code == 1 and "refused" in refused.output, destination
    no_campaign = invoke(
        "links",
        "create",
        "--campaign",
        "autumn",
        "--slug",
        "x",
        "--destination",
        "https://a.example/",
    )
    assert no_campaign.exit_code == 1 and "no campaign 'autumn'" in no_campaign.output


async def test_links_made_by_the_cli_redirect_and_edits_show_within_the_ttl(
    run: object, database_url: str, tmp_path: Path
) -> None:
    invoke = run  # type: ignore[assignment]
    await asyncio.to_thread(lambda: ok(invoke("campaigns", "create", "spring")))
    await asyncio.to_thread(
        lambda: ok(
            invoke(
                "links",
                "create",
                "--campaign",
                "spring",
                "--slug",
                "launch",
                "--destination",
                "https://shop.example/launch?ref=a",
            )
        )
    )
    settings = make_settings(
        tmp_path, database={"url": database_url}, tracking={"links_cache_ttl_s": 0.2}
    )
    async with running_app(settings) as (app, client):
        got = await client.get("/r/launch")
        assert got.status_code == 302
        location = urlsplit(got.headers["location"])
        assert (location.scheme, location.netloc, location.path) == (
            "https",
            "shop.example",
            "/launch",
        )
        query = parse_qs(location.query)
        assert query["ref"] == ["a"]
        token = app.state.vt.signer.verify(query["vt"][0], "spring")
        assert token.depth == 0  # the link's root share
        # Edit the destination behind the app's back, as the admin API would.
        from sqlalchemy import update

        from app.db.models import TrackedLink

        async with app.state.vt.require_db()() as session:
            await session.execute(
                update(TrackedLink)
                .where(TrackedLink.slug == "launch")
                .values(destination="https://shop.example/v2")
            )
            await session.commit()
        async with asyncio.timeout(5):
            while urlsplit((await client.get("/r/launch")).headers["location"]).path != "/v2":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert (await client.get("/r/unknown")).status_code == 404


async def test_write_keys_and_campaign_origins_at_the_ingestion_edge(
    run: object, database_url: str, tmp_path: Path
) -> None:
    invoke = run  # type: ignore[assignment]

    def cli(*args: str) -> str:
        return ok(invoke(*args)).strip()

    await asyncio.to_thread(cli, "campaigns", "create", "open", "--origin", "https://blog.example")
    await asyncio.to_thread(cli, "campaigns", "create", "locked")
    writer = await asyncio.to_thread(
        cli, "keys", "create", "--scope", "write", "--campaign", "locked"
    )
    other = await asyncio.to_thread(cli, "keys", "create", "--scope", "write", "--campaign", "open")
    reader = await asyncio.to_thread(cli, "keys", "create", "--scope", "read")
    settings = make_settings(
        tmp_path, database={"url": database_url}, tracking={"links_cache_ttl_s": 0.2}
    )
    async with running_app(settings) as (app, client):
        from sqlalchemy import update

        from app.db.models import Campaign

        async with app.state.vt.require_db()() as session:
            await session.execute(
                update(Campaign).where(Campaign.slug == "locked").values(require_write_key=True)
            )
            await session.commit()
        refresher_sees = False
        async with asyncio.timeout(5):
            while not refresher_sees:
                await asyncio.sleep(0.05)
                policy = app.state.vt.campaign_policies.get("locked")
                refresher_sees = policy is not None and policy.require_write_key

        batch = [{"type": "view", "campaign": "locked"}, {"type": "view", "campaign": "open"}]

        async def send(key: str | None) -> dict[str, object]:
            headers = {} if key is None else {"authorization": f"Bearer {key}"}
            got = await client.post("/v1/events", json=batch, headers=headers)
            assert got.status_code == 202, got.text
            body: dict[str, object] = got.json()
            return body

        for key in (None, other, reader, "vt_forged_" + "x" * 32):
            body = await send(key)
            assert body["accepted"] == 1  # the open campaign's event only
            assert body["rejected"] == [
                {
                    "index": 0,
                    "reason": "unauthorized",
                    "field": "authorization",
                    "message": "campaign 'locked' needs a write key for it",
                }
            ], key
        assert (await send(writer))["accepted"] == 2

        # A revoked key stops working within one refresh.
        await asyncio.to_thread(cli, "keys", "revoke", writer[:11])
        async with asyncio.timeout(5):
            while (await send(writer))["accepted"] != 1:  # noqa: ASYNC110 - polls the app
                await asyncio.sleep(0.05)

        # CORS: the campaign's origin is allowed, another is not.
        preflight = {"access-control-request-method": "POST"}
        allowed = await client.options(
            "/v1/events", headers={"origin": "https://blog.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://blog.example"
        refused = await client.options(
            "/v1/events", headers={"origin": "https://evil.example", **preflight}
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers

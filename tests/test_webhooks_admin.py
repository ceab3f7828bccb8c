"""Webhook administration on SQLite and real PostgreSQL: the SSRF check on saved URLs,
secret rotation, the delivery log and redelivery, over the admin API and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.db import migrate
from app.db.session import create_engine, sessionmaker
from app.webhooks.outbox import enqueue
from app.webhooks.ssrf import UnresolvableHost
from tests.apphelpers import running_app
from tests.conftest import make_settings
from tests.test_admin_api import Api, assert_error, bootstrap_admin_key

ANSWERS = {
    "intranet.example": ["10.20.30.40"],
    "sneaky.example": ["93.184.215.14", "172.16.0.9"],
    "public.example": ["93.184.215.14"],
    "rebind.example": ["93.184.215.14"],
}


async def fake_dns(host: str, port: int) -> list[str]:
    if host not in ANSWERS:
        raise UnresolvableHost(f"host {host} does not resolve")
    return ANSWERS[host]


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """The admin API with 127.0.0.1 allowlisted for webhooks and a fake DNS."""
    await migrate.upgrade(database_url)
    key = await bootstrap_admin_key(database_url)
    settings = make_settings(
        tmp_path,
        database={"url": database_url},
        webhooks={"allowed_hosts": ["127.0.0.1"], "rotation_grace_s": 3600},
    )
    async with running_app(settings) as (app, client):
        app.state.vt.webhook_resolver = fake_dns
        yield Api(client, key)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.2/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://172.16.0.1/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]/hook", "loopback"),
        ("http://[fd00::1]/hook", "unique local"),
        ("http://[::ffff:127.0.0.2]/hook", "loopback"),
        ("http://[::ffff:192.168.0.1]/hook", "private"),
        ("http://localhost:8000/hook", "local machine"),
        ("http://metadata.google.internal/", "metadata"),
        ("https://intranet.example/hook", "resolves to 10.20.30.40, a private"),
        ("https://sneaky.example/hook", "resolves to 172.16.0.9, a private"),
        ("https://user:secret@public.example/hook", "user name or password"),
    ],
)
async def test_unsafe_webhook_urls_are_422_on_create_and_update(
    api: Api, url: str, why: str
) -> None:
    await api.campaign("spring")
    resp = await api.call("POST", "/webhooks", json={"campaign": "spring", "url": url})
    error = assert_error(resp, 422, "unsafe_url", "url")
    assert why in error["message"]
    assert await api.ok("GET", "/webhooks") == []

    hook = await api.webhook("spring", url="https://public.example/hook")
    resp = await api.call("PATCH", f"/webhooks/{hook['id']}", json={"url": url})
    assert why in assert_error(resp, 422, "unsafe_url", "url")["message"]
    assert (await api.ok("GET", f"/webhooks/{hook['id']}"))["url"] == "https://public.example/hook"


async def test_without_the_allowlist_loopback_is_refused_in_every_spelling(
    database_url: str, tmp_path: Path
) -> None:
    await migrate.upgrade(database_url)
    api = Api(client=None, key=await bootstrap_admin_key(database_url))  # type: ignore[arg-type]
    settings = make_settings(tmp_path, database={"url": database_url})
    async with running_app(settings) as (_, client):
        api.client = client
        await api.campaign("spring")
        for url in (
            "http://127.0.0.1:9000/hook",
            "http://[::ffff:127.0.0.1]:9000/hook",
            "http://[::1]:9000/hook",
            "http://2130706433:9000/hook",  # 127.0.0.1 as one number
        ):
            resp = await api.call("POST", "/webhooks", json={"campaign": "spring", "url": url})
            assert "loopback" in assert_error(resp, 422, "unsafe_url", "url")["message"], url


async def test_allowlisted_and_public_urls_are_accepted(api: Api) -> None:
    await api.campaign("spring")
    for url in (
        "http://127.0.0.1:9000/hook",  # allowlisted
        "http://[::ffff:7f00:1]:9000/hook",  # the same address (as pydantic writes it)
        "https://public.example/hook",
        "https://rebind.example/hook",  # public now; vetted again at every delivery
        "https://not-yet-in-dns.example/hook",  # no address yet: checked at delivery
    ):
        assert (await api.webhook("spring", url=url))["url"] == url


async def test_rotate_secret_shows_the_new_secret_once_and_keeps_the_old_in_grace(
    api: Api,
) -> None:
    await api.campaign("spring")
    hook = await api.webhook("spring")
    assert hook["previous_secret_expires_at"] is None
    before = datetime.now(UTC)
    rotated = await api.ok("POST", f"/webhooks/{hook['id']}/rotate-secret")
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(seconds=3600) <= until <= datetime.now(UTC) + timedelta(hours=1)
    resp = await api.call("GET", f"/webhooks/{hook['id']}")
    assert rotated["secret"] not in resp.text and "secret" not in resp.json()
    assert resp.json()["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]

    await api.campaign("autumn")
    other = await api.new_key(["admin"], ["autumn"])
    resp = await api.call("POST", f"/webhooks/{hook['id']}/rotate-secret", key=other)
    assert_error(resp, 404, "not_found", "id")
    assert_error(await api.call("POST", "/webhooks/99999/rotate-secret"), 404, "not_found", "id")


async def _enqueue(database_url: str, count: int, event_type: str = "spread.viral") -> None:
    engine = create_engine(database_url)
    try:
        async with sessionmaker(engine)() as session:
            for n in range(count):
                await enqueue(
                    session,
                    campaign="spring",
                    event_type=event_type,
                    event_id=f"evt-{n}",
                    data={"n": n},
                    timestamp=datetime(2026, 11, 23, tzinfo=UTC),
                )
            await session.commit()
    finally:
        await engine.dispose()


async def test_deliveries_are_listed_newest_first_in_pages(api: Api, database_url: str) -> None:
    await api.campaign("spring")
    hook = await api.webhook("spring")
    await _enqueue(database_url, 5)
    first = await api.ok("GET", f"/webhooks/{hook['id']}/deliveries", params={"limit": "2"})
    ids = [d["id"] for d in first["items"]]
    assert len(ids) == 2 and ids == sorted(ids, reverse=True)
    assert first["next_before"] == ids[-1]
    item = first["items"][0]
    assert item["state"] == "pending" and item["attempts"] == 0
    assert item["event_type"] == "spread.viral" and item["message_id"].startswith("msg_")
    assert item["next_attempt_at"] is not None and item["last_status"] is None
    seen = ids
    cursor = first["next_before"]
    while cursor is not None:
        page = await api.ok(
            "GET",
            f"/webhooks/{hook['id']}/deliveries",
            params={"limit": "2", "before": str(cursor)},
        )
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_before"]
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    failed = await api.ok("GET", f"/webhooks/{hook['id']}/deliveries", params={"state": "failed"})
    assert failed == {"items": [], "next_before": None}

    detail = await api.ok("GET", f"/webhook-deliveries/{seen[0]}")
    assert detail["payload"] == {
        "type": "spread.viral",
        "timestamp": "2026-11-23T00:00:00.000000Z",
        "data": {"n": 4},
    }
    assert detail["attempt_log"] == []
    resp = await api.call("POST", f"/webhook-deliveries/{seen[0]}/redeliver")
    assert_error(resp, 409, "not_redeliverable", "state")


async def test_deliveries_of_another_campaign_do_not_exist_for_a_bound_key(
    api: Api, database_url: str
) -> None:
    await api.campaign("spring")
    await api.campaign("autumn")
    hook = await api.webhook("spring")
    await _enqueue(database_url, 1)
    [delivery] = (await api.ok("GET", f"/webhooks/{hook['id']}/deliveries"))["items"]
    other = await api.new_key(["admin"], ["autumn"])
    for method, path in [
        ("GET", f"/webhooks/{hook['id']}/deliveries"),
        ("GET", f"/webhook-deliveries/{delivery['id']}"),
        ("POST", f"/webhook-deliveries/{delivery['id']}/redeliver"),
    ]:
        assert_error(await api.call(method, path, key=other), 404, "not_found", "id")
    assert_error(await api.call("GET", "/webhook-deliveries/99999"), 404, "not_found", "id")
    resp = await api.call("GET", f"/webhooks/{hook['id']}/deliveries", params={"limit": "0"})
    assert_error(resp, 422, "invalid", "query.limit")


# ---- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    asyncio.run(migrate.upgrade(database_url))
    monkeypatch.setenv("VIRALTRACE_DATABASE_URL", database_url)
    monkeypatch.setenv("VIRALTRACE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VIRALTRACE_WEBHOOK_ROTATION_GRACE_S", "600")
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args))


def test_cli_rotates_lists_deliveries_redelivers_and_refuses_unsafe_urls(
    run: Any, database_url: str
) -> None:
    assert run("campaigns", "create", "spring").exit_code == 0
    refused = run("webhooks", "add", "--url", "http://localhost:9/x", "--campaign", "spring")
    assert refused.exit_code == 1 and "refused: host localhost is the local machine" in (
        refused.output
    )
    added = run("webhooks", "add", "--url", "https://hooks.example/in", "--campaign", "spring")
    assert added.exit_code == 0, added.output
    old = added.stdout.strip()

    rotated = run("webhooks", "rotate-secret", "1")
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip()
    assert new.startswith("whsec_") and new != old
    assert "also signs until" in rotated.output
    assert run("webhooks", "rotate-secret", "42").exit_code == 1

    asyncio.run(_enqueue(database_url, 2))
    listing = run("webhooks", "deliveries", "1")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.count("pending") == 2 and "spread.viral" in listing.stdout
    pending = run("webhooks", "redeliver", "1")
    assert pending.exit_code == 1 and "still pending" in pending.output
    assert run("webhooks", "redeliver", "99").exit_code == 1
    assert run("webhooks", "deliveries", "7").exit_code == 1

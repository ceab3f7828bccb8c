"""Webhook delivery end to end: the outbox on SQLite and real PostgreSQL, the notifier
loop in-process, and a real HTTP receiver on 127.0.0.1 that verifies every request
with the ``standardwebhooks`` library. Schedules are compressed to fractions of a
second, or a controllable clock moves time, so no test waits for real minutes."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.keys import new_webhook_secret
from app.db.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.settings import WebhookSettings
from app.webhooks.client import VettingBackend, new_client, send_attempt
from app.webhooks.outbox import (
    Claimed,
    PayloadTooLarge,
    claim_due,
    enqueue,
    message_id,
)
from app.webhooks.ssrf import Allowlist, Guard, UnresolvableHost
from consumers.notifier.runner import run_notifier
from tests.apphelpers import running_app
from tests.test_admin_api import ADMIN, bootstrap_admin_key
from tests.test_webhooks_units import RecordingBackend
from tests.webhookhelpers import (
    Answer,
    FakeClock,
    add_endpoint,
    attempt_log,
    deliveries,
    listening,
    notifier,
    outbox_db,
    receiving,
    run_until_settled,
    settled,
    states,
    until,
    webhook_settings,
)

EVENT_AT = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


async def send(
    sessions: Sessions,
    event_id: str,
    event_type: str = "spread.viral",
    campaign: str = "spring",
    now: datetime | None = None,
    **data: Any,
) -> int:
    async with sessions() as session:
        added = await enqueue(
            session,
            campaign=campaign,
            event_type=event_type,
            event_id=event_id,
            data={"state": "open", **data},
            timestamp=EVENT_AT,
            now=now,
        )
        await session.commit()
        return added


# ---- the receiver and signatures ---------------------------------------------------


async def test_a_delivery_verifies_and_unsigned_or_tampered_bodies_do_not(
    database_url: str, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, database_url)
    async with outbox_db(database_url) as sessions, receiving() as receiver:
        await listening(sessions, receiver)
        assert await send(sessions, "evt-1", k_factor=1.4) == 1
        [delivery] = await run_until_settled(settings, sessions, 1)
        assert delivery.state == "delivered"
        [receipt] = receiver.for_id(delivery.message_id)
        assert receipt.verified and receipt.status == 200
        assert receipt.headers["content-type"] == "application/json"
        assert receipt.headers["user-agent"].startswith("viraltrace-webhooks/")
        assert json.loads(receipt.body) == {
            "type": "spread.viral",
            "timestamp": "2026-11-23T12:00:00.000000Z",
            "data": {"state": "open", "k_factor": 1.4},
        }

        # The same receiver refuses what was not signed with the endpoint's secret.
        async with httpx.AsyncClient() as client:
            unsigned = {k: v for k, v in receipt.headers.items() if not k.startswith("webhook-s")}
            await client.post(receiver.url(), content=receipt.body, headers=unsigned)
            tampered = receipt.body.replace(b"1.4", b"9.9")
            signed = {k: receipt.headers[k] for k in receipt.headers if k.startswith("webhook-")}
            await client.post(receiver.url(), content=tampered, headers=signed)
        first, unsigned_receipt, tampered_receipt = receiver.snapshot()
        assert first.verified
        assert not unsigned_receipt.verified and not tampered_receipt.verified


async def test_500s_then_200_delivers_exactly_once_with_the_attempt_log(
    database_url: str, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, database_url)

    def plan(path: str, webhook_id: str, before: int) -> Answer:
        return Answer(500, body=b"receiver is down") if before < 3 else Answer(200)

    async with outbox_db(database_url) as sessions, receiving(plan) as receiver:
        endpoint = await listening(sessions, receiver)
        await send(sessions, "evt-1")
        [delivery] = await run_until_settled(settings, sessions, 1)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 4, 200)
        assert delivery.delivered_at is not None
        receipts = receiver.for_id(delivery.message_id)
        assert [r.status for r in receipts] == [500, 500, 500, 200]
        assert all(r.verified for r in receipts)
        assert len({r.headers["webhook-id"] for r in receipts}) == 1
        assert list(receiver.processed) == [delivery.message_id]
        assert not receiver.duplicates

        log = await attempt_log(sessions, delivery.id)
        assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 500), (3, 500), (4, 200)]
        assert all(a.endpoint_id == endpoint.id for a in log)
        assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in log)
        assert log[0].error == "receiver answered 500"
        assert log[0].response_excerpt == "receiver is down"
        assert log[-1].error is None and log[-1].response_excerpt == "ok"
        assert [a.started_at for a in log] == sorted(a.started_at for a in log)


async def test_retry_after_is_honoured_in_both_forms(database_url: str, tmp_path: Path) -> None:
    clock = FakeClock()
    settings = webhook_settings(tmp_path, database_url, retry_schedule_s=[0, 5, 5, 5])

    def plan(path: str, webhook_id: str, before: int) -> Answer:
        if before == 0:
            return Answer(503, {"retry-after": "60"})
        if before == 1:
            later = clock() + timedelta(seconds=90)
            return Answer(429, {"retry-after": format_datetime(later, usegmt=True)})
        return Answer(204, body=b"")

    async with outbox_db(database_url) as sessions, receiving(plan) as receiver:
        await listening(sessions, receiver)
        await send(sessions, "evt-1", now=clock())

        async def recorded(status: int) -> WebhookDelivery | None:
            [delivery] = await deliveries(sessions)
            return delivery if delivery.last_status == status else None

        async with notifier(settings, sessions, clock=clock):
            delivery = await until(lambda: recorded(503), what="the 503")
            assert delivery.next_attempt_at == clock() + timedelta(seconds=60)  # not 5 s
            clock.advance(59)
            await asyncio.sleep(0.3)
            assert len(receiver.snapshot()) == 1  # not before the Retry-After
            clock.advance(1)
            delivery = await until(lambda: recorded(429), what="the 429")
            assert delivery.next_attempt_at == clock() + timedelta(seconds=90)
            clock.advance(90)
            delivery = await until(lambda: recorded(204), what="the 204")
        assert delivery.state == "delivered"
        assert [r.status for r in receiver.snapshot()] == [503, 429, 204]
        assert all(r.verified for r in receiver.snapshot())


async def test_410_disables_the_endpoint_and_holds_its_deliveries_until_it_is_enabled(
    database_url: str, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, database_url, concurrency=1)
    gone = {"/gone": True}

    def plan(path: str, webhook_id: str, before: int) -> Answer:
        return Answer(410) if gone.get(path) else Answer(200)

    async with outbox_db(database_url) as sessions, receiving(plan) as receiver:
        leaving = await listening(sessions, receiver, "/gone")
        staying = await listening(sessions, receiver, "/ok")
        assert await send(sessions, "evt-1") == 2
        assert await send(sessions, "evt-2") == 2

        async def ok_delivered() -> bool:
            rows = await deliveries(sessions)
            return all(d.state == "delivered" for d in rows if d.endpoint_id == staying.id)

        async with notifier(settings, sessions):
            await until(ok_delivered, what="the other endpoint's deliveries")
            await asyncio.sleep(0.3)  # a dozen polls: the held deliveries stay untouched
        async with sessions() as session:
            endpoint = await session.get(WebhookEndpoint, leaving.id)
            assert endpoint is not None and endpoint.enabled is False
            assert endpoint.disabled_reason is not None
            assert endpoint.disabled_reason.startswith("receiver answered 410 Gone at ")
        held = [d for d in await deliveries(sessions) if d.endpoint_id == leaving.id]
        assert [d.state for d in held] == ["pending", "pending"]
        assert [r.status for r in receiver.snapshot() if r.path == "/gone"] == [410]
        # A new event for the disabled endpoint is not even enqueued.
        assert await send(sessions, "evt-3") == 1

        # The receiver is back and an admin enables the endpoint: the held ones resume.
        gone["/gone"] = False
        async with sessions() as session:
            await session.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == leaving.id)
                .values(enabled=True, disabled_reason=None)
            )
            await session.commit()
        await run_until_settled(settings, sessions, 5)
        assert (await states(sessions)) == {"delivered": 5}
        first = receiver.for_id(held[0].message_id)
        assert [r.status for r in first] == [410, 200]  # same webhook-id after the resume
        assert all(r.verified for r in receiver.snapshot())


async def test_a_timeout_is_a_failed_attempt(database_url: str, tmp_path: Path) -> None:
    settings = webhook_settings(tmp_path, database_url, timeout_s=0.3, lease_s=3)

    def plan(path: str, webhook_id: str, before: int) -> Answer:
        return Answer(500, delay_s=1.0) if before == 0 else Answer(200)

    async with outbox_db(database_url) as sessions, receiving(plan) as receiver:
        await listening(sessions, receiver)
        await send(sessions, "evt-1")
        [delivery] = await run_until_settled(settings, sessions, 1)
        assert (delivery.state, delivery.attempts) == ("delivered", 2)
        log = await attempt_log(sessions, delivery.id)
        assert [(a.status_code, a.error) for a in log] == [
            (None, "no answer within 0.3 s"),
            (200, None),
        ]
        assert log[0].latency_ms is not None and 250 <= log[0].latency_ms < 1000


async def test_after_the_last_attempt_it_fails_and_a_redeliver_sends_the_same_webhook_id(
    database_url: str, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, database_url, retry_schedule_s=[0, 0.05, 0.05])
    answer = {"status": 500}
    async with (
        outbox_db(database_url) as sessions,
        receiving(lambda path, webhook_id, before: Answer(answer["status"])) as receiver,
    ):
        await listening(sessions, receiver)
        await send(sessions, "evt-1")
        [delivery] = await run_until_settled(settings, sessions, 1)
        assert (delivery.state, delivery.attempts, delivery.last_status) == ("failed", 3, 500)
        assert [r.status for r in receiver.snapshot()] == [500, 500, 500]

        key = await bootstrap_admin_key(database_url)
        auth = {"authorization": f"Bearer {key}"}
        async with running_app(settings) as (_, api):
            resp = await api.post(
                f"{ADMIN}/webhook-deliveries/{delivery.id}/redeliver", headers=auth
            )
            assert resp.status_code == 200, resp.text
            assert resp.json()["state"] == "pending"
            assert resp.json()["attempts"] == 0
            assert resp.json()["message_id"] == delivery.message_id
            again = await api.post(
                f"{ADMIN}/webhook-deliveries/{delivery.id}/redeliver", headers=auth
            )
            assert again.status_code == 409
            assert again.json()["error"]["reason"] == "not_redeliverable"

            answer["status"] = 200
            [delivery] = await run_until_settled(settings, sessions, 1)
            assert (delivery.state, delivery.attempts) == ("delivered", 1)
            detail = (
                await api.get(f"{ADMIN}/webhook-deliveries/{delivery.id}", headers=auth)
            ).json()
        assert [(a["attempt"], a["status_code"]) for a in detail["attempt_log"]] == [
            (1, 500),
            (2, 500),
            (3, 500),
            (1, 200),
        ]
        assert detail["payload"]["type"] == "spread.viral"
        receipts = receiver.snapshot()
        assert [r.status for r in receipts] == [500, 500, 500, 200]
        assert {r.webhook_id for r in receipts} == {delivery.message_id}
        assert all(r.verified for r in receipts)


async def test_rotation_signs_with_both_secrets_in_the_grace_period_then_only_the_new_one(
    database_url: str, tmp_path: Path
) -> None:
    clock = FakeClock()
    settings = webhook_settings(tmp_path, database_url, rotation_grace_s=60)
    async with outbox_db(database_url) as sessions, receiving() as receiver:
        endpoint = await add_endpoint(sessions, receiver.url())
        old = endpoint.secret
        key = await bootstrap_admin_key(database_url)
        async with running_app(settings) as (_, api):
            resp = await api.post(
                f"{ADMIN}/webhooks/{endpoint.id}/rotate-secret",
                headers={"authorization": f"Bearer {key}"},
            )
        assert resp.status_code == 200, resp.text
        new = resp.json()["secret"]
        assert new.startswith("whsec_") and new != old
        grace_end = datetime.fromisoformat(resp.json()["previous_secret_expires_at"])
        assert timedelta(seconds=55) < grace_end - clock() < timedelta(seconds=65)
        receiver.secrets["/hook"] = [old, new]

        await send(sessions, "evt-1", now=clock())
        async with notifier(settings, sessions, clock=clock):
            await until(lambda: settled(sessions, 1), what="the first delivery")
            clock.advance((grace_end - clock()).total_seconds() + 1)  # the grace is over
            await send(sessions, "evt-2", now=clock())
            await until(lambda: settled(sessions, 2), what="the second delivery")
        during, after = receiver.snapshot()
        assert set(during.verified_with) == {old, new}
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        assert after.verified_with == (new,)
        assert len(after.headers["webhook-signature"].split(" ")) == 1


# ---- SSRF at delivery time ---------------------------------------------------------------


async def test_loopback_targets_are_refused_at_delivery_time_without_the_allowlist(
    database_url: str, tmp_path: Path
) -> None:
    """Endpoints stored before an allowlist change (or written around the API) are
    vetted again at every attempt: nothing reaches the receiver on 127.0.0.1."""
    settings = webhook_settings(
        tmp_path, database_url, allowed_hosts=[], retry_schedule_s=[0, 0.05]
    )

    async def rebinding(host: str, port: int) -> list[str]:
        if host == "rebind.example":
            return ["127.0.0.1"]
        raise UnresolvableHost(f"host {host} does not resolve")

    async with outbox_db(database_url) as sessions, receiving() as receiver:
        port = receiver.port
        urls = [
            receiver.url(),
            f"http://[::1]:{port}/hook",
            f"http://[::ffff:127.0.0.1]:{port}/hook",
            f"http://localhost:{port}/hook",
            f"http://rebind.example:{port}/hook",
        ]
        for url in urls:
            await add_endpoint(sessions, url)
        assert await send(sessions, "evt-1") == len(urls)
        rows = await run_until_settled(settings, sessions, len(urls), resolver=rebinding)
        assert receiver.snapshot() == []
        for delivery in rows:
            assert (delivery.state, delivery.attempts) == ("failed", 2)
            log = await attempt_log(sessions, delivery.id)
            assert all(a.status_code is None for a in log)
            assert all(
                a.error and ("loopback" in a.error or "local machine" in a.error) for a in log
            )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.8/hook", "private"),
        ("http://172.16.4.4/hook", "private"),
        ("http://192.168.1.20/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00::1]/hook", "unique local"),
        ("http://intranet.example/hook", "resolves to 10.1.1.1, a private"),
        ("http://metadata.google.internal/", "metadata"),
    ],
)
async def test_private_targets_are_refused_at_delivery_time_before_any_connection(
    url: str, why: str
) -> None:
    """The notifier's own send path, with the socket layer replaced by a recorder, so a
    refused address is proven never to be connected to (no packet leaves the test)."""

    async def resolve(host: str, port: int) -> list[str]:
        return ["10.1.1.1"]

    guard = Guard(Allowlist(), resolve)
    recorder = RecordingBackend()
    client = new_client(guard, timeout_s=2, max_connections=1)
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._network_backend, VettingBackend)
    pool._network_backend.inner = recorder
    claimed = Claimed(1, 1, 1, 1, "msg_x", url, "{}", ("whsec_" + "A" * 43 + "=",), EVENT_AT)
    async with client:
        result = await send_attempt(client, guard, claimed, now=datetime.now(UTC), timeout_s=2)
    assert result.outcome == "refused"
    assert result.error is not None and why in result.error
    assert recorder.connects == []


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(certificate, key) for ``name``, made by the openssl command line."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName=DNS:{name}"],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_to_a_vetted_address_keeps_the_host_name_for_sni_and_the_certificate(
    tmp_path: Path,
) -> None:
    """The notifier connects to the address it vetted (127.0.0.1, allowlisted), while
    TLS sends the URL's host name as SNI and checks the certificate against it, and
    the Host header stays the name."""
    cert, key = self_signed(tmp_path, "hooks.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, context: sni.append(name)

    async def dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    guard = Guard(Allowlist.parse(["127.0.0.1"]), dns)
    trust = ssl.create_default_context(cafile=str(cert))
    async with receiving(tls=server_tls) as receiver:
        secret = new_webhook_secret()
        receiver.secrets["/hook"] = [secret]
        results = []
        async with new_client(guard, timeout_s=5, max_connections=1, verify=trust) as client:
            for host in ("hooks.test", "other.test"):
                url = f"https://{host}:{receiver.port}/hook"
                claimed = Claimed(1, 1, 1, 1, "msg_tls", url, "{}", (secret,), EVENT_AT)
                results.append(
                    await send_attempt(client, guard, claimed, now=datetime.now(UTC), timeout_s=5)
                )
        named, wrong_name = results
        assert named.outcome == "delivered", named
        [receipt] = receiver.snapshot()
        assert receipt.verified
        assert receipt.headers["host"] == f"hooks.test:{receiver.port}"
        assert sni[0] == "hooks.test"
        # The certificate names hooks.test: reached as other.test, the same server fails.
        assert wrong_name.outcome == "network_error"
        assert wrong_name.error is not None and "certificate" in wrong_name.error.lower()


# ---- the outbox ------------------------------------------------------------------------------


async def test_enqueue_filters_by_event_type_and_is_idempotent(database_url: str) -> None:
    async with outbox_db(database_url) as sessions:
        every = await add_endpoint(sessions, "https://a.example/hook")
        buzz = await add_endpoint(sessions, "https://b.example/hook", event_types=["buzz"])
        viral = await add_endpoint(sessions, "https://c.example/hook", event_types=["spread.viral"])
        await add_endpoint(sessions, "https://d.example/hook", enabled=False)
        await add_endpoint(sessions, "https://e.example/hook", campaign="autumn")

        assert await send(sessions, "evt-1", "buzz.negative_spike") == 2
        assert await send(sessions, "evt-1", "buzz.negative_spike") == 0  # again: nothing new
        assert await send(sessions, "evt-2", "spread.viral") == 2
        assert await send(sessions, "evt-3", "spread.accelerating") == 1
        assert await send(sessions, "evt-4", "spread.viral", campaign="nope") == 0
        rows = await deliveries(sessions)
        assert [(d.endpoint_id, d.event_type) for d in rows] == [
            (every.id, "buzz.negative_spike"),
            (buzz.id, "buzz.negative_spike"),
            (every.id, "spread.viral"),
            (viral.id, "spread.viral"),
            (every.id, "spread.accelerating"),
        ]
        assert rows[0].message_id == message_id("evt-1", every.id)
        assert all(d.state == "pending" and d.attempts == 0 for d in rows)

        # One enqueue among several in a transaction: nothing is written until the caller
        # commits, and a rollback leaves nothing.
        async with sessions() as session:
            added = await enqueue(
                session,
                campaign="spring",
                event_type="spread.viral",
                event_id="evt-5",
                data={},
                timestamp=EVENT_AT,
            )
            assert added == 2
            await session.rollback()
        assert len(await deliveries(sessions)) == 5


async def test_a_body_over_the_limit_is_refused(database_url: str) -> None:
    async with outbox_db(database_url) as sessions:
        await add_endpoint(sessions, "https://a.example/hook")
        with pytest.raises(PayloadTooLarge):
            await send(sessions, "evt-big", blob="x" * 20_000)
        assert await send(sessions, "evt-fits", blob="x" * 19_000) == 1
        async with sessions() as session:
            with pytest.raises(PayloadTooLarge):
                await enqueue(
                    session,
                    campaign="spring",
                    event_type="spread.viral",
                    event_id="evt-small-limit",
                    data={"blob": "x" * 500},
                    timestamp=EVENT_AT,
                    webhooks=WebhookSettings(max_body_bytes=256),
                )
        assert len(await deliveries(sessions)) == 1


async def test_concurrent_enqueues_of_one_event_add_it_once(database_url: str) -> None:
    async with outbox_db(database_url) as sessions:
        await add_endpoint(sessions, "https://a.example/hook")
        await add_endpoint(sessions, "https://b.example/hook", event_types=["buzz"])
        added = await asyncio.gather(
            *(send(sessions, "evt-race", "buzz.volume_spike") for _ in range(6))
        )
        assert sum(added) == 2
        async with sessions() as session:
            count = await session.scalar(select(func.count()).select_from(WebhookDelivery))
        assert count == 2


async def test_a_claim_is_taken_once_and_its_lease_brings_it_back(database_url: str) -> None:
    now = datetime.now(UTC)
    async with outbox_db(database_url) as sessions:
        await add_endpoint(sessions, "https://a.example/hook")
        await send(sessions, "evt-1", now=now)
        async with sessions() as first, sessions() as second:
            mine = await claim_due(first, now=now, limit=10, lease_s=30)
            theirs = await claim_due(second, now=now, limit=10, lease_s=30)
        assert [c.attempt for c in mine] == [1] and theirs == []
        async with sessions() as session:
            assert (
                await claim_due(session, now=now + timedelta(seconds=29), limit=10, lease_s=30)
                == []
            )
            # The claimer died: after the lease the delivery is attempted again.
            retried = await claim_due(
                session, now=now + timedelta(seconds=30), limit=10, lease_s=30
            )
        assert [c.attempt for c in retried] == [2]
        assert retried[0].message_id == mine[0].message_id
        log = await attempt_log(sessions, mine[0].delivery_id)
        assert [(a.attempt, a.error) for a in log] == [
            (1, "interrupted: the notifier stopped before recording this attempt's outcome"),
            (2, None),
        ]


async def test_two_notifiers_on_one_database_never_send_an_attempt_twice(
    database_url: str, tmp_path: Path
) -> None:
    settings = webhook_settings(tmp_path, database_url, concurrency=4)
    from app.db.session import create_engine, sessionmaker

    async with (
        outbox_db(database_url) as sessions,
        receiving(lambda path, webhook_id, before: Answer(200, delay_s=0.03)) as receiver,
    ):
        await listening(sessions, receiver)
        for n in range(40):
            await send(sessions, f"evt-{n}")
        engines = [create_engine(database_url), create_engine(database_url)]
        registries = [CollectorRegistry(), CollectorRegistry()]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                run_notifier(settings, stop, session_factory=sessionmaker(e), registry=r)
            )
            for e, r in zip(engines, registries, strict=True)
        ]
        try:
            rows = await until(lambda: settled(sessions, 40), 30, "all 40 deliveries")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            for engine in engines:
                await engine.dispose()
        assert all(d.state == "delivered" and d.attempts == 1 for d in rows)
        ids = [r.webhook_id for r in receiver.snapshot()]
        assert sorted(ids) == sorted(d.message_id for d in rows)  # each exactly once
        assert all(r.verified for r in receiver.snapshot())
        sent_by = [
            r.get_sample_value("viraltrace_webhook_attempts_total", {"outcome": "delivered"})
            for r in registries
        ]
        assert sum(v or 0 for v in sent_by) == 40
        assert all(sent_by), sent_by  # both took part


# ---- retention ----------------------------------------------------------------------


async def test_finished_deliveries_and_their_attempts_are_pruned_after_retention(
    database_url: str, tmp_path: Path
) -> None:
    """The notifier deletes delivered, failed and dead deliveries older than the
    retention, with their attempt log; pending ones (still owed) and recent ones stay."""
    settings = webhook_settings(tmp_path, database_url, retention_days=30)
    async with outbox_db(database_url) as sessions, receiving() as receiver:
        await listening(sessions, receiver)
        for n in range(6):
            await send(sessions, f"evt-{n}")
        # The deliveries were enqueued at the real time; the clock starts after them
        # (truncated to the second), so two seconds on makes every one due.
        clock = FakeClock()
        clock.advance(2)
        await run_until_settled(settings, sessions, 6, clock=clock)
        rows = await deliveries(sessions)
        assert [len(await attempt_log(sessions, d.id)) for d in rows] == [1] * 6
        old = clock() - timedelta(days=31)
        recent = clock() - timedelta(days=29)
        # (state, enqueued at) per delivery: three expired finished ones, an expired
        # pending one, a recent finished one and a recent pending one.
        plan = [
            ("delivered", old), ("failed", old), ("dead", old),
            ("pending", old), ("delivered", recent), ("pending", recent),
        ]  # fmt: skip
        async with sessions() as session:
            for delivery, (state, created) in zip(rows, plan, strict=True):
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery.id)
                    .values(
                        state=state, created_at=created, next_attempt_at=clock() + timedelta(days=9)
                    )
                )
            await session.commit()
        async with notifier(settings, sessions, clock=clock):
            await until(lambda: _count_deliveries(sessions, 3), what="the expired deliveries to go")
        kept = await deliveries(sessions)
        assert [d.id for d in kept] == [rows[3].id, rows[4].id, rows[5].id]
        async with sessions() as session:
            attempts = await session.scalars(select(WebhookAttempt.delivery_id))
            assert sorted(set(attempts)) == [rows[3].id, rows[4].id, rows[5].id]


async def _count_deliveries(sessions: Sessions, count: int) -> bool:
    return len(await deliveries(sessions)) == count

"""Alerts end to end: the API -> a real broker -> the cascades, buzz and alerts
consumers -> ClickHouse (chdb) and the webhook outbox in real PostgreSQL -> the
notifier -> a real HTTP receiver that verifies every delivery with the
``standardwebhooks`` library.

Simulated time: events carry their own ``ts`` (half an hour ago onwards), so
40 minutes of campaign happen in seconds, and "within 60 s" is event time.
Each of five campaigns, one per language, has a calm baseline and then a
negative spike in its own language; a control campaign has the same volume,
flat; a sixth campaign's cascade grows with K > 1.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.db import migrate as alembic
from app.db.models import Campaign
from app.db.session import create_engine, sessionmaker
from app.settings import Settings
from app.storage.alerts import read_alerts
from app.storage.clickhouse import ClickHouse
from consumers.alerts.detect import MINUTE_MS
from consumers.alerts.runner import alerts_runner, buzz_runner
from consumers.base import ConsumerMetrics, KafkaTransport, run_all
from consumers.cascades.runner import cascades_runner
from consumers.notifier.runner import run_notifier
from tests.apphelpers import running_app
from tests.conftest import make_settings
from tests.test_cascades import create_topics
from tests.test_sink import wait_for
from tests.webhookhelpers import Receiver, add_endpoint

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.postgres]

DATA = Path(__file__).parent / "data" / "sentiment"
LANGUAGES = ("en", "ms", "id", "ar", "no")
BASELINE_MIN = 24
PER_MINUTE = 30


def texts(lang: str) -> tuple[list[str], list[str]]:
    """(negative, not negative) texts of the labelled set of ``lang``."""
    rows = [json.loads(line) for line in (DATA / f"{lang}.jsonl").read_text().splitlines() if line]
    negative = [r["text"] for r in rows if r["label"] == "negative"]
    return negative, [r["text"] for r in rows if r["label"] != "negative"]


def e2e_settings(
    tmp_path: Path, bootstrap: str, idempotence: bool, unique: str, db: str
) -> Settings:
    return make_settings(
        tmp_path,
        kafka={"bootstrap": bootstrap, "idempotence": idempotence, "topic": f"al-{unique}",
               "dlq_topic": f"al-dlq-{unique}", "signals_topic": f"al-sig-{unique}"},
        consumer={"group_prefix": f"test-{unique}", "retry_initial_s": 0.05, "retry_max_s": 0.2},
        database={"url": db},
        alerts={"flush_interval_s": 0.3, "warmup_min": 10, "rules_refresh_s": 0.5},
        webhooks={"allowed_hosts": ["127.0.0.1"], "poll_interval_s": 0.05, "jitter": 0.0},
        cascades={"snapshot_interval_s": 0.3, "k_window_min": 3, "viral_sustain_min": 2,
                  "viral_min_sharers": 10},
    )  # fmt: skip


def comments(
    campaign: str, token: str | None, lang: str, start: int, minutes: int, negative_share: float,
    seed: int,
) -> list[dict[str, Any]]:  # fmt: skip
    rng = random.Random(seed)
    negative, other = texts(lang)
    out = []
    for m in range(minutes):
        for i in range(PER_MINUTE):
            pool = negative if rng.random() < negative_share else other
            out.append({
                "type": "comment", "campaign": campaign, "token": token,
                "ts": start + m * MINUTE_MS + i * MINUTE_MS // PER_MINUTE,
                "text": rng.choice(pool),
            })  # fmt: skip
    return out


async def post_events(client: Any, batch: list[dict[str, Any]]) -> None:
    for offset in range(0, len(batch), 400):
        resp = await client.post("/v1/events", json=batch[offset : offset + 400])
        assert resp.status_code == 202, resp.text
        assert resp.json()["rejected"] == [], resp.text


async def grow_viral_cascade(client: Any, campaign: str, start: int) -> None:
    """Shares growing 35% a minute for 13 minutes: windowed K near 1.35^3 > 1."""
    rng = random.Random(5)
    tokens: list[str] = []
    for minute in range(13):
        for i in range(round(4 * 1.35**minute)):
            body: dict[str, Any] = {
                "campaign": campaign, "visitor": f"sharer-{minute}-{i}",
                "ts": start + minute * MINUTE_MS + i * 997 % MINUTE_MS,
            }  # fmt: skip
            if tokens:
                body["parent"] = rng.choice(tokens[-40:])
            resp = await client.post("/v1/shares", json=body)
            assert resp.status_code == 201, resp.text
            tokens.append(resp.json()["token"])


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_spikes_in_every_language_and_k_above_one_raise_alerts_and_a_flat_series_does_not(
    broker: tuple[str, str, bool], migrated: ClickHouse, tmp_path: Path, unique: str,
    database_url: str,
) -> None:  # fmt: skip
    _, bootstrap, idempotence = broker
    settings = e2e_settings(tmp_path, bootstrap, idempotence, unique, database_url)
    await create_topics(settings)
    await alembic.upgrade(database_url)
    engine = create_engine(database_url)
    sessions = sessionmaker(engine)
    async with sessions() as session:
        for lang in LANGUAGES:
            session.add(Campaign(slug=f"buzz-{lang}", name=lang, languages=[lang]))
        session.add(Campaign(slug="flat", name="control", languages=["en"]))
        session.add(Campaign(slug="viral", name="viral", languages=["en"]))
        await session.commit()
    receiver = Receiver().start()
    for campaign in [f"buzz-{lang}" for lang in LANGUAGES] + ["flat", "viral"]:
        path = f"/{campaign}"
        endpoint = await add_endpoint(sessions, receiver.url(path), campaign=campaign)
        receiver.secrets[path] = [endpoint.secret]

    stop = asyncio.Event()
    transport = KafkaTransport.from_settings(settings)
    metrics = ConsumerMetrics(CollectorRegistry())
    runners = [
        cascades_runner(settings, migrated, stop, metrics, transport),
        buzz_runner(settings, sessions, stop, metrics, transport),
        alerts_runner(settings, migrated, sessions, stop, metrics, transport),
    ]
    consumers = asyncio.create_task(run_all(runners, stop))
    delivering = asyncio.create_task(
        run_notifier(settings, stop, session_factory=sessions, registry=CollectorRegistry())
    )
    start = (int(time.time() * 1000) - 45 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
    spike_start = start + BASELINE_MIN * MINUTE_MS
    try:
        async with running_app(settings) as (_, client):
            for n, lang in enumerate(LANGUAGES):
                campaign = f"buzz-{lang}"
                root = (await client.post("/v1/shares", json={"campaign": campaign,
                                                              "ts": start})).json()  # fmt: skip
                calm = comments(campaign, root["token"], lang, start, BASELINE_MIN, 0.1, n)
                spike = comments(campaign, root["token"], lang, spike_start, 2, 0.75, 10 + n)
                await post_events(client, calm + spike)
            await post_events(
                client, comments("flat", None, "en", start, BASELINE_MIN + 2, 0.1, 99)
            )
            await grow_viral_cascade(client, "viral", start)

        async def raised() -> tuple[bool, Any]:
            found = {}
            for campaign in [f"buzz-{lang}" for lang in LANGUAGES] + ["viral"]:
                found[campaign] = [
                    (a.kind, a.opened_at) for a in await read_alerts(migrated, campaign)
                ]
            done = all(
                any(k == "buzz.negative_spike" for k, _ in found[f"buzz-{lang}"])
                for lang in LANGUAGES
            ) and any(k == "spread.viral" for k, _ in found["viral"])
            return done, found

        await wait_for(raised, 90, "alerts in ClickHouse")
        _, found = await raised()

        async def delivered() -> tuple[bool, Any]:
            paths = {r.path for r in receiver.snapshot() if r.status == 200}
            wanted = {f"/buzz-{lang}" for lang in LANGUAGES} | {"/viral"}
            return wanted <= paths, sorted(paths)

        await wait_for(delivered, 30, "the alerts' webhooks at the receiver")
    finally:
        stop.set()
        await consumers
        await delivering
        receiver.stop()
    for lang in LANGUAGES:
        opened = [at for kind, at in found[f"buzz-{lang}"] if kind == "buzz.negative_spike"]
        assert len(opened) == 1, (lang, found[f"buzz-{lang}"])
        assert 0 <= opened[0] - spike_start < 60_000, f"{lang}: within 60 s of event time"
        [alert] = [
            a for a in await read_alerts(migrated, f"buzz-{lang}") if a.id.startswith("buzz.neg")
        ]
        explanation = alert.explanation
        assert explanation["languages"].get(lang, 0) > sum(explanation["languages"].values()) / 2
        assert explanation["samples"] and all(len(s["text"]) <= 161 for s in explanation["samples"])
        assert explanation["top_branches"][0]["negative"] > 0
    assert await read_alerts(migrated, "flat") == [], "a flat series raises nothing"

    await engine.dispose()
    receipts = receiver.snapshot()
    assert receipts and all(r.verified for r in receipts), "every delivery verifies"
    assert not receiver.duplicates, "one successful delivery per webhook-id"
    assert not [r for r in receipts if r.path == "/flat"], "nothing for the flat series"
    by_path = {r.path: orjson.loads(r.body) for r in receipts if r.path != "/viral"}
    for lang in LANGUAGES:
        body = by_path[f"/buzz-{lang}"]
        assert body["type"] == "buzz.negative_spike"
        assert body["data"]["state"] == "open" and body["data"]["campaign"] == f"buzz-{lang}"
        assert body["data"]["explanation"]["samples"]
    viral = [orjson.loads(r.body) for r in receipts if r.path == "/viral"]
    assert "spread.viral" in {body["type"] for body in viral}

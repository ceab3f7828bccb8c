"""Alert transitions into the webhook outbox (SQLite and real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from app.db.models import WebhookDelivery
from app.settings import WebhookSettings
from consumers.alerts.detect import Transition
from consumers.alerts.runner import outbox_notifier
from tests.webhookhelpers import add_endpoint, outbox_db


def transition(state: str = "open") -> tuple[Transition, dict[str, Any]]:
    t = Transition("buzz.negative_spike:spring:1", "buzz.negative_spike", "spring", state,  # type: ignore[arg-type]
                   1, None if state == "open" else 2, 0.5, 0.1, 4.0, 0, 1)  # fmt: skip
    data = {"id": t.id, "state": state, "explanation": {"samples": [{"text": "x" * 3000}]}}
    return t, data


async def test_each_transition_is_queued_once_per_endpoint(database_url: str) -> None:
    async with outbox_db(database_url) as sessions:
        await add_endpoint(sessions, "https://hooks.example/a")
        await add_endpoint(sessions, "https://hooks.example/b", event_types=["spread"])
        notify = outbox_notifier(sessions, WebhookSettings())
        await notify([transition("open")])
        await notify([transition("open"), transition("resolved")])  # a replay, then more
        async with sessions() as session:
            rows = (await session.scalars(select(WebhookDelivery))).all()
    assert len(rows) == 2, "one endpoint subscribed; the replayed open is not queued twice"
    assert {orjson.loads(r.payload)["data"]["state"] for r in rows} == {"open", "resolved"}
    assert len({r.message_id for r in rows}) == 2


async def test_an_alert_over_the_body_limit_goes_out_without_its_explanation(
    database_url: str,
) -> None:
    async with outbox_db(database_url) as sessions:
        await add_endpoint(sessions, "https://hooks.example/a")
        await outbox_notifier(sessions, WebhookSettings(max_body_bytes=2048))([transition()])
        async with sessions() as session:
            [row] = (await session.scalars(select(WebhookDelivery))).all()
    body = orjson.loads(row.payload)
    assert body["type"] == "buzz.negative_spike"
    assert body["data"]["explanation"] == {"truncated": True}
    assert body["data"]["id"] == "buzz.negative_spike:spring:1"

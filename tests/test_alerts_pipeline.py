"""The alerts pipeline through real ClickHouse (chdb), without a broker: items,
windows, alerts and their explanations written and read back; restore after a
restart with a replay; late items; failing writes retried with the same content."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from app.bus.memory import MemoryRecord
from app.settings import AlertSettings
from app.storage.alerts import read_alerts, read_buzz
from app.storage.clickhouse import ClickHouse, StorageError
from consumers.alerts.detect import MINUTE_MS, BuzzItem, Transition
from consumers.alerts.pipeline import AlertsPipeline
from consumers.base import InvalidMessage
from tests.test_alerts_detect import T0, series

pytestmark = pytest.mark.clickhouse


def message(item: BuzzItem, sample: str = "") -> dict[str, Any]:
    return {
        "kind": "buzz.item", "event_id": item.event_id, "campaign": item.campaign,
        "type": item.type, "root": item.root, "node": item.node, "channel": item.channel,
        "ts": item.ts, "received_at": item.received_at, "label": item.label, "score": item.score,
        "lang": item.lang, "terms": list(item.terms),
        "sample": sample or ("this is a scam [url]" if item.label == "negative" else ""),
    }  # fmt: skip


def records(items: list[BuzzItem], first_offset: int = 0) -> list[MemoryRecord]:
    return [
        MemoryRecord(
            "signals", 0, first_offset + i, 0, it.campaign.encode(), orjson.dumps(message(it))
        )  # fmt: skip
        for i, it in enumerate(items)
    ]


class Outbox:
    """Records what the pipeline hands to the webhook outbox; can fail on demand."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Transition, dict[str, Any]]]] = []
        self.failures = 0

    async def __call__(self, batch: list[tuple[Transition, dict[str, Any]]]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database down")
        self.batches.append(batch)

    @property
    def events(self) -> list[tuple[str, str]]:
        return [(t.kind, t.state) for batch in self.batches for t, _ in batch]


def pipeline(ch: ClickHouse, outbox: Outbox, wall: list[int] | None = None) -> AlertsPipeline:
    clock = wall or [T0]
    return AlertsPipeline(
        AlertSettings(), ch, notify=outbox, public_base_url="https://vt.example",
        wall_ms=lambda: clock[0],
    )  # fmt: skip


async def feed(p: AlertsPipeline, recs: list[MemoryRecord], token: str) -> None:
    await p.prepare(recs)
    for r in recs:
        p.process(r)
    await p.write([], token)


def spike_run() -> tuple[list[BuzzItem], list[BuzzItem], int]:
    baseline = series(30, 40, 0.1)
    spike_start = T0 + 30 * MINUTE_MS
    return baseline, series(2, 40, 0.75, start=spike_start, seed=9), spike_start


async def test_items_windows_and_an_explained_alert_are_written_and_listed(
    migrated: ClickHouse,
) -> None:
    outbox = Outbox()
    p = pipeline(migrated, outbox)
    baseline, spike, spike_start = spike_run()
    await feed(p, records(baseline), "t1")
    assert outbox.batches == []
    await feed(p, records(spike, len(baseline)), "t2")
    assert ("buzz.negative_spike", "open") in outbox.events
    transition, data = next(
        (t, d) for b in outbox.batches for t, d in b if t.kind == "buzz.negative_spike"
    )
    assert transition.opened_at - spike_start < 60_000
    explanation = data["explanation"]
    assert explanation["top_branches"][0]["root"] == "00000000000000aa"
    assert explanation["top_branches"][0]["negative"] > 0
    assert explanation["top_spreaders"][0]["node"] == "00000000000000aa"
    assert 1 <= len(explanation["samples"]) <= 3
    assert explanation["samples"][0] == {"text": "this is a scam [url]", "lang": "en"}
    assert explanation["languages"] == {"en": explanation["languages"]["en"]}
    assert explanation["top_negative_terms"][0]["term"] == "bad"
    assert data["links"]["alert"].startswith("https://vt.example/v1/campaigns/spring/alerts/")
    assert data["opened_at"].endswith("+00:00")

    [(count,)] = migrated.query_rows("SELECT count() FROM buzz_items FINAL")
    assert count == len(baseline) + len(spike)
    minutes = await read_buzz(
        migrated, "spring", datetime.fromtimestamp(T0 / 1000, UTC),
        datetime.fromtimestamp((spike_start + 2 * MINUTE_MS) / 1000, UTC),
    )  # fmt: skip
    assert len(minutes) == 32
    assert sum(m.volume for m in minutes) == len(baseline) + len(spike)
    assert minutes[-1].negative_share > 0.5
    assert minutes[-1].top_negative_terms[0][0] == "bad"
    branch = await read_buzz(
        migrated, "spring", minutes[0].minute, minutes[-1].minute, branch="00000000000000aa"
    )
    assert [m.volume for m in branch] == [m.volume for m in minutes[:-1]]

    listed = await read_alerts(migrated, "spring", state="open")
    assert [a.id for a in listed] == [transition.id]
    assert listed[0].explanation == explanation


async def test_a_restart_restores_baselines_alerts_and_drops_the_replay(
    migrated: ClickHouse,
) -> None:
    outbox = Outbox()
    first = pipeline(migrated, outbox)
    baseline, spike, spike_start = spike_run()
    await feed(first, records(baseline + spike), "t1")
    opened = [e for e in outbox.events if e == ("buzz.negative_spike", "open")]
    assert len(opened) == 1

    # A new consumer (after a crash before the commit) reads the last records again.
    second = pipeline(migrated, outbox)
    replay = records(spike, len(baseline))
    await second.prepare(replay)
    assert second.restored == 1
    assert [second.process(r) for r in replay] == [()] * len(replay), "replayed items dropped"
    state = second.campaigns["spring"]
    assert state.kinds["buzz.negative_spike"].open is not None
    live = first.campaigns["spring"]
    assert state.warm == live.warm
    assert state.negative.mean == pytest.approx(live.negative.mean)

    calm = series(15, 40, 0.1, start=spike_start + 2 * MINUTE_MS, seed=4)
    await feed(second, records(calm, len(baseline) + len(spike)), "t2")
    spikes = [(t.id, t.state) for b in outbox.batches for t, _ in b if t.kind.endswith("spike")]
    assert [state for _, state in spikes] == ["open", "resolved"]
    assert spikes[0][0] == spikes[1][0], "resolved under the id it opened with"
    [alert] = await read_alerts(migrated, "spring")
    assert alert.state == "resolved" and alert.resolved_at is not None


async def test_a_late_item_corrects_its_minute(migrated: ClickHouse) -> None:
    p = pipeline(migrated, Outbox())
    items = series(10, 5, 0.0)
    await feed(p, records(items), "t1")
    late = series(1, 1, 1.0, start=T0 + 3 * MINUTE_MS + 10_000, seed=3)
    await feed(p, records(late, 100), "t2")
    start = datetime.fromtimestamp((T0 + 3 * MINUTE_MS) / 1000, UTC)
    [minute] = await read_buzz(migrated, "spring", start, start.replace(minute=start.minute + 1))
    assert (minute.volume, minute.negative) == (6, 1)


async def test_failed_writes_are_retried_with_the_same_content(migrated: ClickHouse) -> None:
    outbox = Outbox()
    p = pipeline(migrated, outbox)
    baseline, spike, _ = spike_run()
    recs = records(baseline + spike)
    await p.prepare(recs)
    for r in recs:
        p.process(r)
    outbox.failures = 2
    for _ in range(2):
        with pytest.raises(StorageError):
            await p.write([], "t1")
    await p.write([], "t1")
    assert outbox.events.count(("buzz.negative_spike", "open")) == 1
    [(count,)] = migrated.query_rows("SELECT count() FROM buzz_items")
    assert count == len(recs), "the retried insert was deduplicated"
    assert len(await read_alerts(migrated, "spring")) == 1


def test_poison_messages_are_refused_with_a_reason(migrated: ClickHouse) -> None:
    p = pipeline(migrated, Outbox())
    good = message(series(1, 1, 0.0)[0])
    cases = [
        ({**good, "label": "furious"}, "bad_schema"),
        ({**good, "ts": "yesterday"}, "bad_schema"),
        ({**good, "kind": "nope"}, "bad_schema: kind"),
        ({k: v for k, v in good.items() if k != "campaign"}, "bad_schema: no campaign"),
        ({"kind": "spread.viral", "campaign": "spring", "state": "maybe"}, "bad_schema"),
    ]
    for value, reason in cases:
        with pytest.raises(InvalidMessage) as info:
            p.process(MemoryRecord("signals", 0, 0, 0, b"spring", orjson.dumps(value)))
        assert info.value.reason.startswith(reason)
    with pytest.raises(InvalidMessage):
        p.process(MemoryRecord("signals", 0, 0, 0, b"spring", b"{not json"))
    assert uuid.UUID(good["event_id"])


async def test_the_query_api_lists_alerts_and_buzz(migrated: ClickHouse, tmp_path: Any) -> None:
    from tests.apphelpers import running_app
    from tests.conftest import make_settings

    p = pipeline(migrated, Outbox())
    baseline, spike, spike_start = spike_run()
    await feed(p, records(baseline + spike), "t1")
    key = "test-read-key-0123456789"
    settings = make_settings(
        tmp_path, query={"read_keys": key}, tracking={"public_base_url": "https://vt.example"}
    )
    auth = {"authorization": f"Bearer {key}"}
    async with running_app(settings, clickhouse=migrated) as (_, client):
        assert (await client.get("/v1/campaigns/spring/alerts")).status_code == 401
        listed = (await client.get("/v1/campaigns/spring/alerts?state=open", headers=auth)).json()
        spike_alert = next(a for a in listed if a["kind"] == "buzz.negative_spike")
        assert spike_alert["state"] == "open" and spike_alert["resolved_at"] is None
        assert spike_alert["explanation"]["samples"]
        one = await client.get(spike_alert["links"]["alert"].removeprefix("https://vt.example"),
                               headers=auth)  # fmt: skip
        assert one.status_code == 200 and one.json()["id"] == spike_alert["id"]
        assert (await client.get("/v1/campaigns/spring/alerts?state=resolved",
                                 headers=auth)).json() == []  # fmt: skip
        missing = await client.get("/v1/campaigns/spring/alerts/nope", headers=auth)
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "alert_id"
        bad_state = await client.get("/v1/campaigns/spring/alerts?state=maybe", headers=auth)
        assert bad_state.status_code == 422

        buzz_url = spike_alert["links"]["buzz"].removeprefix("https://vt.example")
        buzz = await client.get(buzz_url, headers=auth)
        assert buzz.status_code == 200, buzz.text
        minutes = buzz.json()["minutes"]
        assert minutes and sum(m["negative"] for m in minutes) > 0
        assert minutes[-1]["minute"].endswith("Z")
        start = quote(datetime.fromtimestamp(spike_start / 1000, UTC).isoformat())
        for query, reason in [
            (f"from={start}&to={start}", "bad_range"),
            ("from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "range_too_large"),
            ("from=2026-01-01T00:00:00", "bad_time"),
        ]:
            bad = await client.get(f"/v1/campaigns/spring/buzz?{query}", headers=auth)
            assert bad.status_code == 400, query
            assert bad.json()["error"]["reason"] == reason
        branch = await client.get("/v1/campaigns/spring/buzz?branch=zz", headers=auth)
        assert branch.status_code == 422

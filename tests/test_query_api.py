"""The query API (issue 7) end to end over HTTP (in process), on data written by the
real sink and cascades pipelines into the real ClickHouse engine (chdb); every
answer is checked against numbers computed from the events (tests/querydata.py).
Auth with control-plane keys runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import math
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from app.db import migrate
from app.storage.clickhouse import ClickHouse
from app.storage.migrate import migrate as migrate_clickhouse
from app.storage.query import iso_ms, iso_s
from consumers.cascades.state import FLAG_BOT, FLAG_SAME_ORIGIN
from tests.apphelpers import running_app
from tests.conftest import make_settings
from tests.querydata import (
    BASE_MS,
    BASE_S,
    CAMPAIGN,
    OTHER,
    Expected,
    Writer,
    load,
    plain_events,
)
from tests.test_admin_api import Api, assert_error, bootstrap_admin_key
from tests.test_storage import TTL_DAYS, copy_migrations, insert_events, make_event

pytestmark = pytest.mark.clickhouse

READ_KEY = "test-read-key-0123456789"
AUTH = {"authorization": f"Bearer {READ_KEY}"}
METRIC_TYPES: dict[str, tuple[str, ...] | None] = {
    "views": ("view",),
    "clicks": ("click",),
    "shares": ("share",),
    "signups": ("signup",),
    "conversions": ("convert",),
    "comments": ("comment",),
    "events": ("view", "click", "share", "signup", "convert"),
    "visitors": None,
}
STEPS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}


def settings_for(tmp_path: Path, **query: Any) -> Any:
    return make_settings(tmp_path, query={"read_keys": READ_KEY, **query})


@pytest.fixture
async def loaded(migrated: ClickHouse) -> Expected:
    return await load(migrated)


@pytest.fixture
async def client(
    migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings_for(tmp_path), clickhouse=migrated) as (_, http):
        yield http


async def get(client: httpx.AsyncClient, url: str, **params: Any) -> Any:
    resp = await client.get(url, params=params, headers=AUTH)
    assert resp.status_code == 200, f"{url}: {resp.status_code} {resp.text}"
    return resp.json()


def when(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


# ---- summary ---------------------------------------------------------------------------


async def test_summary_counts_distinct_events_cascades_and_open_alerts(
    client: httpx.AsyncClient, loaded: Expected, migrated: ClickHouse
) -> None:
    await insert_alerts(migrated)
    body = await get(client, f"/v1/campaigns/{CAMPAIGN}/summary")
    counts = loaded.counts(CAMPAIGN)
    assert {t: n for t, n in body["events"].items() if n} == dict(counts)
    assert set(body["events"]) >= {"view", "click", "share", "preview", "comment"}
    assert (body["views"], body["clicks"], body["shares"], body["conversions"]) == (
        counts["view"], counts["click"], counts["share"], counts["convert"],
    )  # fmt: skip
    visitors = {e["visitor"] for e in loaded.of(CAMPAIGN) if e["visitor"] is not None}
    assert body["unique_visitors"] == len(visitors)  # uniq is exact at this size
    stats = [c.stats() for c in loaded.cascades.values() if c.campaign == CAMPAIGN]
    assert body["cascades"] == len(stats) == 4
    valid = sum(s.valid_nodes for s in stats)
    assert body["k_factor"] == sum(s.valid_recruits for s in stats) / valid
    assert body["invitation_conversion_rate"] == (
        sum(s.conversions for s in stats) / sum(s.clicks for s in stats)
    )
    largest = max(stats, key=lambda s: (s.size, s.root))
    assert body["largest_cascade"] == {"root": largest.root, "size": largest.size}
    assert body["open_alerts"] == 1
    assert body["as_of"].endswith("Z")

    empty = await get(client, "/v1/campaigns/never-seen/summary")
    assert empty["views"] == empty["cascades"] == empty["unique_visitors"] == 0
    assert empty["k_factor"] is None and empty["invitation_conversion_rate"] is None
    assert empty["largest_cascade"] is None


async def insert_alerts(ch: ClickHouse) -> None:
    """As the alerts consumer writes them: one row per transition, the later one wins."""
    columns = ("id", "kind", "campaign", "state", "opened_at", "resolved_at", "value",
               "baseline", "threshold", "window_start", "window_end", "numbers", "subjects",
               "explanation", "version", "written_at")  # fmt: skip

    def alert(id_: str, campaign: str, state: str, version: int) -> tuple[Any, ...]:
        resolved = BASE_MS + 60_000 if state == "resolved" else None
        return (id_, "buzz.negative_spike", campaign, state, BASE_MS, resolved, 1.0, 0.1, 0.5,
                BASE_MS, BASE_MS + 60_000, "{}", "{}", "{}", version, BASE_MS)  # fmt: skip

    rows = [alert("a1", CAMPAIGN, "open", 1), alert("a2", CAMPAIGN, "open", 1),
            alert("a2", CAMPAIGN, "resolved", 2), alert("a3", OTHER, "open", 1)]  # fmt: skip
    await ch.ainsert("alerts", rows, columns)


# ---- timeseries ------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "1d"])
async def test_timeseries_answers_every_bucket_of_every_metric(
    client: httpx.AsyncClient, loaded: Expected, interval: str
) -> None:
    step = STEPS[interval]
    # Not aligned on purpose: from is floored and to ceiled to the interval.
    start, end = BASE_S + 30, BASE_S + 3 * 3600 - 30
    low, high = start - start % step, end + (-end % step)
    for metric, types in METRIC_TYPES.items():
        body = await get(client, f"/v1/campaigns/{CAMPAIGN}/timeseries", metric=metric,
                         interval=interval, **{"from": when(start), "to": when(end)})  # fmt: skip
        assert (body["campaign"], body["metric"], body["interval"]) == (CAMPAIGN, metric, interval)
        assert (body["from"], body["to"]) == (iso_s(low), iso_s(high))
        want = loaded.buckets(CAMPAIGN, step, types)
        assert body["points"] == [
            {"t": iso_s(b), "value": want.get(b, 0)} for b in range(low, high, step)
        ], metric


async def test_timeseries_defaults_to_shares_over_the_last_hour(
    client: httpx.AsyncClient,
) -> None:
    body = await get(client, f"/v1/campaigns/{CAMPAIGN}/timeseries")
    assert (body["metric"], body["interval"]) == ("shares", "1m")
    assert len(body["points"]) in (60, 61)  # 61 when now is not on a minute
    assert all(p["value"] == 0 for p in body["points"])  # the data is days old
    start = datetime.fromisoformat(body["from"])
    assert start.second == 0 and start.tzinfo is not None


ALL_METRICS = ["views", "clicks", "shares", "signups", "conversions", "comments", "reactions",
               "reports", "unsubscribes", "previews", "events", "visitors"]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "reason", "field", "extra"),
    [
        ({"metric": "likes"}, "bad_value", "metric", {"allowed": ALL_METRICS}),
        ({"interval": "2m"}, "bad_value", "interval", {"allowed": ["1m", "5m", "1h", "1d"]}),
        ({"from": "2026-01-01T00:00:00"}, "bad_time", "from", {}),
        ({"to": "yesterday"}, "bad_time", "to", {}),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "bad_range", "from", {}),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "bad_range", "from", {}),
        # 2 days + 1 minute at 1m: 2,881 buckets.
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:01:00Z"}, "range_too_large",
         "from", {"max_points": 2880}),
        ({"interval": "1h", "from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"},
         "range_too_large", "from", {"max_points": 2880}),
    ],
)  # fmt: skip
async def test_timeseries_refuses_bad_input_with_reason_and_field(
    client: httpx.AsyncClient,
    params: dict[str, str],
    reason: str,
    field: str,
    extra: dict[str, Any],
) -> None:
    resp = await client.get(f"/v1/campaigns/{CAMPAIGN}/timeseries", params=params, headers=AUTH)
    error = assert_error(resp, 400, reason, field)
    for name, value in extra.items():
        assert error[name] == value


async def test_exactly_2880_buckets_are_answered(client: httpx.AsyncClient) -> None:
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-03T00:00:00Z"}
    body = await get(client, f"/v1/campaigns/{CAMPAIGN}/timeseries", **params)
    assert len(body["points"]) == 2880


async def test_counts_follow_new_events_and_ignore_replays(
    migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> None:
    """Buckets counted once are kept (RollupCounts); an insert into one is seen at once."""
    rng = random.Random(99)
    async with running_app(settings_for(tmp_path), clickhouse=migrated) as (app, client):
        url = f"/v1/campaigns/{CAMPAIGN}/timeseries"
        window = {"interval": "5m", "metric": "events", "from": when(BASE_S),
                  "to": when(BASE_S + 3 * 3600)}  # fmt: skip
        before = await get(client, url, **window)
        summary = await get(client, f"/v1/campaigns/{CAMPAIGN}/summary")
        assert len(app.state.vt.query_caches.counts) > 0
        writer = Writer(migrated)
        writer.offset = 10**6
        fresh = plain_events(rng, 40, CAMPAIGN)
        for i, event in enumerate(fresh):
            event["visitor"] = f"new-visitor-{i}"
        replays = rng.sample(list(loaded.events.values()), 50)
        await writer.write(fresh + replays)
        for event in fresh:
            loaded.events[event["event_id"]] = event
        after = await get(client, url, **window)
        want = loaded.buckets(CAMPAIGN, 300, ("view", "click", "share", "signup", "convert"))
        assert [p["value"] for p in after["points"]] == [
            want.get(b, 0) for b in range(BASE_S, BASE_S + 3 * 3600, 300)
        ]
        assert after["points"] != before["points"]
        again = await get(client, f"/v1/campaigns/{CAMPAIGN}/summary")
        assert again["events"]["view"] == loaded.counts(CAMPAIGN)["view"]
        assert sum(again["events"].values()) == sum(summary["events"].values()) + len(fresh)
        assert again["unique_visitors"] == summary["unique_visitors"] + len(fresh)


async def test_an_hour_is_kept_only_once_its_minutes_add_up(
    migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> None:
    """The two rollup views of one insert land one after the other: an hour whose
    rollup moved before its minutes did must not be kept with the old minutes."""
    rollup = (
        "INSERT INTO {table:Identifier} SELECT {campaign:String},"
        " toDateTime({bucket:UInt32}, 'UTC'), 'view', '', uniqExactState(toUUID({id:String})),"
        " uniqState(CAST(NULL, 'Nullable(String)')), 1"
    )
    at = BASE_S + 1800  # inside the first hour
    params = {"campaign": CAMPAIGN, "id": str(uuid.uuid4())}
    window = {"metric": "views", "from": when(BASE_S), "to": when(BASE_S + 3600)}
    url = f"/v1/campaigns/{CAMPAIGN}/timeseries"
    async with running_app(settings_for(tmp_path), clickhouse=migrated) as (_, client):
        before = await get(client, url, **window)
        await migrated.acommand(
            rollup, {**params, "table": "events_per_hour", "bucket": at - at % 3600}
        )
        assert await get(client, url, **window) == before  # the minute is not there yet
        await migrated.acommand(rollup, {**params, "table": "events_per_minute", "bucket": at})
        after = await get(client, url, **window)
    changed = [(a, b) for a, b in zip(before["points"], after["points"], strict=True) if a != b]
    assert changed == [
        ({"t": iso_s(at), "value": before["points"][30]["value"]},
         {"t": iso_s(at), "value": before["points"][30]["value"] + 1})
    ]  # fmt: skip


async def test_counts_are_the_same_without_the_cache(
    migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, rollup_cache_buckets=0)
    async with running_app(settings, clickhouse=migrated) as (app, client):
        for _ in range(2):
            window = {"from": when(BASE_S), "to": when(BASE_S + 7200)}
            url = f"/v1/campaigns/{CAMPAIGN}/timeseries"
            body = await get(client, url, interval="1h", metric="views", **window)
            want = loaded.buckets(CAMPAIGN, 3600, ("view",))
            assert [p["value"] for p in body["points"]] == [want[BASE_S], want[BASE_S + 3600]]
        assert len(app.state.vt.query_caches.counts) == 0


async def test_events_written_before_migration_0007_are_counted(
    ch: ClickHouse, tmp_path: Path
) -> None:
    """Rollup rows from before 0007 have rows = 0 and no visitors_per_month yet: the
    migration backfills visitors, and their buckets are counted (and recounted) too."""
    directory = copy_migrations(tmp_path)
    held = {p: p.read_text() for p in directory.glob("0007_*.sql")}
    for path in held:
        path.unlink()
    (directory.parent / "max_migration.txt").write_text("0006_buzz_alerts\n")
    migrate_clickhouse(ch, directory, settings_ttl_days=TTL_DAYS)
    rng = random.Random(3)
    old = [make_event(rng, campaign=CAMPAIGN, ts=BASE_MS + rng.randrange(3_600_000))
           for _ in range(300)]  # fmt: skip
    insert_events(ch, old, 0)
    for path, sql in held.items():
        path.write_text(sql)
    (directory.parent / "max_migration.txt").write_text(f"{next(iter(held)).stem}\n")
    migrate_clickhouse(ch, directory, settings_ttl_days=TTL_DAYS)
    async with running_app(settings_for(tmp_path), clickhouse=ch) as (_, client):
        summary = await get(client, f"/v1/campaigns/{CAMPAIGN}/summary")
        assert summary["views"] == sum(e["type"] == "view" for e in old)
        assert summary["unique_visitors"] == len({e["visitor"] for e in old} - {None})
        new = [make_event(rng, campaign=CAMPAIGN, type="view", ts=BASE_MS + 1000)
               for _ in range(5)]  # fmt: skip
        insert_events(ch, new, 1000)
        again = await get(client, f"/v1/campaigns/{CAMPAIGN}/summary")
        assert again["views"] == summary["views"] + 5


# ---- cascades --------------------------------------------------------------------------


@pytest.mark.parametrize("order_by", ["size", "reach", "virality", "growth"])
async def test_cascades_pages_cover_every_cascade_once_in_order(
    client: httpx.AsyncClient, loaded: Expected, order_by: str
) -> None:
    attribute = {"growth": "growth_per_min"}.get(order_by, order_by)
    stats = [c.stats() for c in loaded.cascades.values() if c.campaign == CAMPAIGN]
    want = sorted(stats, key=lambda s: (getattr(s, attribute), s.root), reverse=True)
    rows, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"order_by": order_by, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = await get(client, f"/v1/campaigns/{CAMPAIGN}/cascades", **params)
        assert (body["campaign"], body["order_by"]) == (CAMPAIGN, order_by)
        rows += body["cascades"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert [r["root"] for r in rows] == [s.root for s in want]
    for row, s in zip(rows, want, strict=True):
        assert row == {
            "root": s.root, "size": s.size, "reach": s.reach, "depth": s.depth,
            "max_breadth": s.max_breadth, "virality": pytest.approx(s.virality, rel=1e-12),
            "growth_per_min": pytest.approx(s.growth_per_min, rel=1e-12), "clicks": s.clicks,
            "conversions": s.conversions, "first_ts": iso_ms(s.first_ts),
            "last_ts": iso_ms(s.last_ts), "forecast_size": s.forecast_size,
        }  # fmt: skip


def forged(payload: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


async def test_a_bad_cursor_or_order_is_400(client: httpx.AsyncClient) -> None:
    url = f"/v1/campaigns/{CAMPAIGN}/cascades"
    first = await get(client, url, limit=1)
    good = first["next_cursor"]
    payload = orjson.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    for cursor in ["not a cursor", "e30", forged([1, 2]), forged({**payload, "k": "big"}),
                   forged({**payload, "r": "zz"}), forged({**payload, "k": True})]:  # fmt: skip
        resp = await client.get(url, params={"cursor": cursor}, headers=AUTH)
        assert_error(resp, 400, "bad_cursor", "cursor")
    # Another listing's cursor: another order, another campaign.
    resp = await client.get(url, params={"cursor": good, "order_by": "reach"}, headers=AUTH)
    assert_error(resp, 400, "bad_cursor", "cursor")
    other = f"/v1/campaigns/{OTHER}/cascades"
    assert_error(await client.get(other, params={"cursor": good}, headers=AUTH), 400, "bad_cursor")
    resp = await client.get(url, params={"order_by": "age"}, headers=AUTH)
    error = assert_error(resp, 400, "bad_value", "order_by")
    assert error["allowed"] == ["size", "reach", "virality", "growth"]
    assert (await client.get(url, params={"limit": 101}, headers=AUTH)).status_code == 422


async def test_a_cascade_tree_pages_breadth_first_with_exact_descendants(
    client: httpx.AsyncClient, loaded: Expected
) -> None:
    seen_flags: set[str] = set()
    for root, oracle in loaded.cascades.items():
        stats = oracle.stats()
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 13}
            if cursor:
                params["cursor"] = cursor
            body = await get(client, f"/v1/cascades/{root}", **params)
            assert (body["root"], body["campaign"]) == (root, oracle.campaign)
            page_ids = {n["id"] for n in body["nodes"]}
            assert all(e["target"] in page_ids for e in body["edges"])
            nodes += body["nodes"]
            edges += body["edges"]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        ids = [n["id"] for n in nodes]
        assert len(ids) == len(set(ids)) == len(loaded.parents[root]), "each node exactly once"
        order = [(n["depth"], n["ts"], n["id"]) for n in nodes]
        assert order == sorted(order), "breadth-first: (depth, ts, id)"
        seen_flags.update(f for n in nodes for f in n["flags"])
        descendants = loaded.descendants(root)
        for node in nodes:
            index = oracle.index[int(node["id"], 16)]
            flags = oracle.flags[index]
            assert node == {
                "id": node["id"],
                "parent": loaded.parents[root][node["id"]],
                "depth": oracle.depth[index],
                "channel": oracle.channels[oracle.channel[index]],
                "ts": iso_ms(oracle.ts[index]),
                "clicks": oracle.clicks[index],
                "conversions": oracle.conversions[index],
                "descendants": descendants[node["id"]],
                "state": "attached",
                "flags": [name for bit, name in ((FLAG_SAME_ORIGIN, "same_origin"),
                                                 (FLAG_BOT, "bot")) if flags & bit],
            }  # fmt: skip
            # The consumer's own subtree sizes agree.
            assert node["descendants"] == oracle.size[index] - 1
        assert sorted((e["source"], e["target"]) for e in edges) == sorted(
            (p, n) for n, p in loaded.parents[root].items() if p is not None
        )
        assert body["stats"] == expected_stats(stats)
        assert body["forecast"] == {
            "final_size": stats.forecast_size,
            "method": stats.forecast_method,
            "infectiousness": pytest.approx(stats.infectiousness, rel=1e-9),
        }
    assert seen_flags == {"same_origin", "bot"}


def expected_stats(s: Any) -> dict[str, Any]:
    floats = ("branching", "growth_per_min", "virality")
    out: dict[str, Any] = {
        name: getattr(s, name)
        for name in ("size", "tree_size", "pending", "orphans", "reach", "depth", "breadth",
                     "max_breadth", "clicks", "conversions", "wiener", "valid_nodes",
                     "valid_recruits", "self_referrals", "same_origin", "inflated")
    }  # fmt: skip
    out.update({name: pytest.approx(getattr(s, name), rel=1e-9) for name in floats})
    out["reproduction"] = [pytest.approx(r, rel=1e-9) for r in s.reproduction]
    out["doubling_s"] = None if s.doubling_s is None else pytest.approx(s.doubling_s, rel=1e-9)
    out["first_ts"], out["last_ts"] = iso_ms(s.first_ts), iso_ms(s.last_ts)
    out["channel_mix"] = [{"generation": g, "channel": c, "shares": n} for g, c, n in s.channel_mix]
    return out


async def test_orphans_and_pending_nodes_count_below_the_nodes_they_hang_from(
    migrated: ClickHouse, tmp_path: Path
) -> None:
    """Two branches whose top share never arrives: one expires into orphans (its
    children attach under the orphan), the other is still pending."""
    from consumers.cascades.state import Share
    from tests.cascadehelpers import tree_shares, wire_event

    rng = random.Random(11)
    #        0
    #      1    2          3 (lost)         6 (lost)
    #           |          4   5            7
    #                      8                8b
    parents = [-1, 0, 0, 0, 3, 3, 0, 6, 4, 7]
    shares = tree_shares(parents, rng, campaign=CAMPAIGN, start_ms=BASE_MS)
    shares = [s._replace(ts=BASE_MS + i * 1000) for i, s in enumerate(shares)]
    lost = {shares[3].node, shares[6].node}
    kept = [s for s in shares if s.node not in lost]
    # Branch under 3 arrives early and expires (orphan_after 60 s of event time);
    # branch under 6 arrives last and stays pending.
    early = [s for s in kept if s.node != shares[7].node and s.node != shares[9].node]
    # After the orphan cutoff of the tail's time (200 s - 60 s): they stay pending.
    late = [shares[7]._replace(ts=BASE_MS + 190_000), shares[9]._replace(ts=BASE_MS + 195_000)]
    top = shares[0]
    tail = Share(str(uuid.uuid4()), CAMPAIGN, top.root, rng.getrandbits(63) | 1, top.node, 1,
                 BASE_MS + 200_000, rng.getrandbits(63))  # fmt: skip
    from app.settings import CascadeSettings

    writer = Writer(migrated, CascadeSettings(orphan_after_s=60))
    await writer.write([wire_event(s) for s in [*early, tail]])
    await writer.write([wire_event(s) for s in late])
    root = f"{shares[0].root:016x}"
    hexes = [f"{s.node:016x}" for s in shares]
    async with running_app(settings_for(tmp_path), clickhouse=migrated) as (_, client):
        body = await get(client, f"/v1/cascades/{root}", limit=100)
    by_id = {n["id"]: n for n in body["nodes"]}
    assert set(by_id) == {*(f"{s.node:016x}" for s in kept), f"{tail.node:016x}"}
    state = {i: by_id[hexes[i]]["state"] for i in (0, 1, 4, 5, 7, 8, 9)}
    assert state == {0: "attached", 1: "attached", 4: "orphan", 5: "orphan", 7: "pending",
                     8: "attached", 9: "pending"}  # fmt: skip
    below = {i: by_id[hexes[i]]["descendants"] for i in (0, 4, 5, 7, 8, 9)}
    # The root: 1, 2 and the tail; orphan 4: its child 8; pending 7: pending 9 under it.
    assert below == {0: 3, 4: 1, 5: 0, 7: 1, 8: 0, 9: 0}
    edges = {(e["source"], e["target"]) for e in body["edges"]}
    assert (hexes[4], hexes[8]) in edges and (hexes[7], hexes[9]) in edges
    assert not any(target in (hexes[4], hexes[5], hexes[7]) for _, target in edges)
    assert by_id[hexes[4]]["parent"] == hexes[3]  # the parent it waits for, not in the tree
    assert body["stats"]["orphans"] == 2 and body["stats"]["pending"] == 2


async def test_unknown_or_malformed_roots_and_cursors(
    client: httpx.AsyncClient, loaded: Expected
) -> None:
    resp = await client.get("/v1/cascades/00000000000000ff", headers=AUTH)
    assert_error(resp, 404, "not_found", "root")
    assert (await client.get("/v1/cascades/XYZ", headers=AUTH)).status_code == 422
    root = next(iter(loaded.cascades))
    first = await get(client, f"/v1/cascades/{root}", limit=2)
    good = first["next_cursor"]
    payload = orjson.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    other_root = list(loaded.cascades)[1]
    for cursor in ["%%%", forged({**payload, "d": -1}), forged({**payload, "n": 5}),
                   forged({**payload, "t": 1.5}), forged({"x": 1})]:  # fmt: skip
        resp = await client.get(f"/v1/cascades/{root}", params={"cursor": cursor}, headers=AUTH)
        assert_error(resp, 400, "bad_cursor", "cursor")
    resp = await client.get(f"/v1/cascades/{other_root}", params={"cursor": good}, headers=AUTH)
    assert_error(resp, 400, "bad_cursor", "cursor")
    assert (await client.get(f"/v1/cascades/{root}?limit=5001", headers=AUTH)).status_code == 422


async def test_the_tree_cache_gives_the_same_pages(
    migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> None:
    root = max(loaded.cascades, key=lambda r: loaded.cascades[r].live)
    pages = {}
    for size in (0, 4):
        settings = settings_for(tmp_path / str(size), tree_cache_size=size)
        async with running_app(settings, clickhouse=migrated) as (app, client):
            first = await get(client, f"/v1/cascades/{root}", limit=50)
            second = await get(client, f"/v1/cascades/{root}", limit=50,
                               cursor=first["next_cursor"])  # fmt: skip
            pages[size] = (first, second)
            assert len(app.state.vt.query_caches.trees) == min(size, 1)
    assert pages[0] == pages[4]


# ---- spreaders, channels, funnel -------------------------------------------------------


@pytest.mark.parametrize("by", ["descendants", "children"])
async def test_spreaders_rank_unflagged_nodes(
    client: httpx.AsyncClient, loaded: Expected, by: str
) -> None:
    body = await get(client, f"/v1/campaigns/{CAMPAIGN}/spreaders", by=by, limit=15)
    ranked = []
    for root, oracle in loaded.cascades.items():
        if oracle.campaign != CAMPAIGN:
            continue
        values = oracle.size if by == "descendants" else oracle.children
        offset = 1 if by == "descendants" else 0
        top = sorted(
            ((values[i] - offset, oracle.ids[i]) for i in range(oracle.live)
             if values[i] - offset > 0 and not oracle.flags[i] & 3),
            reverse=True,
        )[:10]  # fmt: skip
        ranked += [(count, node, root) for count, node in top]
    ranked.sort(reverse=True)
    assert body == {
        "campaign": CAMPAIGN,
        "by": by,
        "spreaders": [{"node": f"{n:016x}", "root": r, "count": c} for c, n, r in ranked[:15]],
    }


async def test_spreaders_refuse_an_unknown_ranking(client: httpx.AsyncClient) -> None:
    resp = await client.get(f"/v1/campaigns/{CAMPAIGN}/spreaders?by=reach", headers=AUTH)
    assert assert_error(resp, 400, "bad_value", "by")["allowed"] == ["descendants", "children"]


@pytest.mark.parametrize("window", ["all", "hours", "minutes"])
async def test_channels_and_funnel_count_distinct_events(
    client: httpx.AsyncClient, loaded: Expected, window: str
) -> None:
    bounds = {"all": None, "hours": (BASE_S + 3600, BASE_S + 7200),
              "minutes": (BASE_S + 600, BASE_S + 5430)}[window]  # fmt: skip
    params = {} if bounds is None else {"from": when(bounds[0]), "to": when(bounds[1])}
    inside = [
        e for e in loaded.of(CAMPAIGN)
        if bounds is None or bounds[0] - bounds[0] % 60 <= e["ts"] // 1000 < bounds[1]
        + (-bounds[1] % 60)
    ]  # fmt: skip
    channels = await get(client, f"/v1/campaigns/{CAMPAIGN}/channels", **params)
    names = {"view": "views", "click": "clicks", "share": "shares", "convert": "conversions"}
    want: dict[str, Counter[str]] = {}
    for e in inside:
        if e["type"] in names:
            want.setdefault(e["channel"] or "", Counter())[names[e["type"]]] += 1
    assert channels["channels"] == [
        {"channel": c, **{n: want[c][n] for n in names.values()}} for c in sorted(want)
    ]
    mix: Counter[tuple[int, str]] = Counter()
    for oracle in loaded.cascades.values():
        if oracle.campaign == CAMPAIGN:
            for g, c, n in oracle.stats().channel_mix:
                mix[(g, c)] += n
    assert channels["generations"] == [
        {"generation": g, "channel": c, "shares": n} for (g, c), n in sorted(mix.items())
    ]

    funnel = await get(client, f"/v1/campaigns/{CAMPAIGN}/funnel", **params)
    previous = None
    steps = []
    for step in ("view", "click", "share", "convert"):
        of_step = [e for e in inside if e["type"] == step]
        visitors = len({e["visitor"] for e in of_step} - {None})
        rate = visitors / previous if previous else None
        steps.append({"step": step, "events": len(of_step), "visitors": visitors, "rate": rate})
        previous = visitors
    assert funnel == {"campaign": CAMPAIGN, "steps": steps}


async def test_channels_and_funnel_refuse_bad_ranges(client: httpx.AsyncClient) -> None:
    for path in ("channels", "funnel"):
        url = f"/v1/campaigns/{CAMPAIGN}/{path}"
        resp = await client.get(url, params={"from": "2026-01-02T00:00:00"}, headers=AUTH)
        assert_error(resp, 400, "bad_time", "from")
        resp = await client.get(
            url,
            params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            headers=AUTH,
        )
        assert_error(resp, 400, "bad_range", "from")


# ---- auth ------------------------------------------------------------------------------

CAMPAIGN_ROUTES = ["summary", "timeseries", "cascades", "spreaders", "channels", "funnel",
                   "buzz", "alerts", "alerts/a1"]  # fmt: skip


@pytest.fixture
async def keyed(
    database_url: str, migrated: ClickHouse, loaded: Expected, tmp_path: Path
) -> AsyncIterator[tuple[Api, Expected]]:
    await migrate.upgrade(database_url)
    key = await bootstrap_admin_key(database_url)
    settings = make_settings(
        tmp_path, database={"url": database_url}, query={"read_keys": READ_KEY}
    )
    async with running_app(settings, clickhouse=migrated) as (_, http):
        api = Api(http, key)
        await insert_alerts(migrated)
        await api.campaign(CAMPAIGN)
        await api.campaign(OTHER)
        yield api, loaded


async def read(api: Api, path: str, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return await api.client.get(path, headers=headers)


async def test_keys_read_only_their_campaigns(keyed: tuple[Api, Expected]) -> None:
    api, loaded = keyed
    spring = await api.new_key(["read"], [CAMPAIGN])
    unbound = await api.new_key(["read"])
    admin = await api.new_key(["admin"], [CAMPAIGN])
    write_only = await api.new_key(["write"], [CAMPAIGN])
    for route in CAMPAIGN_ROUTES:
        path = f"/v1/campaigns/{CAMPAIGN}/{route}"
        for key in (READ_KEY, spring, unbound, admin):
            resp = await read(api, path, key)
            assert resp.status_code == 200, (route, resp.text)
        other = f"/v1/campaigns/{OTHER}/{route}"
        for key in (spring, admin):
            assert_error(await read(api, other, key), 403, "forbidden", "campaign")
        assert (await read(api, other, unbound)).status_code in (200, 404)
        assert_error(await read(api, path, write_only), 403, "forbidden", "authorization")
        assert_error(await read(api, path, None), 401, "missing_key", "authorization")
        for wrong in ("vt_AAAAAAAA_" + "B" * 32, "not-a-key-at-all-0123"):
            resp = await read(api, path, wrong)
            assert_error(resp, 401, "bad_key", "authorization")
            assert resp.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # A cascade answers only to a key that can read its campaign; others get 404.
    mine = next(r for r, c in loaded.cascades.items() if c.campaign == CAMPAIGN)
    theirs = next(r for r, c in loaded.cascades.items() if c.campaign == OTHER)
    assert (await read(api, f"/v1/cascades/{mine}", spring)).status_code == 200
    for key in (spring, admin):
        assert_error(await read(api, f"/v1/cascades/{theirs}", key), 404, "not_found", "root")
    assert (await read(api, f"/v1/cascades/{theirs}", unbound)).status_code == 200
    assert_error(await read(api, f"/v1/cascades/{mine}", write_only), 403, "forbidden")


async def test_a_revoked_key_is_refused(keyed: tuple[Api, Expected]) -> None:
    api, _ = keyed
    path = f"/v1/campaigns/{CAMPAIGN}/summary"
    key = await api.new_key(["read"], [CAMPAIGN])
    assert (await read(api, path, key)).status_code == 200  # now cached
    listed = await api.ok("GET", "/keys")
    key_id = next(k["id"] for k in listed if key.startswith(k["prefix"] + "_"))
    await api.ok("DELETE", f"/keys/{key_id}")
    assert_error(await read(api, path, key), 401, "bad_key", "authorization")


async def test_control_plane_keys_need_the_database_operator_keys_do_not(
    migrated: ClickHouse, tmp_path: Path
) -> None:
    down = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'dir' / 'control.db'}"
    settings = make_settings(tmp_path, database={"url": down}, query={"read_keys": READ_KEY})
    async with running_app(settings, clickhouse=migrated) as (_, client):
        path = f"/v1/campaigns/{CAMPAIGN}/summary"
        resp = await client.get(path, headers={"authorization": "Bearer vt_AAAAAAAA_" + "C" * 32})
        assert_error(resp, 503, "db_unavailable", "authorization")
        assert resp.headers["retry-after"]
        assert (await client.get(path, headers=AUTH)).status_code == 200


def test_iso_formats() -> None:
    assert iso_s(0) == "1970-01-01T00:00:00Z"
    assert iso_ms(1_790_000_000_123) == "2026-09-21T14:13:20.123Z"
    assert math.isclose(datetime.fromisoformat(iso_ms(1_790_000_000_123)).timestamp(),
                        1_790_000_000.123)  # fmt: skip

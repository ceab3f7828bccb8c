"""``viraltrace simulate``: the pure planner, the HTTP driver against the real app, and the
command against a real ``viraltrace up`` (chdb, the in-process bus, SQLite).

The planner's tests check the statistics it promises (mean offspring R, click-through,
negative share, language mix, the buzz episode) on large plans, and that the
project's own scorer reads the comments as they are meant. The driver's run against
the app in process (real routes, real in-process bus) and the command's run
against a ``viraltrace up`` subprocess check what reaches the server.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from app.bus.memory import MemoryBus
from app.cli import cli
from app.db import migrate as alembic
from app.db.keys import create_key
from app.db.session import create_engine, sessionmaker
from app.enrich import classify_user_agent
from app.sentiment import default_scorer
from app.simulate.cli import run_shape
from app.simulate.driver import Driver, dead_letters, user_agent
from app.simulate.plan import Event, Plan, Share, SimConfig, Touch, followers, make_plan
from app.simulate.texts import LABELS, LANGUAGES, templates
from app.storage.clickhouse import ClickHouse
from tests.apphelpers import events as published
from tests.apphelpers import running_app
from tests.conftest import make_settings
from tests.procs import ApiProcess
from tests.test_embedded import up_env

# -- the planner ---------------------------------------------------------------


def shares_of(plan: Plan) -> list[Share]:
    return [a for a in plan.actions if isinstance(a, Share)]


def buzz_of(plan: Plan) -> list[Event]:
    return [a for a in plan.actions if isinstance(a, Event) and a.label is not None]


@pytest.mark.parametrize("r", [0.5, 0.9])
def test_shares_have_r_children_on_average(r: float) -> None:
    tau_s = 10.0
    config = SimConfig(
        span_s=3_600, tau_s=tau_s, r=r, seeds=400, max_events=10**7, buzz_fraction=0.0, seed=1
    )
    plan = make_plan(config)
    shares = shares_of(plan)
    children = Counter(s.parent for s in shares if s.parent is not None)
    # Shares long before the end of the span have had all their children.
    settled = [
        s for s in shares if s.parent is not None and s.at_ms < config.span_ms - 30 * tau_s * 1000
    ]
    counts = [children[s.node] for s in settled]
    assert len(counts) > 1_000
    mean = statistics.fmean(counts)
    standard_error = statistics.stdev(counts) / len(counts) ** 0.5
    assert abs(mean - r) < 4 * standard_error, (mean, r, standard_error)
    # Seeds have followers: their posts draw more reshares than a plain share.
    roots = [s for s in shares if s.parent is None]
    assert statistics.fmean(children[s.node] for s in roots) > r


def test_views_clicks_and_conversions_follow_the_funnel() -> None:
    config = SimConfig(
        span_s=3_600, r=0.8, seeds=300, max_events=10**7, buzz_fraction=0.0,
        click_through=0.2, conversion_rate=0.25, views_per_share=10, seed=2,
    )  # fmt: skip
    counts = make_plan(config).count_by_type()
    assert counts["view"] / counts["share"] == pytest.approx(10, rel=0.25)  # seeds see more
    assert counts["click"] / counts["view"] == pytest.approx(0.2, abs=0.02)
    assert counts["convert"] / counts["click"] == pytest.approx(0.25, abs=0.04)


def test_followers_are_heavy_tailed() -> None:
    import random

    rng = random.Random(3)
    config = SimConfig(followers_min=2_000, followers_alpha=1.5)
    drawn = sorted(followers(rng, config) for _ in range(20_000))
    median = statistics.median(drawn)
    assert drawn[0] >= 2_000
    assert median == pytest.approx(2_000 * 2 ** (1 / 1.5), rel=0.05)
    assert drawn[-1] > 100 * median  # a few seeds are huge


def test_negative_share_language_mix_and_channel_mix() -> None:
    config = SimConfig(
        span_s=7_200, max_events=40_000, buzz_fraction=0.5, negative_share=0.3,
        languages=(("en", 4), ("ms", 2), ("id", 2), ("ar", 1), ("no", 1)),
        channels=(("whatsapp", 3), ("email", 1)), seed=4,
    )  # fmt: skip
    plan = make_plan(config)
    buzz = buzz_of(plan)
    assert len(buzz) > 15_000
    assert sum(e.label == "negative" for e in buzz) / len(buzz) == pytest.approx(0.3, abs=0.02)
    comments = [e for e in buzz if e.type == "comment"]
    languages = Counter(e.lang for e in comments)
    for lang, weight in config.languages:
        assert languages[lang] / len(comments) == pytest.approx(weight / 10, abs=0.02), lang
    channels = Counter(s.channel for s in shares_of(plan))
    assert set(channels) == {"whatsapp", "email"}
    assert channels["whatsapp"] / sum(channels.values()) == pytest.approx(0.75, abs=0.08)


def test_the_buzz_episode_doubles_the_stream_and_turns_it_negative() -> None:
    config = SimConfig(
        span_s=3_600, max_events=20_000, buzz_episode=True, buzz_minutes=10, seed=5,
        negative_share=0.1, buzz_negative_share=0.75,
    )  # fmt: skip
    plan = make_plan(config)
    assert plan.buzz_window_ms is not None
    start, end = plan.buzz_window_ms
    assert (start, end) == (round(0.7 * config.span_ms), round(0.7 * config.span_ms) + 600_000)
    inside = [e for e in buzz_of(plan) if start <= e.at_ms < end]
    outside = [e for e in buzz_of(plan) if not start <= e.at_ms < end]
    rate_in = len(inside) / (end - start)
    rate_out = len(outside) / (config.span_ms - (end - start))
    assert rate_in / rate_out == pytest.approx(2.0, rel=0.15)
    negative = sum(e.label == "negative" for e in inside) / len(inside)
    assert negative == pytest.approx(0.75, abs=0.05)
    assert sum(e.label == "negative" for e in outside) / len(outside) == pytest.approx(
        0.1, abs=0.02
    )


def test_the_plan_is_seeded_and_consistent() -> None:
    config = SimConfig(span_s=1_800, max_events=3_000, buzz_episode=True, seed=6)
    plan = make_plan(config)
    assert make_plan(config) == plan
    assert make_plan(SimConfig(span_s=1_800, max_events=3_000, buzz_episode=True, seed=7)) != plan
    assert 0.9 * config.max_events <= len(plan.actions) <= config.max_events
    seen: dict[int, Share] = {}
    last = 0
    for action in plan.actions:
        assert last <= action.at_ms <= config.span_ms
        last = action.at_ms
        if isinstance(action, Share):
            if action.parent is None:
                assert action.depth == 0
            else:  # a parent's share always comes first: its token is needed
                assert seen[action.parent].depth == action.depth - 1
            seen[action.node] = action
        elif action.node is not None:
            assert seen[action.node].campaign == action.campaign
    assert {seed.node for seed in plan.seeds} == {s.node for s in seen.values() if s.depth == 0}
    assert max(s.depth for s in seen.values()) >= 2


def test_seeds_share_the_budget_when_their_number_is_fixed() -> None:
    config = SimConfig(
        span_s=600, max_events=1_000, seeds=4, buzz_fraction=0.0, seed=8, followers_min=50_000
    )
    plan = make_plan(config)
    assert len(plan.seeds) == 4
    root_of: dict[int, int] = {}
    for share in shares_of(plan):
        root_of[share.node] = share.node if share.parent is None else root_of[share.parent]
    per_seed = Counter(root_of[a.node] for a in plan.actions if a.node is not None)
    assert set(per_seed) == {seed.node for seed in plan.seeds}
    # Big seeds: every cascade would outgrow its quarter, and keeps its first 250 actions.
    assert all(count == 250 for count in per_seed.values()), per_seed


def test_the_scorer_reads_the_comments_as_meant_in_every_language() -> None:
    """Texts built from the shipped templates, scored as the buzz consumer scores a
    campaign without configured languages (detection among all five)."""
    import random

    scorer = default_scorer()
    rng = random.Random(9)
    for lang in LANGUAGES:
        for label in LABELS:
            texts = [templates(lang).make(rng, label) for _ in range(300)]
            scores = [scorer.score(text) for text in texts]
            if label == "neutral":
                right = sum(s.label != "negative" for s in scores)
            else:
                right = sum(s.label == label for s in scores)
            assert right / len(texts) >= 0.9, (lang, label, right)
            detected = sum(s.lang == lang for s in scores)
            assert detected / len(texts) >= 0.9, (lang, label, detected)


def test_unknown_language_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fr"):
        templates("fr")
    with pytest.raises(ValueError, match="languages, .*negative_share"):
        SimConfig(negative_share=1.5, languages=(("fr", 1.0),))


def test_run_shape() -> None:
    default = run_shape(None, None, rate=50, speed=1)
    assert (default.duration_s, default.budget, default.span_s) == (60, 2_700, 60)
    assert default.deadline_s == 75
    events_only = run_shape(None, 900, rate=50, speed=30)
    assert events_only.budget == 900 and events_only.deadline_s is None
    assert events_only.span_s == pytest.approx(20 * 30)
    with pytest.raises(typer.BadParameter, match="30 days"):
        run_shape(3_600, None, rate=50, speed=24 * 31)


def test_recipients_look_like_distinct_browsers() -> None:
    agents = [user_agent(n) for n in range(0, 40_000, 3)]
    assert len(set(agents)) == len(agents)
    for agent in agents[:400]:
        info = classify_user_agent(agent)
        assert not info.bot and not info.preview and info.browser is not None, agent


# -- the command's input errors --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--languages", "en,fr"], "--languages"),
        (["--channels", "whatsapp=lots"], "--channels"),
        (["--campaign", "Not A Slug"], "--campaign"),
        (["--negative-share", "2"], "--negative-share"),
        (["--speed", "0.5"], "--speed"),
        (["--link", "other=go"], "--link"),
    ],
)
def test_bad_options_get_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unreachable_instance_is_a_clear_error() -> None:
    from tests.procs import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["simulate", "--url", url, "--events", "10"])
    assert result.exit_code == 1, result.output
    assert f"cannot reach {url}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


class _Server(ThreadingHTTPServer):
    block_on_close = False  # a stalled handler must not hold up the test's end


@contextmanager
def web_server(delay_s: float = 0.0) -> Iterator[str]:
    """A plain web server (not viraltrace) that answers every GET with a page,
    after ``delay_s``; yields its URL."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>welcome</html>")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *_: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_another_service_on_the_port_is_refused() -> None:
    """A web server that answers 200 to everything would swallow the pixel's hits."""
    with web_server() as url:
        result = CliRunner().invoke(cli, ["simulate", "--url", url, "--events", "10"])
    assert result.exit_code == 1, result.output
    assert "is it viraltrace?" in result.output


async def test_a_stop_is_prompt_when_the_server_stalls() -> None:
    """Requests that hang get the grace, then are abandoned and counted."""
    plan = small_plan(max_events=100)
    with web_server(delay_s=30) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            stop = asyncio.Event()
            run = asyncio.create_task(Driver(plan, client, speed=60, rate=10_000).run(stop))
            await asyncio.sleep(1)
            stop.set()
            started = time.monotonic()
            stats = await asyncio.wait_for(run, 10)
    assert time.monotonic() - started < 5
    assert stats.sent_total == 0
    assert stats.errors["interrupted (may have arrived)"] > 0
    assert stats.accounted == stats.planned


# -- the driver against the app in process -----------------------------------------


def small_plan(**overrides: Any) -> Plan:
    values: dict[str, Any] = {"span_s": 60.0, "max_events": 300, "seed": 10, **overrides}
    return make_plan(SimConfig(**values))


async def test_the_driver_sends_the_plan_through_the_public_api(tmp_path: Path) -> None:
    plan = small_plan(buzz_episode=True, buzz_minutes=0.2)
    async with running_app(make_settings(tmp_path)) as (app, client):
        before = int(time.time() * 1000)
        stats = await Driver(plan, client, speed=30, rate=10_000).run()
        sent = published(app)
    assert stats.accounted == stats.planned == len(plan.actions)
    assert stats.sent == plan.count_by_type() and stats.sent_total == len(plan.actions)
    assert stats.requests < len(plan.actions)  # comments and reactions go in batches
    assert Counter(e["type"] for e in sent) == plan.count_by_type()
    assert len({e["event_id"] for e in sent}) == len(sent)
    assert not any(e["bot"] for e in sent)
    # Event times follow the plan, compressed: the last one is about now, none is later
    # than its arrival, the first (the first seed's share) on a whole minute.
    assert all(e["ts"] <= e["received_at"] for e in sent)
    first = min(e["ts"] for e in sent)
    assert first % 60_000 == 0 and first >= before - plan.config.span_ms - 60_000
    # The cascades keep their shape: depths as planned, every share under a sent share.
    shares = [e for e in sent if e["type"] == "share"]
    assert Counter(e["depth"] for e in shares) == Counter(s.depth for s in shares_of(plan))
    nodes = {e["node"] for e in shares}
    assert all(e["parent"] in nodes for e in shares if e["depth"] > 0)
    assert stats.max_depth == max(s.depth for s in shares_of(plan))
    assert stats.cascades == len(plan.seeds)
    # Every view and click is credited to a share; recipients are distinct visitors.
    touches = [e for e in sent if e["type"] in ("view", "click")]
    assert all(e["node"] in nodes and e["visitor"] for e in touches)
    recipients = {a.recipient for a in plan.actions if isinstance(a, Touch)}
    assert len({e["visitor"] for e in touches}) == len(recipients)
    texts = Counter(e["text"] for e in sent if e["type"] == "comment")
    assert texts == Counter(a.text for a in plan.actions if isinstance(a, Event) and a.text)
    assert_in_order([(e["received_at"], e["ts"]) for e in sent if e["type"] in BATCHED])


BATCHED = ("comment", "reaction", "convert")


def assert_in_order(arrivals: list[tuple[int, int]]) -> None:
    """Batched events arrive in event-time order: every batch (one arrival time) is
    newer than the ones before it. The alerts' windows follow the newest event time."""
    batches: dict[int, list[int]] = {}
    for received, ts in arrivals:
        batches.setdefault(received, []).append(ts)
    newest = 0
    for received in sorted(batches):
        assert min(batches[received]) >= newest, (received, newest)
        newest = max(batches[received])


async def test_the_driver_backs_off_on_429_and_counts_what_the_server_dead_letters(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, tracking={"rate_ip_per_s": 10, "rate_ip_burst": 5})
    plan = small_plan(max_events=120, buzz_fraction=0.5)
    async with running_app(settings) as (app, client):
        before = await dead_letters(client)
        stats = await Driver(plan, client, speed=60, rate=10_000, concurrency=16).run()
        app.state.vt.require_pixels().drain()
        after = await dead_letters(client)
        sent = published(app)
    assert stats.throttled[429] > 0
    assert stats.accounted == stats.planned
    # Shares and batched events wait out their 429s and all arrive...
    for kind in ("share", "comment", "reaction"):
        assert stats.sent[kind] == stats.planned_by_type[kind], kind
        assert sum(e["type"] == kind for e in sent) == stats.planned_by_type[kind], kind
    # ...while the pixel answers 200 whatever happens: what it refused shows in /metrics.
    assert before is not None and after is not None
    refused = (after - before)["rate_limited"]
    touches = sum(e["type"] in ("view", "click") for e in sent)
    planned = stats.planned_by_type["view"] + stats.planned_by_type["click"]
    assert refused > 0 and touches + refused == planned


async def test_the_driver_retries_503_until_the_bus_has_room(tmp_path: Path) -> None:
    """A full in-process bus answers 503 + Retry-After; a consumer frees it a moment later."""
    settings = make_settings(tmp_path)
    bus = MemoryBus(partitions=2, max_records=15)
    drain = bus.consumer("drain")
    drain.subscribe([settings.kafka.topic])

    async def consume_later() -> None:
        await asyncio.sleep(1.5)
        while True:
            batch = await drain.getmany(timeout_ms=100)
            await drain.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})

    plan = small_plan(max_events=60, buzz_fraction=0.3)
    async with running_app(settings, bus=bus) as (app, client):
        consumer = asyncio.create_task(consume_later())
        try:
            stats = await Driver(plan, client, speed=60, rate=10_000).run()
        finally:
            consumer.cancel()
    assert stats.throttled[503] > 0
    assert stats.accounted == stats.planned
    assert stats.sent["share"] == stats.planned_by_type["share"]
    assert not stats.errors and not stats.skipped


async def test_a_stop_leaves_every_event_accounted_for(tmp_path: Path) -> None:
    plan = small_plan(max_events=400)
    async with running_app(make_settings(tmp_path)) as (_, client):
        stop = asyncio.Event()
        driver = Driver(plan, client, speed=1, rate=10_000)
        run = asyncio.create_task(driver.run(stop))
        await asyncio.sleep(3)
        stop.set()
        stats = await asyncio.wait_for(run, 10)
    assert 0 < stats.sent_total < stats.planned
    assert stats.not_sent > 0
    assert stats.accounted == stats.planned


async def test_write_keys_and_tracked_links(tmp_path: Path) -> None:
    """A campaign that requires a write key refuses the batch without one (counted as
    rejected, by reason) and takes it with one; clicks go through the tracked link."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'control.db'}"
    await alembic.upgrade(url)
    engine = create_engine(url)
    async with sessionmaker(engine)() as session:
        admin, _ = await create_key(session, ["admin"], [])
        await session.commit()
    await engine.dispose()
    settings = make_settings(tmp_path, database={"url": url}, tracking={"links_cache_ttl_s": 0.2})
    async with running_app(settings) as (app, client):
        auth = {"authorization": f"Bearer {admin}"}
        body = {"slug": "locked", "name": "locked", "require_write_key": True}
        assert (await client.post("/v1/admin/campaigns", json=body, headers=auth)).is_success
        link = {"slug": "go", "campaign": "locked", "destination": "https://shop.example/x"}
        assert (await client.post("/v1/admin/links", json=link, headers=auth)).is_success
        key_body = {"scopes": ["write"], "campaigns": ["locked"]}
        made = await client.post("/v1/admin/keys", json=key_body, headers=auth)
        write_key = made.json()["key"]
        state = app.state.vt

        def refreshed() -> bool:
            return "locked" in state.write_key_campaigns and state.links.get("go") is not None

        async with asyncio.timeout(5):
            while not refreshed():  # noqa: ASYNC110 - polls the app's refresher
                await asyncio.sleep(0.05)
        plan = small_plan(campaigns=("locked",), max_events=150, buzz_fraction=0.4)
        refused = await Driver(plan, client, speed=60, rate=10_000).run()
        taken = await Driver(
            plan, client, speed=60, rate=10_000, write_key=write_key, links={"locked": "go"}
        ).run()
        sent = published(app)
    batched = sum(plan.count_by_type()[kind] for kind in ("comment", "reaction", "convert"))
    assert sum(refused.rejected.values()) == batched
    assert set(refused.rejected) <= {
        f"{k}: unauthorized" for k in ("comment", "reaction", "convert")
    }
    assert taken.sent_total == taken.planned and not taken.rejected
    clicks = [e for e in sent if e["type"] == "click" and e["source"] == "link"]
    assert len(clicks) == plan.count_by_type()["click"]


# -- the command against `viraltrace up` ---------------------------------------------


@pytest.mark.clickhouse
def test_simulate_against_viraltrace_up(tmp_path: Path) -> None:
    """``viraltrace up`` with its defaults; ``viraltrace simulate`` 20 s at speed 90 (30
    minutes of event time), half the events comments and reactions, with a buzz
    episode. The read API shows every sent event,
    comments in the five languages and the negative jump; the negative spike alert
    fires; ``cascade_stats`` holds cascades of depth 2 or more."""
    data_dir = tmp_path / "up"
    api = ApiProcess(up_env(), tmp_path / "up.log", args=("up", "--data-dir", str(data_dir)))
    api.start()
    report = tmp_path / "report.json"
    try:
        key = (data_dir / "read-key").read_text().strip()
        auth = {"authorization": f"Bearer {key}"}
        # In process (the CLI's own code path): a second interpreter would spend seconds
        # importing on a busy machine.
        run = CliRunner().invoke(
            cli,
            ["simulate", "--url", api.url, "--campaign", "sim", "--duration", "20",
             "--speed", "90", "--buzz-episode", "--comment-fraction", "0.5", "--seed", "11",
             "--report", str(report)],
        )  # fmt: skip
        assert run.exit_code == 0, run.output
        assert run.exception is None or isinstance(run.exception, SystemExit), run.exception
        assert "simulation summary" in run.output
        result = json.loads(report.read_text())
        assert result["sent"] == result["planned"], result
        assert not result["failed"] and not result["rejected"] and not result["dead_lettered"]
        summary = f"{api.url}/v1/campaigns/sim/summary"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            counts = httpx.get(summary, headers=auth).json()["events"]
            if sum(counts.values()) == sum(result["sent"].values()):
                break
            time.sleep(0.2)
        assert {k: v for k, v in counts.items() if v} == result["sent"]

        start_ms, end_ms = result["event_time_ms"]
        buzz = httpx.get(
            f"{api.url}/v1/campaigns/sim/buzz", headers=auth,
            params={"from": iso(start_ms - 60_000), "to": iso(end_ms + 60_000)},
        ).json()["minutes"]  # fmt: skip
        languages: Counter[str] = Counter()
        for minute in buzz:
            languages.update(minute["languages"])
        assert set(LANGUAGES) <= set(languages), languages
        episode_start, episode_end = result["buzz_episode_ms"]

        def negative_share(inside: bool) -> float:
            chosen = [
                m for m in buzz
                if (episode_start <= ms(m["minute"]) + 30_000 < episode_end) == inside
            ]  # fmt: skip
            return float(sum(m["negative"] for m in chosen) / sum(m["volume"] for m in chosen))

        assert negative_share(True) > 0.5 > 0.2 > negative_share(False)

        alerts_url = f"{api.url}/v1/campaigns/sim/alerts"
        deadline = time.monotonic() + 10
        spikes: list[Any] = []
        while not spikes and time.monotonic() < deadline:
            alerts = httpx.get(alerts_url, headers=auth).json()
            spikes = [a for a in alerts if a["kind"] == "buzz.negative_spike"]
            time.sleep(0.2)
        assert spikes, alerts
        opened = ms(spikes[0]["opened_at"])
        assert episode_start <= opened < episode_end
    finally:
        assert api.proc is not None
        proc = api.proc
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        api.stop()
    with ClickHouse(f"chdb://{data_dir / 'clickhouse'}") as clickhouse:
        depths = clickhouse.query_rows(
            "SELECT root, max(depth), max(valid_nodes), max(tree_size), max(same_origin) "
            "FROM cascade_stats WHERE campaign = 'sim' GROUP BY root"
        )
        arrivals = clickhouse.query_rows(
            "SELECT toUnixTimestamp64Milli(received_at), toUnixTimestamp64Milli(ts) "
            "FROM events WHERE campaign = 'sim' AND type IN ('comment', 'reaction', 'convert')"
        )
    assert len(arrivals) == sum(result["sent"].get(kind, 0) for kind in BATCHED)
    assert_in_order(arrivals)
    assert len(depths) == len(result["seeds"])
    assert max(depth for _, depth, _, _, _ in depths) >= 2
    assert all(valid == size and same == 0 for _, _, valid, size, same in depths)


def iso(ms_since_epoch: int) -> str:
    return datetime.fromtimestamp(ms_since_epoch / 1000, UTC).isoformat()


def ms(value: str) -> int:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(parsed.timestamp() * 1000)

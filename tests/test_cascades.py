"""The cascades consumer end to end: real brokers, real ClickHouse (chdb).

Each cascade's events are produced shuffled (children before parents,
duplicates, clicks before their share), keyed by root so that Kafka keeps
their order within the cascade. An in-memory ``Cascade`` fed the same
sequence, checked against networkx in test_cascade_state.py, is the oracle:
the ``cascade_stats`` rows must equal it.
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from app.settings import Settings
from app.storage.cascades import campaign_cascades
from app.storage.clickhouse import ClickHouse
from consumers.base import ConsumerMetrics, KafkaTransport, run_all
from consumers.cascades.pipeline import STATS_COLUMNS
from consumers.cascades.runner import cascades_runner, run_cascades
from consumers.cascades.state import Cascade, CascadeStats, Share, Touch
from tests.cascadehelpers import cascade_workload, wiener_batch, wire_event
from tests.conftest import make_settings, require_env
from tests.kafkahelpers import consume, values
from tests.test_sink import PARTITIONS, committed, produce, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

CAMPAIGN = "launch"
FLOATS = {"branching", "growth_per_min", "doubling_s", "virality", "forecast_size",
          "infectiousness", "reproduction"}  # fmt: skip
_SELECT = ", ".join(
    f"toUnixTimestamp64Milli({c})" if c in ("first_ts", "last_ts") else c
    for c in STATS_COLUMNS
    if c != "written_at"
)
STATS_SQL = f"SELECT {_SELECT} FROM cascade_stats FINAL WHERE campaign = {{c:String}}"


def cascade_settings(
    tmp_path: Path, bootstrap: str, idempotence: bool, unique: str, **cascades: Any
) -> Settings:
    return make_settings(
        tmp_path,
        kafka={
            "bootstrap": bootstrap,
            "idempotence": idempotence,
            "topic": f"casc-{unique}",
            "dlq_topic": f"casc-dlq-{unique}",
            "signals_topic": f"casc-signals-{unique}",
        },
        consumer={
            "group_prefix": f"test-{unique}",
            "max_poll_records": 700,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.2,
        },
        cascades={
            "snapshot_interval_s": 0.3,
            "orphan_after_s": 120,
            "max_pending": 50,
            "virality_threshold": 2.0,
            "virality_min_size": 10,
            **cascades,
        },
    )


async def create_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap)
    await admin.start()
    try:
        k = settings.kafka
        await admin.create_topics(
            [NewTopic(t, PARTITIONS, 1) for t in (k.topic, k.dlq_topic, k.signals_topic)]
        )
    finally:
        await admin.close()


def messages_for(streams: list[list[Share | Touch]], seed: int) -> list[tuple[bytes, bytes]]:
    """Interleave the cascades at random, keeping each cascade's own order."""
    rng = random.Random(seed)
    cursors = [0] * len(streams)
    out = []
    while True:
        live = [i for i, s in enumerate(streams) if cursors[i] < len(s)]
        if not live:
            return out
        i = rng.choice(live)
        item = streams[i][cursors[i]]
        cursors[i] += 1
        out.append((f"{item.root:016x}".encode(), orjson.dumps(wire_event(item))))


def oracle(streams: list[list[Share | Touch]], settings: Settings) -> dict[str, CascadeStats]:
    cfg = settings.cascades
    expected = {}
    for stream in streams:
        cascade = Cascade(
            CAMPAIGN, stream[0].root, stream[0].ts,
            orphan_after_ms=int(cfg.orphan_after_s * 1000), max_pending=cfg.max_pending,
            forecast_tau_ms=cfg.forecast_tau_s * 1000,
        )  # fmt: skip
        for item in stream:
            if isinstance(item, Share):
                cascade.add_share(item)
            else:
                cascade.add_touch(item)
        stats = cascade.stats()
        expected[stats.root] = stats
    return expected


async def stored_stats(ch: ClickHouse) -> dict[str, dict[str, Any]]:
    names = [c for c in STATS_COLUMNS if c != "written_at"]
    rows = await ch.aquery_rows(STATS_SQL, {"c": CAMPAIGN})
    return {row[1]: dict(zip(names, row, strict=True)) for row in rows}


def assert_matches(got: dict[str, Any], want: CascadeStats) -> None:
    for name, value in got.items():
        expected = getattr(want, name)
        if name in FLOATS:
            if isinstance(expected, list):
                assert len(value) == len(expected), name
                pairs = list(zip(value, expected, strict=True))
            else:
                assert (value is None) == (expected is None), name
                pairs = [] if value is None else [(value, expected)]
            for a, b in pairs:
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (want.root, name, a, b)
        elif name in ("top_descendants", "top_children", "channel_mix"):
            assert [tuple(x) for x in value] == [tuple(x) for x in expected], (want.root, name)
        else:
            assert value == expected, (want.root, name, value, expected)


async def check_campaign_metrics(ch: ClickHouse, want: dict[str, CascadeStats]) -> None:
    """The per-campaign numbers equal sums over the oracle's cascades."""
    got = await campaign_cascades(ch, CAMPAIGN)
    stats = list(want.values())
    assert got.cascades == len(stats)
    assert got.shares == sum(s.size for s in stats)
    assert got.largest == max(s.size for s in stats)
    assert got.k_factor == sum(s.valid_recruits for s in stats) / sum(s.valid_nodes for s in stats)
    assert got.invitation_conversion == sum(s.conversions for s in stats) / sum(
        s.clicks for s in stats
    )
    for column, attribute in (
        ("top_descendants", "top_by_descendants"),
        ("top_children", "top_by_children"),
    ):
        merged = sorted(
            ((count, node, s.root) for s in stats for node, count in getattr(s, column)),
            reverse=True,
        )[:10]
        assert [(sp.count, sp.node, sp.root) for sp in getattr(got, attribute)] == merged
    mix: dict[tuple[int, str], int] = {}
    for s in stats:
        for generation, channel, count in s.channel_mix:
            mix[(generation, channel)] = mix.get((generation, channel), 0) + count
    assert got.channels_by_generation == [(g, c, n) for (g, c), n in sorted(mix.items())]
    assert sum(got.size_buckets.values()) == len(stats)
    assert got.size_buckets["1001+"] == 0


async def all_committed(settings: Settings, ends: dict[Any, int]) -> None:
    async def check() -> tuple[bool, Any]:
        got = await committed(settings, "cascades", settings.kafka.topic)
        seen = {tp: v for tp, v in got.items() if v is not None}
        return seen == ends, seen

    await wait_for(check, 90, "the cascades consumer to commit everything")


async def test_cascades_through_the_broker_equal_the_oracle(
    tmp_path: Path, broker: tuple[str, str, bool], unique: str, migrated: ClickHouse
) -> None:
    _, bootstrap, idempotence = broker
    settings = cascade_settings(tmp_path, bootstrap, idempotence, unique)
    await create_topics(settings)
    streams, trees = cascade_workload(seed=21)
    messages = messages_for(streams, seed=1)
    poison = [
        (b"00000000000000ff", b"{not json"),
        (
            b"00000000000000fe",
            orjson.dumps(
                {
                    "type": "share",
                    "root": "00000000000000fe",
                    "event_id": "e",
                    "campaign": CAMPAIGN,
                    "ts": 1,
                    "received_at": 1,
                }
            ),
        ),
    ]  # no node
    messages[10:10] = poison
    ends = await produce(settings, messages)

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_cascades(settings, stop, clickhouse=migrated, registry=CollectorRegistry())
    )
    try:
        await all_committed(settings, ends)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)

    want = oracle(streams, settings)
    got = await stored_stats(migrated)
    assert set(got) == set(want)
    for root, row in got.items():
        assert_matches(row, want[root])
    # Independent of the engine: for the cascades that ended whole (no orphan,
    # nothing pending), size and Wiener index from the parent arrays.
    whole = 0
    for stream, parents in zip(streams, trees, strict=True):
        row = got[f"{stream[0].root:016x}"]
        if row["orphans"] == 0 and row["pending"] == 0:
            whole += 1
            assert row["size"] == len(parents)
            assert row["wiener"] == wiener_batch(parents)
    assert whole >= 10
    # Every node and touch is stored once (FINAL), the footprints restore needs.
    nodes = await migrated.aquery_rows("SELECT count() FROM cascade_nodes FINAL")
    assert nodes[0][0] == sum(s.size + s.pending for s in want.values())

    await check_campaign_metrics(migrated, want)

    dead = values(await consume(bootstrap, settings.kafka.dlq_topic, 2, timeout_s=20))
    assert sorted(d["reason"] for d in dead) == ["bad_json", "bad_schema"]
    assert all(d["source"] == "consumer:cascades" for d in dead)

    signals = values(await consume(bootstrap, settings.kafka.signals_topic, 10_000, 5))
    opened = {s["root"] for s in signals if s["kind"] == "spread.structural_virality"
              and s["state"] == "open"}  # fmt: skip
    viral = {r for r, s in want.items() if s.virality >= 2.0 and s.tree_size >= 10}
    assert viral and viral <= opened
    assert all(s["id"].startswith(s["kind"]) and "numbers" in s for s in signals)


async def test_rebalance_between_two_consumers_gives_the_same_stats(
    tmp_path: Path, unique: str, migrated: ClickHouse
) -> None:
    """A second consumer joins half way: cascades move with their partitions.

    The first consumer drops its state on revoke; whoever owns a partition
    next restores its cascades from cascade_nodes and cascade_touches. Runs
    on Tansu only: noida-db 0.2.2 refuses the commit made in
    on_partitions_revoked (see test_sink.test_rebalance_flushes_on_revoke).
    """
    bootstrap = require_env("VIRALTRACE_TEST_KAFKA_TANSU")
    settings = cascade_settings(tmp_path, bootstrap, False, unique)
    await create_topics(settings)
    streams, _ = cascade_workload(seed=33)
    messages = messages_for(streams, seed=2)
    half = len(messages) // 2
    ends = await produce(settings, messages[:half])

    stop = asyncio.Event()
    transport = KafkaTransport.from_settings(settings)

    def runner() -> Any:
        metrics = ConsumerMetrics(CollectorRegistry())
        return cascades_runner(settings, migrated, stop, metrics, transport)

    first, second = runner(), runner()
    tasks = [asyncio.create_task(run_all([first], stop))]
    try:
        await all_committed(settings, ends)
        tasks.append(asyncio.create_task(run_all([second], stop)))

        async def both_assigned() -> tuple[bool, Any]:
            sizes = [len(r.consumer.assignment()) if r.consumer else 0 for r in (first, second)]
            return all(sizes) and sum(sizes) == PARTITIONS, sizes

        await wait_for(both_assigned, 60, "the partitions to be shared")
        ends = {**ends, **await produce(settings, messages[half:])}
        await all_committed(settings, ends)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)

    assert first.pipeline.restored + second.pipeline.restored > 0
    want = oracle(streams, settings)
    got = await stored_stats(migrated)
    assert set(got) == set(want)
    for root, row in got.items():
        assert_matches(row, want[root])

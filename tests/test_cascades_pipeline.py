"""The cascades pipeline's steps without a broker: decode, apply, signals, and
restore through real ClickHouse (chdb) on the in-process bus, including a
ClickHouse outage and eviction of every cascade after every write."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from app.bus.base import Record as BusRecord
from app.bus.memory import MemoryBus, MemoryRecord
from app.settings import CascadeSettings
from app.storage.clickhouse import ClickHouse, StorageError
from consumers.base import ConsumerMetrics, InvalidMessage
from consumers.cascades.pipeline import CascadesPipeline, decode
from consumers.cascades.runner import cascades_runner
from consumers.cascades.signals import CampaignWindows, SignalState, cascade_signals, viral_signal
from consumers.cascades.state import Cascade, Share, Touch
from tests.cascadehelpers import BASE_TS, cascade_workload, tree_shares, wire_event
from tests.conftest import make_settings
from tests.test_cascades import assert_matches, messages_for, oracle, stored_stats


def record(value: bytes, key: bytes | None = b"00000000000000aa", offset: int = 0) -> MemoryRecord:
    return MemoryRecord("t", 0, offset, 0, key, value)


def test_decode_share_touch_and_what_is_not_a_cascade_event() -> None:
    import random

    share = tree_shares([-1, 0], random.Random(1), campaign="c")[1]
    decoded = decode(record(orjson.dumps(wire_event(share, received_at=5))))
    assert decoded == (share, 5)
    click = Touch(str(uuid.uuid4()), "c", share.root, share.node, "click", 10, 9)
    assert decode(record(orjson.dumps(wire_event(click)))) == (click, click.ts + 50)
    # Not cascade events: no token (keyed by campaign), bots, previews, comments.
    assert decode(record(b"anything", key=b"campaign:c")) is None
    for change in ({"bot": True}, {"type": "preview"}, {"type": "comment"}, {"root": None}):
        assert decode(record(orjson.dumps({**wire_event(click), **change}))) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "bad_json"),
        (b"[1]", "bad_schema: not an object"),
        (orjson.dumps({"type": "click", "root": "abc"}), "bad_schema"),
        (orjson.dumps({"type": "share", "root": "00000000000000aa", "node": "zz"}), "bad_schema"),
    ],
)
def test_decode_refuses_poison_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode(record(value))
    assert info.value.reason.startswith(reason)


def test_process_returns_rows_only_for_changes_and_refuses_a_foreign_campaign() -> None:
    import random

    shares = tree_shares([-1, 0, 1], random.Random(2), campaign="c")
    pipeline = CascadesPipeline(CascadeSettings())
    encoded = [orjson.dumps(wire_event(s, received_at=7)) for s in shares]
    assert [len(pipeline.process(record(v))) for v in encoded] == [1, 1, 1]
    assert pipeline.process(record(encoded[2])) == ()  # duplicate
    assert pipeline.dirty == {shares[0].root}
    foreign = {**wire_event(shares[1]), "campaign": "other", "node": "00000000000000bb"}
    with pytest.raises(InvalidMessage, match="bad_lineage"):
        pipeline.process(record(orjson.dumps(foreign)))
    wrong_depth = {**wire_event(shares[2]), "node": "00000000000000cc", "depth": 7}
    with pytest.raises(InvalidMessage, match="bad_lineage"):
        pipeline.process(record(orjson.dumps(wrong_depth)))


def test_signals_open_once_and_resolve_with_hysteresis() -> None:
    import random

    # A star's structural virality tends to 2, a chain's to n/3.
    cfg = CascadeSettings(virality_threshold=3.0, virality_min_size=5, accel_min_rate=1.0)

    rng = random.Random(3)
    chain = tree_shares(list(range(-1, 11)), rng)  # a chain of 12: virality ~ 4.3
    cascade = Cascade("camp", chain[0].root, chain[0].ts)
    for share in chain:
        cascade.add_share(share)
    state = SignalState()
    first = {s["kind"]: s for s in cascade_signals(cascade, cascade.stats(), state, cfg)}
    assert first["spread.structural_virality"]["state"] == "open"
    assert first["spread.structural_virality"]["value"] > 3.0
    # 12 shares within a minute after nothing: accelerating against its (empty) hour.
    assert first["spread.accelerating"]["numbers"]["shares_per_min"] == 12 / 5
    again = cascade_signals(cascade, cascade.stats(), state, cfg)
    assert "spread.structural_virality" not in [s["kind"] for s in again]
    # A burst of direct children of the root: broadcast, virality falls, the signal resolves.
    later = BASE_TS + 3_600_000
    for i in range(300):
        cascade.add_share(Share(str(i), "camp", chain[0].root, 10_000 + i, chain[0].node, 1,
                                later + i * 20, 0))  # fmt: skip
    signals = cascade_signals(cascade, cascade.stats(), state, cfg)
    by_kind = {s["kind"]: s for s in signals}
    assert by_kind["spread.structural_virality"]["state"] == "resolved"
    assert "spread.accelerating" not in by_kind  # still open: no repeat
    assert state.accelerating and not state.structural


def test_viral_signal_needs_k_above_one_for_the_whole_sustain_period() -> None:
    cfg = CascadeSettings(k_window_min=2, viral_sustain_min=2, viral_min_sharers=1)
    windows = CampaignWindows()
    minute = 60_000
    base = BASE_TS - BASE_TS % minute
    for m in range(6):  # sharers double every minute; recruits are the new ones
        windows.add(base + m * minute, 2**m, 2**m)
    signal = viral_signal("camp", windows, cfg)
    assert signal is not None and signal["state"] == "open"
    assert signal["value"] > 1 and signal["numbers"]["recruits"] > 0
    assert viral_signal("camp", windows, cfg) is None  # no repeat while it holds
    windows.add(base + 9 * minute, 1, 0)  # growth stops
    resolved = viral_signal("camp", windows, cfg)
    assert resolved is not None and resolved["state"] == "resolved"


class FlakyClickHouse:
    """A real ClickHouse whose first ``fail`` queries and inserts raise a retriable error."""

    def __init__(self, inner: ClickHouse, fail: int) -> None:
        self.inner = inner
        self.queries_to_fail = fail
        self.inserts_to_fail = fail

    async def aquery_rows(self, sql: str, parameters: Any = None) -> Any:
        if self.queries_to_fail:
            self.queries_to_fail -= 1
            raise StorageError("injected: ClickHouse down", retriable=True)
        return await self.inner.aquery_rows(sql, parameters)

    async def ainsert(self, table: str, rows: Sequence[Any], columns: Any, **kw: Any) -> None:
        if self.inserts_to_fail:
            self.inserts_to_fail -= 1
            raise StorageError("injected: ClickHouse down", retriable=True)
        await self.inner.ainsert(table, rows, columns, **kw)


@pytest.mark.clickhouse
@pytest.mark.parametrize("idle_evict_s", [0.0, 900.0])
async def test_outage_and_eviction_through_real_clickhouse_lose_nothing(
    tmp_path: Path, migrated: ClickHouse, idle_evict_s: float
) -> None:
    """ClickHouse refuses the first reads and writes; with idle_evict_s=0 every
    cascade leaves memory after each write and is restored on its next event."""
    settings = make_settings(
        tmp_path,
        consumer={"retry_initial_s": 0.01, "retry_max_s": 0.05, "max_poll_records": 100},
        cascades={"snapshot_interval_s": 0.05, "orphan_after_s": 120, "max_pending": 50,
                  "idle_evict_s": idle_evict_s},
    )  # fmt: skip
    bus = MemoryBus(partitions=4)
    streams, _ = cascade_workload(seed=5, cascades=12, max_size=150)
    flaky = FlakyClickHouse(migrated, fail=3)
    stop = asyncio.Event()
    metrics = ConsumerMetrics(CollectorRegistry())
    runner = cascades_runner(settings, flaky, stop, metrics, bus)  # type: ignore[arg-type]
    task = asyncio.create_task(runner.run())
    try:
        messages = messages_for(streams, seed=4)
        for start in range(0, len(messages), 200):
            chunk = messages[start : start + 200]
            await bus.publish([BusRecord(settings.kafka.topic, k, v) for k, v in chunk])
            await asyncio.sleep(0.1)  # a few writes (and evictions) per chunk
        for _ in range(1000):
            if bus.joined(runner.group_id) and bus.lag(runner.group_id) == 0:
                break
            await asyncio.sleep(0.02)
        assert bus.lag(runner.group_id) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert flaky.queries_to_fail == flaky.inserts_to_fail == 0
    if idle_evict_s == 0:
        assert runner.pipeline.restored > len(streams)  # restored again and again
    want = oracle(streams, settings)
    got = await stored_stats(migrated)
    assert set(got) == set(want)
    for root, row in got.items():
        assert_matches(row, want[root])


async def test_an_idle_cascade_resolves_its_open_signals_before_it_leaves_memory(
    migrated: ClickHouse,
) -> None:
    import random

    cfg = CascadeSettings(virality_threshold=3.0, virality_min_size=5, idle_evict_s=60)
    now = [0.0]
    published: list[tuple[bytes, dict[str, Any]]] = []

    async def publish(topic: str, key: bytes, value: bytes) -> None:
        published.append((key, orjson.loads(value)))

    pipeline = CascadesPipeline(cfg, migrated, publish=publish, clock=lambda: now[0])
    chain = tree_shares(list(range(-1, 11)), random.Random(3), campaign="camp")
    for offset, share in enumerate(chain):
        pipeline.process(record(orjson.dumps(wire_event(share)), offset=offset))
    await pipeline.write([], "w1")
    opened = {s["kind"] for _, s in published if s["state"] == "open"}
    assert "spread.structural_virality" in opened
    assert all(key == b"camp" for key, _ in published), "keyed by campaign"
    published.clear()

    now[0] = 61.0  # idle past idle_evict_s
    await pipeline.write([], "w2")
    resolved = {s["kind"]: s for _, s in published if s["state"] == "resolved"}
    assert set(resolved) == opened
    assert all(s["numbers"]["reason"] == "idle" for s in resolved.values())
    assert pipeline.cascades == {}, "evicted once its signals were resolved"

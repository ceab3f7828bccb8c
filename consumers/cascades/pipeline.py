"""The cascades consumer's steps: decode, apply (pure), restore and write.

``share-events`` are keyed by cascade root, so every event of a cascade is
on one partition and this consumer keeps the cascades of its partitions in
memory (``consumers/cascades/state.py``). Per fetch:

1. ``prepare`` restores, from ``cascade_nodes`` and ``cascade_touches``, the
   cascades the fetch needs that are not in memory (after a restart, a
   rebalance or an idle eviction), in one query per table and campaign.
2. ``process`` decodes one record (``consumers/cascades/decode.py``: only the
   fields it reads) and applies it to its cascade: pure, no I/O. It returns
   one row per state change (the row is only the event's ``received_at``,
   for the latency metric); duplicates return none.
3. ``write`` (every ``cascades.snapshot_interval_s``) drains what changed:
   node and touch rows (the footprints restore needs), one ``cascade_stats``
   snapshot per changed cascade, and the spread signals, in that order.
   The runner commits the offsets after it returns, so a committed offset
   is always covered by written footprints.

A failed write is retried with the same rows and dedup token (the drained
changes are kept until a write succeeds). Spread signals are published at
least once, keyed by campaign (the alerts consumer keeps per-campaign
state); a signal's ``id`` is stable across replays, so receivers can drop
repeats.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from app.bus.base import BusError
from app.settings import CascadeSettings
from app.storage.clickhouse import ClickHouse, StorageError
from consumers.base import InvalidMessage, Record, Row, now_ms
from consumers.cascades.decode import decode
from consumers.cascades.signals import (
    CampaignWindows,
    SignalState,
    cascade_signals,
    idle_signals,
    viral_signal,
)
from consumers.cascades.state import (
    Cascade,
    CascadeStats,
    NodeRow,
    Share,
    Touch,
    node_hex,
    restore,
)

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bytes], Awaitable[None]]  # topic, key, value

NODE_COLUMNS = (
    "campaign", "root", "node", "parent", "depth", "state", "sharer", "net", "channel",
    "ts", "clicks", "conversions", "flags", "version", "written_at",
)  # fmt: skip
TOUCH_COLUMNS = ("campaign", "root", "node", "event_id", "kind", "visitor", "ts")
STATS_COLUMNS = (
    "campaign", "root", "version", "size", "tree_size", "pending", "orphans", "reach",
    "depth", "breadth", "max_breadth", "branching", "reproduction", "clicks", "conversions",
    "first_ts", "last_ts", "growth_per_min", "doubling_s", "wiener", "virality",
    "valid_nodes", "valid_recruits", "self_referrals", "same_origin", "inflated",
    "forecast_size", "forecast_method", "infectiousness", "top_descendants", "top_children",
    "channel_mix", "written_at",
)  # fmt: skip

_NODES_SQL = (
    "SELECT root, node, parent, depth, state, sharer, net, channel,"
    " toUnixTimestamp64Milli(ts), clicks, conversions, flags"
    " FROM cascade_nodes FINAL"
    " WHERE campaign = {campaign:String} AND root IN {roots:Array(String)}"
)
_TOUCHES_SQL = (
    "SELECT root, node, toString(event_id), kind, visitor, toUnixTimestamp64Milli(ts)"
    " FROM cascade_touches FINAL"
    " WHERE campaign = {campaign:String} AND root IN {roots:Array(String)}"
)


def _hex_id(value: Any, what: str) -> int:
    """A 16-hex-digit id as an int; ``ValueError`` otherwise."""
    if type(value) is not str or len(value) != 16:
        raise ValueError(f"{what}: not a 16-hex-digit id")
    return int(value, 16)


def _opt_hex(value: Any, what: str) -> int:
    return 0 if value is None else _hex_id(value, what)


def _opt_hex_str(value: int) -> str | None:
    return node_hex(value) if value else None


def node_rows(
    campaign: str, root: int, rows: Sequence[NodeRow], version: int, now: int
) -> list[Row]:
    root_hex = node_hex(root)
    return [
        (
            campaign,
            root_hex,
            node_hex(r.node),
            None if r.parent is None else node_hex(r.parent),
            r.depth,
            r.state,
            _opt_hex_str(r.sharer),
            _opt_hex_str(r.net),
            r.channel,
            r.ts,
            r.clicks,
            r.conversions,
            r.flags,
            version,
            now,
        )  # fmt: skip
        for r in rows
    ]


def touch_rows(touches: Sequence[Touch]) -> list[Row]:
    return [
        (
            t.campaign,
            node_hex(t.root),
            node_hex(t.node),
            t.event_id,
            t.kind,
            _opt_hex_str(t.visitor),
            t.ts,
        )  # fmt: skip
        for t in touches
    ]


def stats_row(stats: CascadeStats, now: int) -> Row:
    s = stats
    return (
        s.campaign, s.root, s.version, s.size, s.tree_size, s.pending, s.orphans, s.reach,
        s.depth, s.breadth, s.max_breadth, s.branching, s.reproduction, s.clicks,
        s.conversions, s.first_ts, s.last_ts, s.growth_per_min, s.doubling_s, s.wiener,
        s.virality, s.valid_nodes, s.valid_recruits, s.self_referrals, s.same_origin,
        s.inflated, s.forecast_size, s.forecast_method, s.infectiousness, s.top_descendants,
        s.top_children, s.channel_mix, now,
    )  # fmt: skip


def node_row_from_db(row: Sequence[Any]) -> tuple[int, NodeRow]:
    """(root, NodeRow) from a ``_NODES_SQL`` result row."""
    root, node, parent, depth, state, sharer, net, channel, ts, clicks, conv, flags = row
    return int(root, 16), NodeRow(
        int(node, 16), None if parent is None else int(parent, 16), int(depth), int(ts),
        _opt_hex(sharer, "sharer"), _opt_hex(net, "net"), channel, int(clicks), int(conv),
        int(flags), str(state),
    )  # fmt: skip


def touch_from_db(campaign: str, row: Sequence[Any]) -> Touch:
    root, node, event_id, kind, visitor, ts = row
    return Touch(
        str(event_id), campaign, int(root, 16), int(node, 16), str(kind), int(ts),
        _opt_hex(visitor, "visitor"),
    )  # fmt: skip


@dataclass
class Flush:
    """What one write sends; kept until it succeeds so a retry sends the same."""

    nodes: list[Row] = field(default_factory=list)
    touches: list[Row] = field(default_factory=list)
    stats: list[Row] = field(default_factory=list)
    signals: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)


class CascadesPipeline:
    """``share-events`` -> cascade state -> ``cascade_nodes/touches/stats`` + spread signals."""

    name = "cascades"

    def __init__(
        self,
        settings: CascadeSettings,
        clickhouse: ClickHouse | None = None,
        *,
        publish: Publish | None = None,
        signals_topic: str = "signals",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.publish = publish
        self.signals_topic = signals_topic
        self.clock = clock
        self.batch_max_records = settings.batch_max_records
        self.batch_max_seconds = settings.snapshot_interval_s
        self.cascade_options: dict[str, Any] = {
            "orphan_after_ms": int(settings.orphan_after_s * 1000),
            "max_pending": settings.max_pending,
            "forecast_tau_ms": settings.forecast_tau_s * 1000,
        }
        self.cascades: dict[int, Cascade] = {}
        self.partition_of: dict[int, int] = {}
        self.used_at: dict[int, float] = {}
        self.dirty: set[int] = set()
        self.signal_state: dict[int, SignalState] = {}
        self.windows: dict[str, CampaignWindows] = {}
        self._flush: Flush | None = None
        self.now = clock()  # per fetch (prepare), not per event: for idle eviction only
        self.restored = 0  # cascades restored from storage, for tests and logs

    # ---- pure step -----------------------------------------------------

    def process(self, record: Record) -> Sequence[Row]:
        """Apply one record; one row per state change. Raises ``InvalidMessage``."""
        decoded = decode(record)
        if decoded is None:
            return ()
        item, received = decoded
        cascade = self.cascades.get(item.root)
        if cascade is None:
            cascade = Cascade(item.campaign, item.root, item.ts, **self.cascade_options)
            self.cascades[item.root] = cascade
            self.partition_of[item.root] = record.partition
        elif cascade.campaign != item.campaign:
            raise InvalidMessage(
                record.partition, record.offset, "bad_lineage: root belongs to another campaign"
            )
        nodes, recruits = cascade.valid_nodes, cascade.valid_recruits
        try:
            changed = (
                cascade.add_share(item) if type(item) is Share else cascade.add_touch(item)  # type: ignore[arg-type]
            )
        except ValueError as exc:
            raise InvalidMessage(record.partition, record.offset, f"bad_lineage: {exc}") from None
        self.used_at[item.root] = self.now
        if not changed:
            return ()
        self.dirty.add(item.root)
        # Touches can change these too: a later event time orphans stranded shares.
        if cascade.valid_nodes != nodes or cascade.valid_recruits != recruits:
            windows = self.windows.get(item.campaign)
            if windows is None:
                windows = self.windows[item.campaign] = CampaignWindows()
            windows.add(item.ts, cascade.valid_nodes - nodes, cascade.valid_recruits - recruits)
        return ((received,),)

    def received_ms(self, row: Row) -> int | None:
        value: int = row[0]
        return value

    # ---- restore -------------------------------------------------------

    async def prepare(self, records: Sequence[Record]) -> None:
        """Restore the cascades of ``records`` that are not in memory; raises ``StorageError``."""
        self.now = self.clock()
        if self.clickhouse is None:
            return
        missing: dict[str, dict[str, int]] = {}  # campaign -> root hex -> partition
        for record in records:
            key = record.key
            if key is None or len(key) != 16:
                continue
            try:
                root = int(key, 16)
            except ValueError:
                continue
            if root in self.cascades:
                continue
            try:
                campaign = orjson.loads(record.value or b"").get("campaign")
            except (orjson.JSONDecodeError, AttributeError):
                continue  # process() dead-letters it
            if isinstance(campaign, str):
                missing.setdefault(campaign, {})[key.decode()] = record.partition
        for campaign, roots in missing.items():
            await self._restore(campaign, roots)

    async def _restore(self, campaign: str, roots: dict[str, int]) -> None:
        assert self.clickhouse is not None
        params = {"campaign": campaign, "roots": sorted(roots)}
        node_result = await self.clickhouse.aquery_rows(_NODES_SQL, params)
        touch_result = await self.clickhouse.aquery_rows(_TOUCHES_SQL, params)
        nodes: dict[int, list[NodeRow]] = {}
        for row in node_result:
            root, node = node_row_from_db(row)
            nodes.setdefault(root, []).append(node)
        touches: dict[int, list[Touch]] = {}
        for row in touch_result:
            touch = touch_from_db(campaign, row)
            touches.setdefault(touch.root, []).append(touch)
        now = self.clock()
        for root, rows in nodes.items():
            if root in self.cascades:
                continue
            self.cascades[root] = restore(
                campaign, root, rows, touches.get(root, ()), **self.cascade_options
            )
            self.partition_of[root] = roots[node_hex(root)]
            self.used_at[root] = now
            self.restored += 1
        if nodes:
            log.info("cascades: restored %d cascades of %s", len(nodes), campaign)

    # ---- write ---------------------------------------------------------

    def _drain(self) -> Flush:
        """Everything changed since the last successful write, and the signals it raises."""
        flush = Flush()
        now = now_ms()
        cfg = self.settings
        campaigns: set[str] = set()
        for root in sorted(self.dirty):
            cascade = self.cascades[root]
            rows, touches = cascade.drain()
            flush.nodes += node_rows(cascade.campaign, root, rows, cascade.version, now)
            flush.touches += touch_rows(touches)
            cascade.prune_minutes()
            stats = cascade.stats()
            flush.stats.append(stats_row(stats, now))
            state = self.signal_state.setdefault(root, SignalState())
            for signal in cascade_signals(cascade, stats, state, cfg):
                flush.signals.append((cascade.campaign.encode(), _signal_bytes(signal, now)))
            campaigns.add(cascade.campaign)
        self.dirty.clear()
        for root in self._idle():
            open_state = self.signal_state.get(root)
            if open_state is not None and open_state.any_open():
                cascade = self.cascades[root]
                for signal in idle_signals(cascade.stats(), open_state):
                    flush.signals.append((cascade.campaign.encode(), _signal_bytes(signal, now)))
        for campaign in sorted(campaigns):
            windows = self.windows.get(campaign)
            if windows is None:
                continue
            viral = viral_signal(campaign, windows, cfg)
            if viral is not None:
                flush.signals.append((campaign.encode(), _signal_bytes(viral, now)))
        return flush

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        """Write the drained changes, then publish signals; raises ``StorageError``."""
        assert self.clickhouse is not None, "the cascades pipeline needs ClickHouse to write"
        if self._flush is None:
            self._flush = self._drain()
        flush = self._flush
        ch = self.clickhouse
        await ch.ainsert("cascade_touches", flush.touches, TOUCH_COLUMNS,
                         dedup_token=f"{dedup_token}:touches")  # fmt: skip
        await ch.ainsert("cascade_nodes", flush.nodes, NODE_COLUMNS,
                         dedup_token=f"{dedup_token}:nodes")  # fmt: skip
        await ch.ainsert("cascade_stats", flush.stats, STATS_COLUMNS,
                         dedup_token=f"{dedup_token}:stats")  # fmt: skip
        if self.publish is not None:
            while flush.signals:
                key, value = flush.signals[0]
                try:
                    await self.publish(self.signals_topic, key, value)
                except (KafkaError, BusError) as exc:
                    raise StorageError(f"signal publish failed: {exc!r}", retriable=True) from exc
                flush.signals.pop(0)
        self._flush = None
        self.evict_idle()

    def evict_idle(self) -> int:
        """Drop clean cascades idle for ``idle_evict_s``; they are restored on their next event."""
        # A cascade with open signals stays until a write has published their
        # resolution (``_drain``), so none is left open downstream.
        closed = SignalState()
        idle = [r for r in self._idle() if not self.signal_state.get(r, closed).any_open()]
        for root in idle:
            self._forget(root)
        return len(idle)

    def _idle(self) -> list[int]:
        horizon = self.clock() - self.settings.idle_evict_s
        return [r for r, used in self.used_at.items() if used <= horizon and r not in self.dirty]

    def _forget(self, root: int) -> None:
        self.cascades.pop(root, None)
        self.partition_of.pop(root, None)
        self.used_at.pop(root, None)
        self.signal_state.pop(root, None)
        self.dirty.discard(root)

    def revoked(self, partitions: set[TopicPartition]) -> None:
        """Another consumer owns these partitions now: forget their cascades (flushed or not)."""
        numbers = {tp.partition for tp in partitions}
        if self._flush is not None or self.dirty:
            # Unwritten changes (the revoke-time write failed): the records behind
            # them come again, so every cascade restarts from storage.
            numbers = set(self.partition_of.values())
        for root in [r for r, p in self.partition_of.items() if p in numbers]:
            self._forget(root)
        self._flush = None
        self.windows.clear()  # they mix partitions; rebuilt from new events


def _signal_bytes(signal: dict[str, Any], now: int) -> bytes:
    return orjson.dumps({**signal, "emitted_at": now})

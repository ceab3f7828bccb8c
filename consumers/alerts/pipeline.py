"""The alerts consumer's steps: signals -> buzz windows, alerts and webhooks.

It reads the signals topic, keyed by campaign, so a campaign's scored texts
(``buzz.item`` from consumers/buzz) and spread signals (consumers/cascades)
all reach one consumer, which keeps the campaign's state in memory
(``consumers/alerts/detect.py``). Per fetch:

1. ``prepare`` refreshes the alert rules from the control plane, and
   restores each campaign the fetch needs that is not in memory, from
   ClickHouse: its baselines and recent minutes from ``buzz_items``, the ids
   of items written in the last ``REPLAY_HORIZON_S`` (what a replay after a
   crash can bring again) and its alerts (open ones, and cooldowns).
2. ``process`` applies one record (pure): an item is deduplicated by
   ``event_id``, dropped if older than the lateness bound (counted), counted
   in its minute, and may open or resolve buzz alerts; a spread signal may
   open or resolve a spread alert.
3. ``write`` (every ``alerts.flush_interval_s``), in this order: the new
   items; the windows of every minute they touched, recomputed from
   ``buzz_items`` (so a late item corrects its minute); for each alert
   transition its explanation, its webhooks (the outbox, one SQL commit) and
   then its ``alerts`` row. The runner commits the offsets after it returns.

A crash after the webhooks but before the ``alerts`` row re-detects the
alert from the restored state (the same data, so the same alert, possibly
under a later ``opened_at``): a receiver may get one alert twice, never
none. Everything the write needs is kept until it succeeds.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from aiokafka import TopicPartition
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import AlertSettings
from app.storage.alerts import alert_document
from app.storage.clickhouse import ClickHouse, StorageError
from consumers.alerts.detect import (
    BUZZ_KINDS,
    MINUTE_MS,
    SPREAD_KINDS,
    BuzzItem,
    CampaignBuzz,
    Minute,
    OpenAlert,
    Transition,
)
from consumers.alerts.explain import buzz_explanation, spread_explanation
from consumers.alerts.rules import RuleCache
from consumers.base import InvalidMessage, Record, Row, json_object, now_ms

log = logging.getLogger(__name__)

# A replay after a crash re-reads at most what was processed since the last
# commit, which is seconds; ids written this long ago are remembered on restore.
REPLAY_HORIZON_S = 600
LABELS = frozenset({"negative", "neutral", "positive"})

ITEM_COLUMNS = (
    "campaign", "event_id", "type", "root", "node", "channel", "ts", "received_at", "label",
    "score", "lang", "negative_terms", "sample", "written_at",
)  # fmt: skip
ALERT_COLUMNS = (
    "id", "kind", "campaign", "state", "opened_at", "resolved_at", "value", "baseline",
    "threshold", "window_start", "window_end", "numbers", "subjects", "explanation", "version",
    "written_at",
)  # fmt: skip

# Every item counts for its campaign (branch '') and its cascade (branch = root).
_WINDOWS_SQL = """
INSERT INTO buzz_windows
SELECT campaign, branch, minute, volume, negative, positive, negative_shares, positive_shares,
       if(volume = 0, 0, negative / volume),
       arraySlice(arrayReverseSort(x -> x.2, arrayZip(terms.1, terms.2)), 1, 5),
       mapFromArrays(langs.1, langs.2),
       {version:UInt64}
FROM (
    SELECT campaign,
           arrayJoin(if(root IS NULL, [''], ['', assumeNotNull(root)])) AS branch,
           toStartOfMinute(ts) AS minute,
           count() AS volume,
           countIf(label = 'negative') AS negative,
           countIf(label = 'positive') AS positive,
           countIf(label = 'negative' AND type = 'share') AS negative_shares,
           countIf(label = 'positive' AND type = 'share') AS positive_shares,
           sumMapIf(negative_terms, arrayMap(t -> toUInt64(1), negative_terms),
                    label = 'negative') AS terms,
           sumMap([lang], [toUInt64(1)]) AS langs
    FROM buzz_items FINAL
    WHERE campaign = {campaign:String}
      AND toStartOfMinute(ts) IN (
          SELECT arrayJoin(arrayMap(m -> toDateTime(m, 'UTC'), {minutes:Array(UInt32)})))
    GROUP BY campaign, branch, minute
)
"""
_MAX_TS_SQL = """
SELECT toUnixTimestamp64Milli(max(ts)), count() FROM buzz_items WHERE campaign = {campaign:String}
"""
_MINUTES_SQL = """
SELECT toUnixTimestamp(toStartOfMinute(ts)) AS minute, count(), countIf(label = 'negative'),
       countIf(label = 'positive'), countIf(label = 'negative' AND type = 'share'),
       countIf(label = 'positive' AND type = 'share')
FROM buzz_items FINAL
WHERE campaign = {campaign:String} AND ts >= fromUnixTimestamp64Milli({since:Int64})
GROUP BY minute ORDER BY minute
"""
_RECENT_IDS_SQL = """
SELECT toString(event_id) FROM buzz_items
WHERE campaign = {campaign:String} AND written_at >= fromUnixTimestamp64Milli({since:Int64})
"""
_ALERTS_SQL = """
SELECT id, kind, state, toUnixTimestamp64Milli(opened_at),
       toUnixTimestamp64Milli(resolved_at), value, baseline, threshold, subjects
FROM alerts FINAL
WHERE campaign = {campaign:String}
  AND (state = 'open' OR resolved_at >= fromUnixTimestamp64Milli({since:Int64}))
ORDER BY opened_at
"""

Notify = Callable[[list[tuple[Transition, dict[str, Any]]]], Awaitable[None]]


@dataclass
class Flush:
    """What one write sends; kept until it succeeds so a retry sends the same."""

    items: list[BuzzItem] = field(default_factory=list)
    minutes: dict[str, set[int]] = field(default_factory=dict)  # campaign -> minute starts (s)
    transitions: list[Transition] = field(default_factory=list)
    payloads: list[dict[str, Any]] | None = None
    notified: bool = False
    version: int = 0


def decode_item(value: dict[str, Any], record: Record) -> BuzzItem:
    """A ``buzz.item`` message as a ``BuzzItem``; raises ``InvalidMessage``."""
    try:
        label = value["label"]
        terms = value.get("terms") or ()
        item = BuzzItem(
            str(value["event_id"]), str(value["campaign"]), str(value["type"]),
            _opt_str(value.get("root")), _opt_str(value.get("node")),
            _opt_str(value.get("channel")), int(value["ts"]), int(value["received_at"]),
            label, float(value["score"]), str(value.get("lang") or "und"),
            tuple(str(t) for t in terms)[:10], str(value.get("sample") or "")[:500],
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidMessage(record.partition, record.offset, f"bad_schema: {exc!r}") from None
    if label not in LABELS or len(item.event_id) != 36:
        raise InvalidMessage(record.partition, record.offset, "bad_schema: label or event_id")
    return item


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def check_signal(value: dict[str, Any], record: Record) -> None:
    """Raises ``InvalidMessage`` unless ``value`` is a usable spread signal."""
    if (
        value.get("state") not in ("open", "resolved")
        or not isinstance(value.get("ts"), int)
        or not isinstance(value.get("value"), int | float)
        or not isinstance(value.get("threshold"), int | float)
    ):
        raise InvalidMessage(record.partition, record.offset, "bad_schema: spread signal")


class AlertsPipeline:
    """Signals topic -> ``buzz_items``, ``buzz_windows``, ``alerts`` and the webhook outbox."""

    name = "alerts"

    def __init__(
        self,
        settings: AlertSettings,
        clickhouse: ClickHouse | None = None,
        *,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        notify: Notify | None = None,
        public_base_url: str = "http://127.0.0.1:8000",
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.clickhouse = clickhouse
        self.sessions = sessions
        self.notify = notify
        self.public_base_url = public_base_url
        self.clock = clock
        self.wall_ms = wall_ms
        self.batch_max_seconds = settings.flush_interval_s
        self.rules = RuleCache(settings, sessions)
        self.campaigns: dict[str, CampaignBuzz] = {}
        self.partition_of: dict[str, int] = {}
        self.seen: dict[str, float] = {}  # event_id -> when it was first processed
        self.pending = Flush()
        self._flush: Flush | None = None
        self.now = clock()
        self.too_late = 0  # items older than the lateness bound, for tests and metrics
        self.restored = 0

    # ---- state ---------------------------------------------------------------

    def _campaign(self, campaign: str, partition: int) -> CampaignBuzz:
        state = self.campaigns.get(campaign)
        if state is None:
            cfg = self.settings
            state = CampaignBuzz(
                campaign,
                halflife_min=cfg.baseline_halflife_min,
                out_of_order_ms=int(cfg.out_of_order_s * 1000),
                max_lateness_ms=int(cfg.max_lateness_s * 1000),
                warmup_min=cfg.warmup_min,
                keep_min=self.rules.book.keep_minutes(),
            )
            self.campaigns[campaign] = state
        self.partition_of[campaign] = partition
        return state

    # ---- pure step -----------------------------------------------------------

    def process(self, record: Record) -> Sequence[Row]:
        """Apply one record; ``((received_at,),)`` when it changed something. Pure."""
        value = json_object(record)
        kind = value.get("kind")
        campaign = value.get("campaign")
        if not isinstance(campaign, str) or not campaign:
            raise InvalidMessage(record.partition, record.offset, "bad_schema: no campaign")
        if kind == "buzz.item":
            return self._item(decode_item(value, record), record.partition)
        if kind in SPREAD_KINDS:
            check_signal(value, record)
            state = self._campaign(campaign, record.partition)
            transitions = state.spread(value, self.rules.book.rules(campaign)[str(kind)])
            self.pending.transitions += transitions
            return ((int(value.get("emitted_at") or value["ts"]),),) if transitions else ()
        raise InvalidMessage(record.partition, record.offset, f"bad_schema: kind {kind!r}")

    def _item(self, item: BuzzItem, partition: int) -> Sequence[Row]:
        if item.event_id in self.seen:
            return ()
        self.seen[item.event_id] = self.now
        state = self._campaign(item.campaign, partition)
        if state.too_late(item.ts):
            self.too_late += 1
            return ()
        self.pending.items.append(item)
        minute_s = item.ts // MINUTE_MS * 60
        self.pending.minutes.setdefault(item.campaign, set()).add(minute_s)
        self.pending.transitions += state.add(item, self.rules.book.rules(item.campaign))
        return ((item.received_at,),)

    def received_ms(self, row: Row) -> int | None:
        value: int = row[0]
        return value

    # ---- restore -------------------------------------------------------------

    async def prepare(self, records: Sequence[Record]) -> None:
        """Refresh rules; restore the campaigns of ``records`` not in memory.

        Raises ``StorageError`` (retried by the runner) when ClickHouse fails;
        a failed rules refresh keeps the rules it had.
        """
        self.now = self.clock()
        await self._refresh_rules()
        if self.clickhouse is None:
            return
        missing: dict[str, int] = {}
        for record in records:
            campaign = (record.key or b"").decode("utf-8", "replace")
            if campaign and campaign not in self.campaigns:
                missing.setdefault(campaign, record.partition)
        for campaign, partition in missing.items():
            await self._restore(campaign, partition)

    async def _refresh_rules(self) -> None:
        if await self.rules.refresh(self.now):
            keep = self.rules.book.keep_minutes()
            for state in self.campaigns.values():
                state.keep_min = keep

    async def _restore(self, campaign: str, partition: int) -> None:
        assert self.clickhouse is not None
        ch = self.clickhouse
        params: dict[str, Any] = {"campaign": campaign}
        [(max_ts, count)] = await ch.aquery_rows(_MAX_TS_SQL, params)
        state = self._campaign(campaign, partition)
        rules = self.rules.book.rules(campaign)
        cooldown = max(rule.cooldown_ms for rule in rules.values())
        alerts = await ch.aquery_rows(
            _ALERTS_SQL, {**params, "since": self.wall_ms() - cooldown - 86_400_000}
        )
        if int(count):
            since = int(max_ts) - self.settings.history_min * MINUTE_MS
            minutes = await ch.aquery_rows(_MINUTES_SQL, {**params, "since": since})
            restore_minutes(state, int(max_ts), minutes)
            recent = await ch.aquery_rows(
                _RECENT_IDS_SQL, {**params, "since": self.wall_ms() - REPLAY_HORIZON_S * 1000}
            )
            for (event_id,) in recent:
                self.seen[str(event_id)] = self.now
        restore_alerts(state, alerts, rules)
        self.restored += 1
        log.info("alerts: restored %s (%d items, %d alerts)", campaign, int(count), len(alerts))

    # ---- write ---------------------------------------------------------------

    async def write(self, rows: Sequence[Row], dedup_token: str) -> None:
        """Items, windows, then per transition: webhooks, then its alert row.

        Raises ``StorageError`` (retried with the same content) when ClickHouse
        or the control-plane database fails.
        """
        if self._flush is None:
            self._flush, self.pending = self.pending, Flush()
            self._flush.version = self.wall_ms()
        flush = self._flush
        ch = self.clickhouse
        assert ch is not None, "the alerts pipeline needs ClickHouse to write"
        await ch.ainsert(
            "buzz_items",
            [item_row(item, flush.version) for item in flush.items],
            ITEM_COLUMNS,
            dedup_token=f"{dedup_token}:items",
        )
        for campaign, minutes in sorted(flush.minutes.items()):
            await ch.acommand(
                _WINDOWS_SQL,
                {"campaign": campaign, "minutes": sorted(minutes), "version": flush.version},
            )
        if flush.payloads is None:
            flush.payloads = [await self._payload(ch, t) for t in flush.transitions]
        if not flush.notified and flush.payloads:
            if self.notify is not None:
                try:
                    await self.notify(list(zip(flush.transitions, flush.payloads, strict=True)))
                except (SQLAlchemyError, OSError) as exc:
                    raise StorageError(f"webhook outbox: {exc!r}", retriable=True) from exc
            flush.notified = True
        await ch.ainsert(
            "alerts",
            [
                alert_row(t, p, self.wall_ms())
                for t, p in zip(flush.transitions, flush.payloads, strict=True)
            ],
            ALERT_COLUMNS,
            dedup_token=f"{dedup_token}:alerts",
        )
        self._flush = None
        self._prune_seen()

    async def _payload(self, ch: ClickHouse, t: Transition) -> dict[str, Any]:
        if t.kind in BUZZ_KINDS:
            explanation = await buzz_explanation(ch, t)
        else:
            explanation = await spread_explanation(ch, t)
        return alert_document(t, explanation, self.public_base_url)

    def _prune_seen(self) -> None:
        # Ids are inserted in processing order, so the stale ones are at the front.
        horizon = self.clock() - REPLAY_HORIZON_S
        stale = [k for k, _ in itertools.takewhile(lambda kv: kv[1] < horizon, self.seen.items())]
        for event_id in stale:
            del self.seen[event_id]

    def revoked(self, partitions: set[TopicPartition]) -> None:
        """Another consumer owns these partitions now: forget their campaigns."""
        numbers = {tp.partition for tp in partitions}
        if self._flush is not None or self.pending.items or self.pending.transitions:
            numbers = set(self.partition_of.values())  # unwritten changes come again
            self.pending, self._flush = Flush(), None
        for campaign in [c for c, p in self.partition_of.items() if p in numbers]:
            self.campaigns.pop(campaign, None)
            self.partition_of.pop(campaign, None)


def item_row(item: BuzzItem, written_at: int) -> Row:
    return (
        item.campaign, item.event_id, item.type, item.root, item.node, item.channel, item.ts,
        item.received_at, item.label, item.score, item.lang, list(item.terms), item.sample,
        written_at,
    )  # fmt: skip


def alert_row(t: Transition, data: dict[str, Any], written_at: int) -> Row:
    return (
        t.id, t.kind, t.campaign, t.state, t.opened_at, t.resolved_at, t.value, t.baseline,
        t.threshold, t.window_start, t.window_end, orjson.dumps(t.numbers).decode(),
        orjson.dumps(t.subjects).decode(), orjson.dumps(data["explanation"]).decode(),
        1 if t.state == "open" else 2, written_at,
    )  # fmt: skip


def restore_minutes(state: CampaignBuzz, max_ts: int, rows: Sequence[Sequence[Any]]) -> None:
    """Rebuild baselines and recent minutes from ``(minute_s, counts...)`` rows, oldest first."""
    minutes = {
        int(m) // 60: Minute(int(v), int(n), int(p), int(ns), int(ps))
        for m, v, n, p, ns, ps in rows
    }
    end = (max_ts - state.out_of_order_ms) // MINUTE_MS
    for index in range(min(minutes, default=end), end):
        state.close_minute(minutes.get(index) or Minute())
    state.closed_to = end
    state.max_ts = max_ts
    state.minutes = {i: m for i, m in minutes.items() if i >= end - state.keep_min}


def restore_alerts(
    state: CampaignBuzz, rows: Sequence[Sequence[Any]], rules: dict[str, Any]
) -> None:
    """Open alerts and cooldowns from ``alerts`` rows (oldest first)."""
    for alert_id, kind, status, opened, resolved, value, baseline, threshold, subjects in rows:
        if kind not in rules:
            continue
        kind_state = state.kind(str(kind))
        if status == "open":
            kind_state.open = OpenAlert(str(alert_id), int(opened), float(value),
                                        float(baseline), float(threshold))  # fmt: skip
            for subject in cast(list[dict[str, Any]], orjson.loads(subjects or "[]")):
                key = subject.get("root") or state.campaign
                kind_state.subjects[key] = {**subject, "kind": kind, "ts": int(opened)}
        elif resolved is not None:
            kind_state.open = None
            kind_state.quiet_until = max(
                kind_state.quiet_until, int(resolved) + rules[kind].cooldown_ms
            )

"""What the query API (app/routes/query.py) reads from ClickHouse: parameterized SQL only.

Rollup counts (``events_per_minute`` / ``events_per_hour``) are exact per
bucket: distinct event ids, merged from the rollups' uniqExact states. Merging
those states costs time in proportion to the events they hold (about a second
for 2,000,000 events), so ``RollupCounts`` keeps each bucket's counts with the
bucket's ``sum(rows)`` at the time they were read (``rows`` is the number of
events rows a rollup row summarizes, migration 0007). Every read first fetches
``sum(rows)`` per bucket (cheap: one integer column, no state merged), then
merges the states of the buckets whose sum moved or that it has not seen, and
only those. An insert into a bucket always moves its sum; background merges
never do; so a cached count is never stale by more than the time between the
two queries of one read.

Totals over several buckets are sums of the per-bucket counts. A replayed
event is byte-identical (same ts, same bucket), so the sums count it once; an
event id that came twice with DIFFERENT times (a client retry stamped by the
server) counts once per bucket it landed in, as it does in ``events FINAL``.

Cascade reads (``cascade_stats``) take the latest snapshot with ``FINAL``, as
app/storage/cascades.py does. The cascade tree is in app/storage/trees.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from app.events import EVENT_TYPES
from app.storage.clickhouse import ClickHouse
from app.storage.lru import lru_get, lru_put

TYPES: tuple[str, ...] = tuple(sorted(EVENT_TYPES))
_TYPE_INDEX = {name: i for i, name in enumerate(TYPES)}

# Metric -> event types it counts (None: unique visitors).
METRICS: dict[str, tuple[str, ...] | None] = {
    "views": ("view",),
    "clicks": ("click",),
    "shares": ("share",),
    "signups": ("signup",),
    "conversions": ("convert",),
    "comments": ("comment",),
    "reactions": ("reaction",),
    "reports": ("report",),
    "unsubscribes": ("unsubscribe",),
    "previews": ("preview",),
    "events": TYPES,
    "visitors": None,
}
# Interval -> (seconds, rollup table it reads).
INTERVALS: dict[str, tuple[int, str]] = {
    "1m": (60, "events_per_minute"),
    "5m": (300, "events_per_minute"),
    "1h": (3600, "events_per_hour"),
    "1d": (86400, "events_per_hour"),
}
# Campaigns whose all-time unique visitors are kept (RollupCounts).
MAX_CAMPAIGNS = 10_000
# Buckets are DateTime (UInt32 seconds): the whole representable range.
ALL_TIME = (0, 2**32 - 1)


def iso_s(epoch_s: int) -> str:
    """``2026-11-23T10:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def iso_ms(epoch_ms: int) -> str:
    """``2026-11-23T10:00:00.123Z``."""
    seconds, ms = divmod(epoch_ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{ms:03d}Z"


# ---- rollup counts ---------------------------------------------------------------------

_BUCKET = "toUInt32(toStartOfInterval(bucket, toIntervalSecond({step:UInt32})))"
_RANGE = (
    "campaign = {campaign:String}"
    " AND bucket >= toDateTime({start:UInt32}, 'UTC') AND bucket < toDateTime({end:UInt32}, 'UTC')"
)
_FINGERPRINT_SQL = f"""
SELECT {_BUCKET} AS b, sum(rows)
FROM {{table:Identifier}}
WHERE {_RANGE}
GROUP BY b
"""
_COUNTS_SQL = f"""
SELECT b, groupArray((type, n)), sum(r), 0
FROM (
    SELECT {_BUCKET} AS b, type, uniqExactMerge(events) AS n, sum(rows) AS r
    FROM {{table:Identifier}}
    WHERE {_RANGE} AND b IN {{buckets:Array(UInt32)}}
    GROUP BY b, type
)
GROUP BY b
"""
# The same, plus each bucket's unique visitors (uniq states merged across types).
_COUNTS_VISITORS_SQL = f"""
SELECT b, groupArray((type, n)), sum(r), uniqMerge(v)
FROM (
    SELECT {_BUCKET} AS b, type, uniqExactMerge(events) AS n, sum(rows) AS r,
           uniqMergeState(visitors) AS v
    FROM {{table:Identifier}}
    WHERE {_RANGE} AND b IN {{buckets:Array(UInt32)}}
    GROUP BY b, type
)
GROUP BY b
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket's counts: distinct events per type (in ``TYPES`` order), and its
    approximate unique visitors when they were asked for (else None)."""

    rows: int
    events: tuple[int, ...]
    visitors: int | None

    def count(self, types: tuple[str, ...]) -> int:
        return sum(self.events[_TYPE_INDEX[t]] for t in types)


class RollupCounts:
    """Per-bucket counts from the rollups, cached by the bucket's ``sum(rows)``.

    See the module docstring. ``max_buckets`` bounds the cache (least recently
    used buckets go first; about 250 bytes each); 0 turns it off, so every
    read merges every state in its range. It also keeps each campaign's
    all-time unique visitors with a fingerprint of its hours
    (``campaign_visitors``). Not thread-safe: one per event loop.
    """

    def __init__(self, max_buckets: int) -> None:
        self.max_buckets = max_buckets
        self._cache: OrderedDict[tuple[str, str, int, int], Bucket] = OrderedDict()
        # (campaign, step, hour) -> (the hour's sum(rows) in events_per_hour, its buckets)
        self._hours: OrderedDict[tuple[str, int, int], tuple[int, dict[int, Bucket]]] = (
            OrderedDict()
        )
        self._visitors: OrderedDict[str, tuple[tuple[int, ...], int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def read(
        self,
        ch: ClickHouse,
        table: str,
        campaign: str,
        step: int,
        start: int,
        end: int,
        *,
        visitors: bool = False,
        current: list[tuple[int, int]] | None = None,
    ) -> dict[int, Bucket]:
        """Buckets of ``step`` seconds (aligned to the epoch) in ``[start, end)`` (epoch
        seconds) that hold events, by bucket start. Two queries at most (three for
        minutes); one when ``current``, the (bucket, sum(rows)) pairs of the range,
        is given, or when no hour of a per-minute range changed."""
        if (
            current is None
            and table == "events_per_minute"
            and 3600 % step == 0
            and self.max_buckets > 0
        ):
            return await self._read_by_hour(ch, campaign, step, start, end, visitors)
        params: dict[str, Any] = {
            "table": table,
            "campaign": campaign,
            "step": step,
            "start": start,
            "end": end,
        }
        if current is None:
            current = [(int(b), int(r)) for b, r in await ch.aquery_rows(_FINGERPRINT_SQL, params)]
        out: dict[int, Bucket] = {}
        stale: list[int] = []
        for b, rows in current:
            hit = lru_get(self._cache, (table, campaign, step, b))
            if hit is not None and hit.rows == rows and (hit.visitors is not None or not visitors):
                out[b] = hit
            else:
                stale.append(b)
        if not stale:
            return out
        sql = _COUNTS_VISITORS_SQL if visitors else _COUNTS_SQL
        narrowed = {**params, "start": min(stale), "end": min(max(stale) + step, end)}
        for b, by_type, rows, seen in await ch.aquery_rows(sql, {**narrowed, "buckets": stale}):
            events = [0] * len(TYPES)
            for kind, n in by_type:
                index = _TYPE_INDEX.get(kind)
                if index is not None:
                    events[index] = int(n)
            bucket = Bucket(int(rows), tuple(events), int(seen) if visitors else None)
            out[b] = bucket
            lru_put(self._cache, (table, campaign, step, b), bucket, self.max_buckets)
        return out

    async def _read_by_hour(
        self, ch: ClickHouse, campaign: str, step: int, start: int, end: int, visitors: bool
    ) -> dict[int, Bucket]:
        """Per-minute buckets, checked an hour at a time.

        Both rollups count the same events rows, so an hour's sum(rows) in
        ``events_per_hour`` moves with any insert into its minutes, and a day of
        minutes is checked with 24 hourly sums instead of 1,440. An hour's
        buckets are kept only when their sums add up to the hour's (the two
        views of one insert land one after the other), so a kept hour is never
        one whose minutes were read before its insert.
        """
        first_hour, last_hour = start - start % 3600, end + (-end % 3600)
        hour_rows = {
            int(h): int(r)
            for h, r in await ch.aquery_rows(
                _FINGERPRINT_SQL,
                {
                    "table": "events_per_hour",
                    "campaign": campaign,
                    "step": 3600,
                    "start": first_hour,
                    "end": last_hour,
                },
            )  # fmt: skip
        }
        out: dict[int, Bucket] = {}
        stale: list[int] = []
        for hour, rows in hour_rows.items():
            held = lru_get(self._hours, (campaign, step, hour))
            if (
                held is not None
                and held[0] == rows
                and (not visitors or all(b.visitors is not None for b in held[1].values()))
            ):
                out.update((b, v) for b, v in held[1].items() if start <= b < end)
            else:
                stale.append(hour)
        if not stale:
            return out
        low, high = min(stale), max(stale) + 3600
        minutes = await self.read(
            ch, "events_per_minute", campaign, step, low, high, visitors=visitors,
            current=[
                (int(b), int(r))
                for b, r in await ch.aquery_rows(
                    _FINGERPRINT_SQL,
                    {"table": "events_per_minute", "campaign": campaign, "step": step,
                     "start": low, "end": high},
                )
            ],
        )  # fmt: skip
        for hour in stale:
            in_hour = {b: v for b, v in minutes.items() if hour <= b < hour + 3600}
            if sum(v.rows for v in in_hour.values()) == hour_rows[hour]:
                kept = (hour_rows[hour], in_hour)
                lru_put(self._hours, (campaign, step, hour), kept, max(1, self.max_buckets // 60))
            out.update((b, v) for b, v in in_hour.items() if start <= b < end)
        return out

    def campaign_visitors(self, campaign: str, fingerprint: tuple[int, ...]) -> int | None:
        """The campaign's all-time visitors if kept with this hours fingerprint."""
        held = self._visitors.get(campaign)
        return held[1] if held is not None and held[0] == fingerprint else None

    def keep_campaign_visitors(
        self, campaign: str, fingerprint: tuple[int, ...], visitors: int
    ) -> None:
        limit = MAX_CAMPAIGNS if self.max_buckets > 0 else 0
        lru_put(self._visitors, campaign, (fingerprint, visitors), limit)


async def timeseries(
    ch: ClickHouse, counts: RollupCounts, campaign: str, metric: str, interval: str,
    start: int, end: int,
) -> list[tuple[int, int]]:  # fmt: skip
    """(bucket start, value) for EVERY bucket in ``[start, end)``, zeros included, oldest
    first. ``start``/``end`` are epoch seconds aligned to the interval."""
    step, table = INTERVALS[interval]
    types = METRICS[metric]
    buckets = await counts.read(ch, table, campaign, step, start, end, visitors=types is None)
    points = []
    for b in range(start, end, step):
        bucket = buckets.get(b)
        if bucket is None:
            value = 0
        elif types is None:
            value = bucket.visitors or 0
        else:
            value = bucket.count(types)
        points.append((b, value))
    return points


# ---- summary ---------------------------------------------------------------------------

# One round trip when every hour is cached: the hours' sum(rows) come along.
_SUMMARY_SQL = """
SELECT
    (SELECT groupArray((b, r)) FROM (
        SELECT toUInt32(bucket) AS b, sum(rows) AS r FROM events_per_hour
        WHERE campaign = {campaign:String} GROUP BY b)),
    (SELECT count() FROM alerts FINAL WHERE campaign = {campaign:String} AND state = 'open'),
    count(), sum(valid_nodes), sum(valid_recruits), sum(clicks), sum(conversions),
    argMax(root, (size, root)), max(size)
FROM cascade_stats FINAL
WHERE campaign = {campaign:String}
"""
_VISITORS_SQL = """
SELECT uniqMerge(visitors) FROM visitors_per_month WHERE campaign = {campaign:String}
"""


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    events: dict[str, int]
    unique_visitors: int
    k_factor: float | None
    invitation_conversion_rate: float | None
    cascades: int
    largest_cascade: tuple[str, int] | None
    open_alerts: int


async def campaign_summary(ch: ClickHouse, counts: RollupCounts, campaign: str) -> CampaignSummary:
    """Events by type over the campaign's whole retention (hourly rollup), unique
    visitors (approximate, ``visitors_per_month``), cascade totals and open alerts."""
    [row] = await ch.aquery_rows(_SUMMARY_SQL, {"campaign": campaign})
    hour_rows, open_alerts, cascades, valid, recruits, clicks, conversions, root, size = row
    current = [(int(b), int(r)) for b, r in hour_rows]
    hours = await counts.read(ch, "events_per_hour", campaign, 3600, *ALL_TIME, current=current)
    totals = [0] * len(TYPES)
    for bucket in hours.values():
        for i, n in enumerate(bucket.events):
            totals[i] += n
    # Every insert for the campaign feeds visitors_per_month and moves the hours'
    # total sum(rows); a TTL drop moves the first hour. Unchanged: same visitors.
    fingerprint = (
        sum(r for _, r in current),
        min((b for b, _ in current), default=0),
        len(current),
    )
    visitors = counts.campaign_visitors(campaign, fingerprint)
    if visitors is None:
        [(merged,)] = await ch.aquery_rows(_VISITORS_SQL, {"campaign": campaign})
        visitors = int(merged or 0)
        counts.keep_campaign_visitors(campaign, fingerprint, visitors)
    return CampaignSummary(
        events=dict(zip(TYPES, totals, strict=True)),
        unique_visitors=visitors,
        k_factor=int(recruits) / int(valid) if valid else None,
        invitation_conversion_rate=int(conversions) / int(clicks) if clicks else None,
        cascades=int(cascades),
        largest_cascade=(str(root), int(size)) if cascades else None,
        open_alerts=int(open_alerts),
    )


# ---- channels and the funnel -----------------------------------------------------------

_CHANNELS_SQL = f"""
SELECT channel, type, uniqExactMerge(events)
FROM {{table:Identifier}}
WHERE {_RANGE} AND type IN ('view', 'click', 'share', 'convert')
GROUP BY channel, type
ORDER BY channel
"""
_FUNNEL_SQL = f"""
SELECT type, uniqExactMerge(events), uniqMerge(visitors)
FROM {{table:Identifier}}
WHERE {_RANGE} AND type IN ('view', 'click', 'share', 'convert')
GROUP BY type
"""
FUNNEL = (("view", "view"), ("click", "click"), ("share", "share"), ("convert", "convert"))
CHANNEL_TYPES = {"view": "views", "click": "clicks", "share": "shares", "convert": "conversions"}


def rollup_for(start: int, end: int) -> tuple[str, int, int]:
    """(table, start, end) for a range in epoch seconds: the hourly rollup when both ends
    are whole hours, else the per-minute one with the range widened to whole minutes."""
    if start % 3600 == 0 and end % 3600 == 0 or (start, end) == ALL_TIME:
        return "events_per_hour", start, end
    return "events_per_minute", start - start % 60, -(-end // 60) * 60


async def channels(ch: ClickHouse, campaign: str, start: int, end: int) -> list[dict[str, Any]]:
    """Views, clicks, shares and conversions per channel ('' = none) in ``[start, end)``."""
    table, start, end = rollup_for(start, end)
    params = {"table": table, "campaign": campaign, "start": start, "end": end}
    by_channel: dict[str, dict[str, Any]] = {}
    for channel, kind, n in await ch.aquery_rows(_CHANNELS_SQL, params):
        row = by_channel.setdefault(
            str(channel), {"channel": str(channel), **dict.fromkeys(CHANNEL_TYPES.values(), 0)}
        )
        row[CHANNEL_TYPES[str(kind)]] = int(n)
    return list(by_channel.values())


@dataclass(frozen=True, slots=True)
class FunnelStep:
    step: Literal["view", "click", "share", "convert"]
    events: int
    visitors: int
    rate: float | None


async def funnel(ch: ClickHouse, campaign: str, start: int, end: int) -> list[FunnelStep]:
    """view -> click -> share -> convert in ``[start, end)``: events, unique visitors
    (approximate) and each step's visitors over the previous step's."""
    table, start, end = rollup_for(start, end)
    params = {"table": table, "campaign": campaign, "start": start, "end": end}
    found = {str(t): (int(n), int(v)) for t, n, v in await ch.aquery_rows(_FUNNEL_SQL, params)}
    steps: list[FunnelStep] = []
    previous: int | None = None
    for step, kind in FUNNEL:
        events, visitors = found.get(kind, (0, 0))
        rate = visitors / previous if previous else None
        steps.append(FunnelStep(step, events, visitors, rate))  # type: ignore[arg-type]
        previous = visitors
    return steps


# ---- cascades --------------------------------------------------------------------------

ORDER_COLUMNS = {
    "size": "size",
    "reach": "reach",
    "virality": "virality",
    "growth": "growth_per_min",
}
_CASCADES_SQL = """
SELECT root, size, reach, depth, max_breadth, virality, growth_per_min, clicks, conversions,
       toUnixTimestamp64Milli(first_ts), toUnixTimestamp64Milli(last_ts), forecast_size,
       {key:Identifier}
FROM cascade_stats FINAL
WHERE campaign = {campaign:String}
  AND (NOT {after:Bool} OR ({key:Identifier}, root) < ({after_key:Float64}, {after_root:String}))
ORDER BY {key:Identifier} DESC, root DESC
LIMIT {limit:UInt32}
"""


async def cascades(
    ch: ClickHouse,
    campaign: str,
    order_by: str,
    limit: int,
    after: tuple[float, str] | None = None,
) -> list[tuple[dict[str, Any], float]]:
    """The campaign's cascades (latest snapshots), descending by ``order_by`` then root,
    starting after ``after`` (the last row's (key, root)) when given: each as its
    API row and the value ordered by (for the next page's cursor)."""
    rows = await ch.aquery_rows(
        _CASCADES_SQL,
        {
            "campaign": campaign,
            "key": ORDER_COLUMNS[order_by],
            "after": after is not None,
            "after_key": after[0] if after else 0.0,
            "after_root": after[1] if after else "",
            "limit": limit,
        },
    )
    return [
        (
            {
                "root": str(r[0]),
                "size": int(r[1]),
                "reach": int(r[2]),
                "depth": int(r[3]),
                "max_breadth": int(r[4]),
                "virality": float(r[5]),
                "growth_per_min": float(r[6]),
                "clicks": int(r[7]),
                "conversions": int(r[8]),
                "first_ts": iso_ms(int(r[9])),
                "last_ts": iso_ms(int(r[10])),
                "forecast_size": None if r[11] is None else float(r[11]),
            },
            r[12],
        )  # fmt: skip
        for r in rows
    ]

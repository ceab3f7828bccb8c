"""Per-campaign cascade metrics, read from ``cascade_stats`` (written by consumers/cascades).

Each cascade lives on one partition, so per-campaign numbers are sums over
the latest snapshot of each of its cascades (``FINAL``):

- K-factor: new sharers recruited per sharer, ``Σ valid_recruits / Σ valid_nodes``
  (same-origin and bot shares excluded). Every recruit is also a sharer, so a
  finished cascade's K is below 1; it approaches 1 as cascades grow deep.
  For "is it spreading now" use the windowed K of the ``spread.viral`` signal.
- invitation-to-conversion rate: conversions per credited click.
- top spreaders by descendants and by direct children: exact, because a node
  belongs to one cascade and each snapshot keeps its cascade's top 10.
- channel mix per generation, and cascades counted by size bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.storage.clickhouse import ClickHouse

SIZE_BUCKETS = ("1", "2-10", "11-100", "101-1000", "1001+")

_TOTALS_SQL = """
SELECT count(), sum(size), sum(valid_nodes), sum(valid_recruits), sum(clicks),
       sum(conversions), sum(self_referrals), sum(same_origin), sum(inflated), sum(orphans),
       max(size)
FROM cascade_stats FINAL WHERE campaign = {campaign:String}
"""
_TOP_SQL = """
SELECT root, spreader.1 AS node, spreader.2 AS count
FROM cascade_stats FINAL ARRAY JOIN {column:Identifier} AS spreader
WHERE campaign = {campaign:String}
ORDER BY count DESC, node DESC LIMIT {limit:UInt32}
"""
_CHANNELS_SQL = """
SELECT mix.1 AS generation, mix.2 AS channel, sum(mix.3) AS shares
FROM cascade_stats FINAL ARRAY JOIN channel_mix AS mix
WHERE campaign = {campaign:String}
GROUP BY generation, channel ORDER BY generation, channel
"""
_BUCKETS_SQL = """
SELECT multiIf(size = 1, '1', size <= 10, '2-10', size <= 100, '11-100',
               size <= 1000, '101-1000', '1001+') AS bucket, count()
FROM cascade_stats FINAL WHERE campaign = {campaign:String} GROUP BY bucket
"""


@dataclass(frozen=True)
class Spreader:
    root: str
    node: str
    count: int


@dataclass(frozen=True)
class CampaignCascades:
    cascades: int
    shares: int
    largest: int
    k_factor: float
    invitation_conversion: float
    clicks: int
    conversions: int
    self_referrals: int
    same_origin: int
    inflated_clicks: int
    orphans: int
    top_by_descendants: list[Spreader]
    top_by_children: list[Spreader]
    channels_by_generation: list[tuple[int, str, int]]
    size_buckets: dict[str, int]


async def campaign_cascades(ch: ClickHouse, campaign: str, top: int = 10) -> CampaignCascades:
    """The campaign's cascade metrics (all zero for a campaign without cascades)."""
    params: dict[str, object] = {"campaign": campaign}
    totals = (await ch.aquery_rows(_TOTALS_SQL, params))[0]
    count, shares, valid, recruits, clicks, conversions, selfref, same, inflated, orphans, big = (
        int(value or 0) for value in totals
    )

    channels = await channel_mix(ch, campaign)
    buckets = dict.fromkeys(SIZE_BUCKETS, 0)
    for bucket, n in await ch.aquery_rows(_BUCKETS_SQL, params):
        buckets[str(bucket)] = int(n)
    return CampaignCascades(
        cascades=count,
        shares=shares,
        largest=big,
        k_factor=recruits / valid if valid else 0.0,
        invitation_conversion=conversions / clicks if clicks else 0.0,
        clicks=clicks,
        conversions=conversions,
        self_referrals=selfref,
        same_origin=same,
        inflated_clicks=inflated,
        orphans=orphans,
        top_by_descendants=await top_spreaders(ch, campaign, "descendants", top),
        top_by_children=await top_spreaders(ch, campaign, "children", top),
        channels_by_generation=channels,
        size_buckets=buckets,
    )


SPREADER_COLUMNS = {"descendants": "top_descendants", "children": "top_children"}


async def top_spreaders(ch: ClickHouse, campaign: str, by: str, limit: int) -> list[Spreader]:
    """The campaign's top sharers ``by`` descendants or direct children (flagged nodes
    excluded), largest first, ties by node id descending; at most 10 per cascade."""
    params = {"campaign": campaign, "column": SPREADER_COLUMNS[by], "limit": limit}
    rows = await ch.aquery_rows(_TOP_SQL, params)
    return [Spreader(str(r), str(n), int(c)) for r, n, c in rows]


async def channel_mix(ch: ClickHouse, campaign: str) -> list[tuple[int, str, int]]:
    """(generation, channel ('' = none), shares) over the campaign's cascades."""
    rows = await ch.aquery_rows(_CHANNELS_SQL, {"campaign": campaign})
    return [(int(g), str(c), int(n)) for g, c, n in rows]

-- Share cascades, written by the cascades consumer (consumers/cascades).
--
-- Ids are the share token's u64s as 16 lower-case hex digits, as in events
-- (root, node, parent). Every state change of the consumer leaves a row in
-- cascade_nodes or cascade_touches: those two tables are what the consumer
-- restores a cascade from after a restart or a rebalance, so the restored
-- state equals that of a consumer that never stopped. cascade_stats is the
-- output: one snapshot per changed cascade per flush interval.
--
-- Replays: a consumer restarted between its write and its commit writes the
-- same rows again (same version, same content); ReplacingMergeTree collapses
-- them. Retried inserts carry the batch's dedup token.

-- One row per node (share), rewritten with a higher version when its state,
-- clicks or conversions change. state: attached | pending (parent not seen
-- yet) | orphan (parent never came within orphan_after_s; kept at its
-- recorded depth). flags: 1 same-origin (sharer's visitor or network bucket
-- equals the parent sharer's), 2 bot, 4 the root's own share event was seen.
-- sharer/net are the keyed daily hashes from the event, never an address.
CREATE TABLE IF NOT EXISTS cascade_nodes
(
    campaign LowCardinality(String),
    root String,
    node String,
    parent Nullable(String),
    depth UInt16,
    state LowCardinality(String),
    sharer Nullable(String),
    net Nullable(String),
    channel LowCardinality(Nullable(String)),
    ts DateTime64(3, 'UTC'),
    clicks UInt32,
    conversions UInt32,
    flags UInt8,
    version UInt64,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (campaign, root, node)
TTL toDateTime(ts) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- One row per view, click, signup or conversion that reached a node of a
-- cascade (bots excluded): the consumer's de-duplication memory (event_id),
-- and what reach, click inflation and self-referral are recomputed from.
CREATE TABLE IF NOT EXISTS cascade_touches
(
    campaign LowCardinality(String),
    root String,
    node String,
    event_id UUID,
    kind LowCardinality(String),
    visitor Nullable(String),
    ts DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign, root, event_id)
TTL toDateTime(ts) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Snapshots of a cascade's metrics; the row with the highest version is the
-- current one (read with FINAL or argMax). version counts the consumer's
-- state changes of this cascade, so a replayed snapshot has the version it
-- had. K-factor per campaign = sum(valid_recruits) / sum(valid_nodes)
-- (same-origin and bot shares excluded). top_* are (node, count) pairs:
-- descendants and direct children, flagged nodes excluded. channel_mix is
-- (generation, channel, shares).
CREATE TABLE IF NOT EXISTS cascade_stats
(
    campaign LowCardinality(String),
    root String,
    version UInt64,
    size UInt32,
    tree_size UInt32,
    pending UInt32,
    orphans UInt32,
    reach UInt32,
    depth UInt16,
    breadth Array(UInt32),
    max_breadth UInt32,
    branching Float64,
    reproduction Array(Float64),
    clicks UInt64,
    conversions UInt64,
    first_ts DateTime64(3, 'UTC'),
    last_ts DateTime64(3, 'UTC'),
    growth_per_min Float64,
    doubling_s Nullable(Float64),
    wiener UInt64,
    virality Float64,
    valid_nodes UInt32,
    valid_recruits UInt32,
    self_referrals UInt32,
    same_origin UInt32,
    inflated UInt32,
    forecast_size Nullable(Float64),
    forecast_method LowCardinality(String),
    infectiousness Float64,
    top_descendants Array(Tuple(String, UInt32)),
    top_children Array(Tuple(String, UInt32)),
    channel_mix Array(Tuple(UInt16, String, UInt32)),
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (campaign, root)
TTL toDateTime(last_ts) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Negative buzz and alerts, written by the alerts consumer (consumers/alerts).
--
-- buzz_items is the source of truth: one row per scored text, reaction,
-- report or unsubscribe (the buzz consumer scores them; consumers/buzz).
-- A replayed item has the same event_id and minute, so ReplacingMergeTree
-- collapses it; the consumer restores its windows and baselines from here.
-- sample is the redacted text (no e-mails, URLs, phone numbers, handles),
-- kept only for negative items, for alert explanations.
CREATE TABLE IF NOT EXISTS buzz_items
(
    campaign LowCardinality(String),
    event_id UUID,
    type LowCardinality(String),
    root Nullable(String),
    node Nullable(String),
    channel LowCardinality(Nullable(String)),
    ts DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    label Enum8('negative' = -1, 'neutral' = 0, 'positive' = 1),
    score Float32,
    lang LowCardinality(String),
    negative_terms Array(String),
    sample String,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (campaign, toStartOfMinute(ts), event_id)
TTL toDateTime(ts) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Per event-time minute: the whole campaign (branch = '') and each cascade
-- (branch = the cascade root, 16 hex digits). Recomputed from buzz_items for
-- every minute an item lands in, so a late item corrects its minute; the row
-- with the highest version is current (read with FINAL or argMax).
CREATE TABLE IF NOT EXISTS buzz_windows
(
    campaign LowCardinality(String),
    branch String,
    minute DateTime('UTC'),
    volume UInt32,
    negative UInt32,
    positive UInt32,
    negative_shares UInt32,
    positive_shares UInt32,
    negative_share Float64,
    top_negative_terms Array(Tuple(String, UInt64)),
    languages Map(String, UInt64),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (campaign, minute, branch)
TTL minute + INTERVAL {events_ttl_days} DAY;

-- Alerts: one row per transition (open, then resolved) under one id; the
-- resolved row has the higher version. explanation and subjects are JSON.
CREATE TABLE IF NOT EXISTS alerts
(
    id String,
    kind LowCardinality(String),
    campaign LowCardinality(String),
    state LowCardinality(String),
    opened_at DateTime64(3, 'UTC'),
    resolved_at Nullable(DateTime64(3, 'UTC')),
    value Float64,
    baseline Float64,
    threshold Float64,
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    numbers String,
    subjects String,
    explanation String,
    version UInt8,
    written_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (campaign, id)
TTL toDateTime(opened_at) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- Every v1 event (app/events.py EventV1, columns in its field order), one row
-- per event_id, plus where the sink read it (_topic, _partition, _offset).
--
-- Times: the wire carries epoch milliseconds; the sink passes those ints as they
-- are, and clickhouse-connect writes an int into DateTime64(3) as the raw tick
-- count, which IS epoch ms (no datetime objects, no time zone involved).
--
-- Dedupe: a replayed event is byte-identical, so every sorting-key column
-- matches and ReplacingMergeTree collapses the copies at merge time; read with
-- FINAL (or GROUP BY event_id) for exact answers before merges catch up. The key
-- (campaign, hour, type, event_id) serves the usual "this campaign, this time
-- range, these types" scans while keeping event_id the tie-breaker, so within a
-- campaign-and-time query event_id is the dedupe key. Caveat: copies of one
-- event_id that differ in campaign, type or the hour of ts are NOT collapsed
-- (e.g. a client retry with its own event_id but no ts, straddling an hour:
-- the server stamps each copy with its receive time); count(DISTINCT
-- event_id), and the rollups' uniqExact within a bucket, still count it once.
--
-- Insert dedup: non_replicated_deduplication_window makes a retried insert with
-- the same insert_deduplication_token a no-op (Replicated tables do this always).
-- TTL: {events_ttl_days} is substituted by the migration runner from settings;
-- with monthly partitions and ttl_only_drop_parts, whole parts are dropped once
-- all their rows are past the TTL.
CREATE TABLE IF NOT EXISTS events
(
    v UInt8,
    event_id UUID,
    type LowCardinality(String),
    campaign LowCardinality(String),
    ts DateTime64(3, 'UTC'),
    received_at DateTime64(3, 'UTC'),
    source LowCardinality(String),
    token Nullable(String),
    root Nullable(String),
    node Nullable(String),
    parent Nullable(String),
    depth Nullable(UInt16),
    channel LowCardinality(Nullable(String)),
    url Nullable(String),
    text Nullable(String),
    value Nullable(Float64),
    reaction LowCardinality(Nullable(String)),
    preview_of LowCardinality(Nullable(String)),
    visitor Nullable(String),
    country LowCardinality(Nullable(String)),
    bot Bool,
    browser LowCardinality(Nullable(String)),
    os LowCardinality(Nullable(String)),
    device LowCardinality(Nullable(String)),
    privacy LowCardinality(Nullable(String)),
    _topic LowCardinality(String),
    _partition UInt16,
    _offset UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (campaign, toStartOfHour(ts), type, event_id)
TTL toDateTime(ts) + INTERVAL {events_ttl_days} DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

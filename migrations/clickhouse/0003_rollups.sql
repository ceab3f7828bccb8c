-- Per-minute and per-hour counts per (campaign, bucket, type, channel), fed by
-- materialized views on every insert into events.
--
-- events holds uniqExact states of event_id, so an event_id delivered twice
-- (in one insert or in two) never changes a count; visitors holds uniq states
-- of visitor, and uniq skips NULL (DNT/GPC visitors are not counted). A missing
-- channel is stored as '' because sorting-key columns cannot be Nullable.
-- Read with uniqExactMerge(events) and uniqMerge(visitors) GROUP BY the key
-- (see app/storage/migrate.py). Bots are included, as in events.
CREATE TABLE IF NOT EXISTS events_per_minute
(
    campaign LowCardinality(String),
    bucket DateTime('UTC'),
    type LowCardinality(String),
    channel LowCardinality(String),
    events AggregateFunction(uniqExact, UUID),
    visitors AggregateFunction(uniq, Nullable(String))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (campaign, bucket, type, channel)
TTL bucket + INTERVAL {events_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;

CREATE TABLE IF NOT EXISTS events_per_hour
(
    campaign LowCardinality(String),
    bucket DateTime('UTC'),
    type LowCardinality(String),
    channel LowCardinality(String),
    events AggregateFunction(uniqExact, UUID),
    visitors AggregateFunction(uniq, Nullable(String))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(bucket)
ORDER BY (campaign, bucket, type, channel)
TTL bucket + INTERVAL {events_ttl_days} DAY
SETTINGS ttl_only_drop_parts = 1;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_minute_mv TO events_per_minute AS
SELECT
    campaign,
    toStartOfMinute(ts) AS bucket,
    type,
    ifNull(channel, '') AS channel,
    uniqExactState(event_id) AS events,
    uniqState(visitor) AS visitors
FROM events
GROUP BY campaign, bucket, type, channel;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_per_hour_mv TO events_per_hour AS
SELECT
    campaign,
    toStartOfHour(ts) AS bucket,
    type,
    ifNull(channel, '') AS channel,
    uniqExactState(event_id) AS events,
    uniqState(visitor) AS visitors
FROM events
GROUP BY campaign, bucket, type, channel;

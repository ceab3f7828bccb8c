-- What the query API needs to read the rollups fast (app/storage/query.py).
--
-- rows: how many events rows each rollup row summarizes (count(), summed on
-- merge). A bucket's sum(rows) grows with every insert that touches it and
-- is unchanged by background merges, so it tells a reader, without merging
-- any uniqExact state, whether the bucket changed since it last counted it:
-- the query API keeps each bucket's exact counts with the sum(rows) they were
-- read at, and recounts only the buckets whose sum moved. Rows written before
-- this migration read as 0 (their buckets stay countable: the sum still moves
-- when a new insert lands in them). Counts still come from the uniqExact
-- states; rows counts duplicates and is never shown as a count of events.
ALTER TABLE events_per_minute ADD COLUMN IF NOT EXISTS rows SimpleAggregateFunction(sum, UInt64);

ALTER TABLE events_per_hour ADD COLUMN IF NOT EXISTS rows SimpleAggregateFunction(sum, UInt64);

ALTER TABLE events_per_minute_mv MODIFY QUERY
SELECT
    campaign,
    toStartOfMinute(ts) AS bucket,
    type,
    ifNull(channel, '') AS channel,
    uniqExactState(event_id) AS events,
    uniqState(visitor) AS visitors,
    count() AS rows
FROM events
GROUP BY campaign, bucket, type, channel;

ALTER TABLE events_per_hour_mv MODIFY QUERY
SELECT
    campaign,
    toStartOfHour(ts) AS bucket,
    type,
    ifNull(channel, '') AS channel,
    uniqExactState(event_id) AS events,
    uniqState(visitor) AS visitors,
    count() AS rows
FROM events
GROUP BY campaign, bucket, type, channel;

-- Approximate unique visitors per campaign and calendar month (uniq skips NULL:
-- DNT/GPC visitors are not counted). The summary's all-time unique visitors
-- merge at most one state per month (each at most 64 Ki hashes) instead of
-- every hourly state. A month is dropped once all of its events are past the
-- events TTL. The table is created filled from what events already holds
-- (CREATE ... AS SELECT), then the view keeps it up: like every migration, run
-- it before the sink starts, or events written in between are not counted here.
CREATE TABLE IF NOT EXISTS visitors_per_month
(
    campaign LowCardinality(String),
    month Date,
    visitors AggregateFunction(uniq, Nullable(String))
)
ENGINE = AggregatingMergeTree
ORDER BY (campaign, month)
TTL month + INTERVAL 1 MONTH + INTERVAL {events_ttl_days} DAY
AS SELECT campaign, toStartOfMonth(ts) AS month, uniqState(visitor) AS visitors
FROM events
GROUP BY campaign, month;

CREATE MATERIALIZED VIEW IF NOT EXISTS visitors_per_month_mv TO visitors_per_month AS
SELECT campaign, toStartOfMonth(ts) AS month, uniqState(visitor) AS visitors
FROM events
GROUP BY campaign, month;

-- Refused and undecodable messages, as the consumers' dead-letter step writes
-- them: {reason, field, message, source, received_at, payload} plus where the
-- message was read. Kept 30 days after insertion (our clock, not the payload's).
CREATE TABLE IF NOT EXISTS events_dlq
(
    reason LowCardinality(String),
    field Nullable(String),
    message String,
    source LowCardinality(String),
    payload String,
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    received_at DateTime64(3, 'UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(inserted_at)
ORDER BY (reason, received_at)
TTL toDateTime(inserted_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

-- The network bucket of every event (app/events.py EventV1.net): a keyed daily
-- hash of the client's IPv4 /24 or IPv6 /48 and the campaign, NULL under
-- DNT/GPC or when the address is unknown. Rows written before this migration
-- read as NULL (no bucket was ever computed for them; the raw address that would
-- be needed is never stored). AFTER visitor keeps the table in EventV1's field
-- order; the sink names its columns on insert, so the order is for readers.
--
-- A metadata-only change: existing parts are not rewritten.
ALTER TABLE events ADD COLUMN IF NOT EXISTS net Nullable(String) AFTER visitor;

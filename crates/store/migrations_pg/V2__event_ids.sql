-- Stable event ids (see migrations/V2__event_ids.sql). A unique index lets
-- many NULLs in PostgreSQL too (NULLS DISTINCT is the default).
ALTER TABLE events ADD COLUMN event_id text;
CREATE UNIQUE INDEX events_by_event_id ON events (event_id);

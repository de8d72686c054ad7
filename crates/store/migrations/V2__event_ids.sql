-- Stable event ids: the engine mints one per event (seed + counter), and an
-- append whose id is already stored is ignored, so a retried commit does not
-- write an event twice. Rows stored before ids existed keep a NULL id (a
-- UNIQUE index allows many NULLs) and read as the nil id.
ALTER TABLE events ADD COLUMN event_id TEXT;
CREATE UNIQUE INDEX events_by_event_id ON events (event_id);

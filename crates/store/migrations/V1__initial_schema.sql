-- Drover store, first schema.
--
-- Each record table keeps the full record as JSON in `record` (the model crate
-- owns its shape) plus the columns we filter, order or index on. Times are
-- integer microseconds since the Unix epoch. STRICT makes SQLite refuse a value
-- of the wrong type instead of silently storing it.

CREATE TABLE services (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    state_since INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;
-- Names are not unique: a name may be reused once its service is deleted.
CREATE INDEX services_by_name ON services (name);
CREATE INDEX services_by_state ON services (state);

CREATE TABLE instances (
    id          TEXT    NOT NULL PRIMARY KEY,
    service_id  TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    state_since INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;
CREATE INDEX instances_by_service ON instances (service_id);
CREATE INDEX instances_by_state ON instances (state);

CREATE TABLE actions (
    id          TEXT    NOT NULL PRIMARY KEY,
    service_id  TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deadline    INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;
CREATE INDEX actions_by_state ON actions (state);
CREATE INDEX actions_by_service ON actions (service_id, created_at);
CREATE INDEX actions_by_created ON actions (created_at);

CREATE TABLE images (
    id         TEXT    NOT NULL PRIMARY KEY,
    engine     TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    record     TEXT    NOT NULL
) STRICT;

-- Append-only. AUTOINCREMENT so a seq is never reused, even after the newest
-- rows are deleted by a future retention job: readers page with `after_seq`.
CREATE TABLE events (
    seq         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    service     TEXT,
    instance_id TEXT,
    record      TEXT    NOT NULL
) STRICT;
CREATE INDEX events_by_service ON events (service, seq);
CREATE INDEX events_by_instance ON events (instance_id, seq);

CREATE TABLE audit (
    seq    INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    record TEXT    NOT NULL
) STRICT;

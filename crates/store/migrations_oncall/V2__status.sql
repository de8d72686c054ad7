-- The status site: incidents with their updates, and each component's
-- daily samples (the 90-day uptime bars).

CREATE TABLE incidents (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER,
    body        TEXT NOT NULL
);
CREATE INDEX incidents_created ON incidents (created_at);

CREATE TABLE component_days (
    component TEXT NOT NULL,
    day       TEXT NOT NULL,
    samples   INTEGER NOT NULL,
    degraded  INTEGER NOT NULL,
    partial   INTEGER NOT NULL,
    major     INTEGER NOT NULL,
    PRIMARY KEY (component, day)
);

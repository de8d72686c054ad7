-- The on-call store (oncall.db): pages, their transitions, notifications
-- and the company-wide feed. Kept apart from drover.db so the pager can be
-- written and migrated on its own.

CREATE TABLE pages (
    id         TEXT PRIMARY KEY,
    team       TEXT NOT NULL,
    status     TEXT NOT NULL,
    dedup_key  TEXT NOT NULL,
    opened_at  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    body       TEXT NOT NULL
);
CREATE INDEX pages_team_opened ON pages (team, opened_at);
CREATE INDEX pages_status ON pages (status);
CREATE INDEX pages_opened ON pages (opened_at);

CREATE TABLE page_transitions (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    page TEXT NOT NULL,
    at   INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX page_transitions_page ON page_transitions (page);

-- state: pending (not yet delivered; re-delivered after a restart),
-- delivered, failed.
CREATE TABLE notifications (
    id           TEXT PRIMARY KEY,
    page         TEXT NOT NULL,
    at           INTEGER NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    channel      TEXT,
    error        TEXT,
    delivered_at INTEGER,
    body         TEXT NOT NULL
);
CREATE INDEX notifications_page ON notifications (page);
CREATE INDEX notifications_state ON notifications (state);

-- state: pending, delivered, failed, stored (no feed channel configured).
CREATE TABLE feed (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    at    INTEGER NOT NULL,
    page  TEXT,
    team  TEXT,
    text  TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX feed_state ON feed (state);

-- The pager's tables (issue 16): with a PostgreSQL store they are shared
-- by every node like the fleet, so pages, incidents and notifications not
-- yet delivered are the node's that takes the fleet over. An embedded
-- SQLite store keeps them in the data dir's oncall.db (the same tables,
-- migrations_oncall); `drover store migrate` copies them from there.

CREATE TABLE pages (
    id         text   PRIMARY KEY,
    team       text   NOT NULL,
    status     text   NOT NULL,
    dedup_key  text   NOT NULL,
    opened_at  bigint NOT NULL,
    updated_at bigint NOT NULL,
    body       text   NOT NULL
);
CREATE INDEX pages_team_opened ON pages (team, opened_at);
CREATE INDEX pages_status ON pages (status);
CREATE INDEX pages_opened ON pages (opened_at);

CREATE TABLE page_transitions (
    seq  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    page text   NOT NULL,
    at   bigint NOT NULL,
    body text   NOT NULL
);
CREATE INDEX page_transitions_page ON page_transitions (page);

-- state: pending (not yet delivered; re-delivered by the node that starts
-- or takes over), delivered, failed.
CREATE TABLE notifications (
    id           text   PRIMARY KEY,
    page         text   NOT NULL,
    at           bigint NOT NULL,
    state        text   NOT NULL,
    attempts     bigint NOT NULL DEFAULT 0,
    channel      text,
    error        text,
    delivered_at bigint,
    body         text   NOT NULL
);
CREATE INDEX notifications_page ON notifications (page);
CREATE INDEX notifications_state ON notifications (state);

-- state: pending, delivered, failed, stored (no feed channel configured).
CREATE TABLE feed (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at    bigint NOT NULL,
    page  text,
    team  text,
    text  text   NOT NULL,
    state text   NOT NULL
);
CREATE INDEX feed_state ON feed (state);

CREATE TABLE incidents (
    id          text   PRIMARY KEY,
    created_at  bigint NOT NULL,
    resolved_at bigint,
    body        text   NOT NULL
);
CREATE INDEX incidents_created ON incidents (created_at);

CREATE TABLE component_days (
    component text   NOT NULL,
    day       text   NOT NULL,
    samples   bigint NOT NULL,
    degraded  bigint NOT NULL,
    partial   bigint NOT NULL,
    major     bigint NOT NULL,
    PRIMARY KEY (component, day)
);

CREATE TABLE components (
    name text PRIMARY KEY,
    body text NOT NULL
);

-- The web dashboard's sessions (issue 16): in the store every node shares,
-- so a session opened through one node is good on every node (a page is
-- rendered by whichever node holds what it shows). A row is keyed by the
-- SHA-256 of the session id (the cookie's secret is never stored); the
-- token the session acts with is sealed with the nodes' shared key.
-- `until`: microseconds since the epoch.
CREATE TABLE ui_sessions (
    id_hash      text   NOT NULL PRIMARY KEY,
    token_sealed text   NOT NULL,
    csrf         text   NOT NULL,
    until        bigint NOT NULL
);
CREATE INDEX ui_sessions_by_until ON ui_sessions (until);

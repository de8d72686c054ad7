-- Commands a standby accepted while the holder did not answer (see
-- migrations_pg/V12__deferred_commands.sql). The embedded store serves one
-- node, which never defers; the table exists so both dialects keep the
-- same tables (`drover store migrate` copies them one to one).
CREATE TABLE deferred_commands (
    id          TEXT    NOT NULL PRIMARY KEY,
    received_at INTEGER NOT NULL,
    received_by TEXT    NOT NULL,
    token_id    TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    request     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    taken_by    TEXT,
    generation  INTEGER,
    finished_at INTEGER,
    status      INTEGER,
    answer      TEXT
);
CREATE INDEX deferred_commands_by_state ON deferred_commands (state, received_at);

-- The web dashboard's sessions (see migrations_pg/V15__ui_sessions.sql):
-- keyed by the SHA-256 of the session id, the token sealed with the data
-- dir's key; a restart keeps them.
CREATE TABLE ui_sessions (
    id_hash      TEXT    NOT NULL PRIMARY KEY,
    token_sealed TEXT    NOT NULL,
    csrf         TEXT    NOT NULL,
    until        INTEGER NOT NULL
) STRICT;
CREATE INDEX ui_sessions_by_until ON ui_sessions (until);

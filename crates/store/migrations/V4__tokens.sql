-- API tokens. Only the SHA-256 of a token is kept (`hash`, hex): tokens are
-- 256-bit random strings, so a fast hash is as good as a slow one and
-- lets every request be checked without a KDF. A name is unique among the
-- live tokens (the server checks it, since expiry is a matter of time); a
-- revoked token's row stays, for the audit trail.
CREATE TABLE tokens (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    team        TEXT,
    host        TEXT,
    hash        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    last_used   INTEGER
) STRICT;
CREATE INDEX tokens_by_name ON tokens (name);

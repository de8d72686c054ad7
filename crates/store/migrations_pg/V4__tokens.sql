-- API tokens (see migrations/V4__tokens.sql). Created for the same version
-- numbers as SQLite; in this release the tokens are still kept in the
-- SQLite file of the data dir beside a PostgreSQL store (docs/architecture.md).
CREATE TABLE tokens (
    id          text   NOT NULL PRIMARY KEY,
    name        text   NOT NULL,
    role        text   NOT NULL,
    team        text,
    host        text,
    hash        text   NOT NULL UNIQUE,
    created_at  bigint NOT NULL,
    expires_at  bigint,
    revoked_at  bigint,
    last_used   bigint
);
CREATE INDEX tokens_by_name ON tokens (name);

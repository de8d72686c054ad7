-- The fleet's lease (see migrations_pg/V9__leases.sql). The embedded store
-- serves one node (the data dir's lock): the table exists so both dialects
-- keep the same tables (`drover store migrate` copies them one to one).
CREATE TABLE leases (
    shard      INTEGER NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    generation INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    address    TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE nodes (
    name       TEXT    NOT NULL PRIMARY KEY,
    address    TEXT    NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);

-- What the status site sums on a fleet split into shards (see
-- migrations_pg/V14__shard_health.sql). The embedded store serves one node
-- and one shard; the table exists so both dialects keep the same tables
-- (`drover store migrate` copies them one to one).
CREATE TABLE shard_health (
    shard      INTEGER NOT NULL PRIMARY KEY,
    generation INTEGER NOT NULL,
    node       TEXT    NOT NULL,
    health     TEXT    NOT NULL,
    at         INTEGER NOT NULL
) STRICT;

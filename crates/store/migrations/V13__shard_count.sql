-- Settings of the control plane as a whole (see
-- migrations_pg/V13__shard_count.sql). The embedded store serves one node
-- and one shard; the table exists so both dialects keep the same tables
-- (`drover store migrate` copies them one to one).
CREATE TABLE cluster_settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

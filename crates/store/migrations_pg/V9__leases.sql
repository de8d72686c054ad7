-- The fleet's lease (issue 16): which control-plane node may act on the
-- fleet stored here, with a generation that rises on every acquisition.
-- Every commit of the holder checks holder and generation in its own
-- transaction, so a node that lost the lease writes nothing. Times are
-- microseconds of the database's clock. One row per shard; this release
-- has one shard, 0: the whole fleet.
CREATE TABLE leases (
    shard      bigint NOT NULL PRIMARY KEY,
    holder     text   NOT NULL,
    generation bigint NOT NULL,
    expires_at bigint NOT NULL,
    -- The holder's API URL: standbys forward every request there.
    address    text   NOT NULL DEFAULT ''
);

-- Every node sharing the store, as last seen (by the database's clock):
-- standbys note themselves while they wait, the holder when it renews.
CREATE TABLE nodes (
    name       text   NOT NULL PRIMARY KEY,
    address    text   NOT NULL,
    started_at bigint NOT NULL,
    last_seen  bigint NOT NULL
);

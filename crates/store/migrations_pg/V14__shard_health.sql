-- What the public status site sums on a fleet split into shards (issue
-- 16): each node writes, every few seconds, per shard it holds, how its
-- engine sees that shard's services (JSON, per engine kind: live, down,
-- braked), with the generation it holds the shard with. A row is only
-- ever replaced by a holder of the same or a newer generation, so a node
-- that lost the shard cannot write over its new holder's. `at`: microseconds
-- of the database's clock.
CREATE TABLE shard_health (
    shard      bigint NOT NULL PRIMARY KEY,
    generation bigint NOT NULL,
    node       text   NOT NULL,
    health     text   NOT NULL,
    at         bigint NOT NULL
);

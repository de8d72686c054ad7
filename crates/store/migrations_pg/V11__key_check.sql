-- Every node of one control plane must hold the same secret key (what one
-- node seals, another must open). The first node to start on the store
-- writes a check derived from its key (HMAC, it tells nothing of the key);
-- a node whose key gives another check refuses to start.
CREATE TABLE key_check (
    id    bigint NOT NULL PRIMARY KEY CHECK (id = 0),
    check_value text   NOT NULL,
    node  text   NOT NULL,
    at    bigint NOT NULL
);

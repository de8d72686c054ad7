-- Hosts (see migrations/V5__hosts.sql).
CREATE TABLE hosts (
    name          text   NOT NULL PRIMARY KEY,
    zone          text   NOT NULL,
    state         text   NOT NULL,
    registered_at bigint NOT NULL,
    record        text   NOT NULL
);

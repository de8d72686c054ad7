-- Hosts: the machines instances are placed on (issue 11). One row per host
-- name; the full record is JSON in `record` like the other record tables.
-- Instances name their host inside their own record (`host`); a record
-- written before this table existed has none, and the control plane's
-- built-in host adopts it at start-up.
CREATE TABLE hosts (
    name          TEXT    NOT NULL PRIMARY KEY,
    zone          TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    registered_at INTEGER NOT NULL,
    record        TEXT    NOT NULL
) STRICT;

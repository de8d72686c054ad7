-- Archives of deleted services (see migrations/V8__archives.sql).
CREATE TABLE archives (
    id           text   NOT NULL PRIMARY KEY,
    service_name text   NOT NULL,
    state        text   NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    record       text   NOT NULL
);
CREATE INDEX archives_by_name ON archives (service_name, state);

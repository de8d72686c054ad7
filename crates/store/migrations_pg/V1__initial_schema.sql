-- Drover store, first schema: the PostgreSQL dialect of
-- migrations/V1__initial_schema.sql (same version numbers, same tables and
-- columns, so one test suite runs against both stores).
--
-- `record` is the record's JSON as text, byte for byte what the model
-- serialized (the store never queries inside it). Times are bigint
-- microseconds since the Unix epoch.

CREATE TABLE services (
    id          text   NOT NULL PRIMARY KEY,
    name        text   NOT NULL,
    state       text   NOT NULL,
    created_at  bigint NOT NULL,
    state_since bigint NOT NULL,
    record      text   NOT NULL
);
CREATE INDEX services_by_name ON services (name);
CREATE INDEX services_by_state ON services (state);

CREATE TABLE instances (
    id          text   NOT NULL PRIMARY KEY,
    service_id  text   NOT NULL,
    state       text   NOT NULL,
    created_at  bigint NOT NULL,
    state_since bigint NOT NULL,
    record      text   NOT NULL
);
CREATE INDEX instances_by_service ON instances (service_id);
CREATE INDEX instances_by_state ON instances (state);

CREATE TABLE actions (
    id          text   NOT NULL PRIMARY KEY,
    service_id  text   NOT NULL,
    instance_id text   NOT NULL,
    kind        text   NOT NULL,
    state       text   NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    deadline    bigint NOT NULL,
    record      text   NOT NULL
);
CREATE INDEX actions_by_state ON actions (state);
CREATE INDEX actions_by_service ON actions (service_id, created_at);
CREATE INDEX actions_by_created ON actions (created_at);

CREATE TABLE images (
    id         text   NOT NULL PRIMARY KEY,
    engine     text   NOT NULL,
    version    text   NOT NULL,
    created_at bigint NOT NULL,
    record     text   NOT NULL
);

-- Append-only; an identity column never reuses a value (like SQLite's
-- AUTOINCREMENT). A rolled-back commit leaves a gap: readers page with
-- `after_seq`, so gaps are harmless.
CREATE TABLE events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          bigint NOT NULL,
    service     text,
    instance_id text,
    record      text   NOT NULL
);
CREATE INDEX events_by_service ON events (service, seq);
CREATE INDEX events_by_instance ON events (instance_id, seq);

CREATE TABLE audit (
    seq    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     bigint NOT NULL,
    actor  text   NOT NULL,
    record text   NOT NULL
);

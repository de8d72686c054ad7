-- Advisories and break-glass runbooks (see
-- migrations/V7__advisories_runbooks.sql). Created for the same version
-- numbers as SQLite; in this release they are still kept in the SQLite
-- file of the data dir beside a PostgreSQL store.
CREATE TABLE advisories (
    id          text   NOT NULL PRIMARY KEY,
    modified    bigint NOT NULL,
    withdrawn   bigint,
    imported_at bigint NOT NULL,
    record      text   NOT NULL
);

CREATE TABLE advisory_imports (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fetched_at  bigint NOT NULL,
    imported_at bigint NOT NULL,
    actor       text   NOT NULL,
    records     bigint NOT NULL
);

CREATE TABLE runbook_runs (
    id          text   NOT NULL PRIMARY KEY,
    runbook     text   NOT NULL,
    state       text   NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    record      text   NOT NULL
);
CREATE INDEX runbook_runs_by_created ON runbook_runs (created_at);

CREATE TABLE automation_freezes (
    scope       text   NOT NULL PRIMARY KEY,
    since       bigint NOT NULL,
    run         text   NOT NULL
);

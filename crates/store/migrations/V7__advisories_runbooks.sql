-- The CVE audit's advisory database: OSV records, one row per id (a later
-- import of the same id replaces it). `record` is the OSV JSON as the
-- audit reads it.
CREATE TABLE advisories (
    id          TEXT    NOT NULL PRIMARY KEY,
    modified    INTEGER NOT NULL,
    withdrawn   INTEGER,
    imported_at INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;

-- Every import: when its data was fetched from its source (what makes a
-- stale database a finding), when it was imported, by whom.
CREATE TABLE advisory_imports (
    seq         INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    fetched_at  INTEGER NOT NULL,
    imported_at INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    records     INTEGER NOT NULL
) STRICT;

-- Break-glass runbook runs: requested, approved, executed. `record` is the
-- run as the API shows it (plan, parameters, who asked, who approved).
CREATE TABLE runbook_runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    runbook     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;
CREATE INDEX runbook_runs_by_created ON runbook_runs (created_at);

-- Automation frozen by hand (a runbook), per zone or `fleet`: applied to
-- the engine again at every start, until released by hand.
CREATE TABLE automation_freezes (
    scope       TEXT    NOT NULL PRIMARY KEY,
    since       INTEGER NOT NULL,
    run         TEXT    NOT NULL
) STRICT;

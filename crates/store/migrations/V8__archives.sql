-- Archives of deleted services: the final backup kept for a retention, then
-- purged. Written in the same commit as the engine's decisions (the final
-- backup's and the purge's actions), so a restart resumes an archive in
-- progress and never purges one twice. Purged rows stay as history.
CREATE TABLE archives (
    id           TEXT    NOT NULL PRIMARY KEY,
    service_name TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    record       TEXT    NOT NULL
) STRICT;
CREATE INDEX archives_by_name ON archives (service_name, state);

-- Rollouts: a header row per rollout (its spec, state and counters) and a
-- row per selected service with its progress. Both are written in the same
-- commit as the engine's decisions (the actions that move the service), so
-- after a crash a service's row says whether it was started, moved or
-- failed: a restarted control plane never moves a service twice.
CREATE TABLE rollouts (
    id          TEXT    NOT NULL PRIMARY KEY,
    state       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    record      TEXT    NOT NULL
) STRICT;

CREATE TABLE rollout_services (
    rollout_id  TEXT    NOT NULL REFERENCES rollouts (id),
    service_id  TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    phase       TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    PRIMARY KEY (rollout_id, service_id)
) STRICT;
CREATE INDEX rollout_services_by_position ON rollout_services (rollout_id, position);

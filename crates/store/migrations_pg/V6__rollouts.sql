-- Rollouts (see migrations/V6__rollouts.sql).
CREATE TABLE rollouts (
    id          text   NOT NULL PRIMARY KEY,
    state       text   NOT NULL,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    record      text   NOT NULL
);

CREATE TABLE rollout_services (
    rollout_id  text   NOT NULL REFERENCES rollouts (id),
    service_id  text   NOT NULL,
    position    bigint NOT NULL,
    phase       text   NOT NULL,
    record      text   NOT NULL,
    PRIMARY KEY (rollout_id, service_id)
);
CREATE INDEX rollout_services_by_position ON rollout_services (rollout_id, position);

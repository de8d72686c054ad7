-- Commands a standby accepted while the fleet's holder did not answer
-- (issue 16: "accepted (202) and carried out once the shard is taken
-- over"). The node that next holds the lease carries them out in order,
-- through its own API, as the caller who sent them.
-- state: pending -> running -> done; or pending -> expired (nobody took
-- over in time); or running -> interrupted (the node carrying it out
-- stopped: the outcome is unknown and it is never run twice).
-- `request` and `answer` are sealed with the key the nodes share: they
-- hold the caller's token and what the API answered (URLs, passwords).
CREATE TABLE deferred_commands (
    id          text   NOT NULL PRIMARY KEY,
    received_at bigint NOT NULL,
    received_by text   NOT NULL,
    token_id    text   NOT NULL,
    method      text   NOT NULL,
    path        text   NOT NULL,
    request     text   NOT NULL,
    state       text   NOT NULL,
    taken_by    text,
    generation  bigint,
    finished_at bigint,
    status      bigint,
    answer      text
);
CREATE INDEX deferred_commands_by_state ON deferred_commands (state, received_at);

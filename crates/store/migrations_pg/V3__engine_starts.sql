-- Every start of the engine with its seed (a u64 kept as the bigint with
-- the same bits).
CREATE TABLE engine_starts (
    seq  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at   bigint NOT NULL,
    seed bigint NOT NULL
);

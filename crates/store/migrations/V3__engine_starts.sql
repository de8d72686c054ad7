-- Every start of the engine, with the seed it was given: the seed and an
-- input log reproduce the engine's events exactly (replay). The seed is a
-- u64 kept as the i64 with the same bits.
CREATE TABLE engine_starts (
    seq  INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at   INTEGER NOT NULL,
    seed INTEGER NOT NULL
) STRICT;

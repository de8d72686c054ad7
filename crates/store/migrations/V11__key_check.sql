-- The key check of a shared store (see migrations_pg/V11__key_check.sql).
-- The embedded store serves one node; the table exists so both dialects
-- keep the same tables (`drover store migrate` copies them one to one).
CREATE TABLE key_check (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 0),
    check_value TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    at          INTEGER NOT NULL
);

-- The software lifecycle board: one JSON body per component.
CREATE TABLE components (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);

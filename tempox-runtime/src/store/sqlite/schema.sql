-- tempox schema, version 1. Applied in one transaction to an empty database;
-- later versions are reached through the migrations in mod.rs.

CREATE TABLE tempox_records (
    id          TEXT    NOT NULL PRIMARY KEY,   -- `op/key`
    op          TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,               -- 16 bytes
    input       BLOB    NOT NULL,
    output      BLOB,
    error       TEXT,
    status      TEXT    NOT NULL,
    token       INTEGER NOT NULL,
    lease_until INTEGER,                        -- ms since the epoch
    attempts    INTEGER NOT NULL,
    workflow    TEXT,
    step        INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    due_at      INTEGER,
    expires_at  INTEGER,
    note        TEXT
) WITHOUT ROWID;

-- Due work and retention are found through partial indexes, so a scan costs
-- what is due, not what is stored.
CREATE INDEX tempox_records_due ON tempox_records (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX tempox_records_expiry ON tempox_records (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tempox_records_status ON tempox_records (status, id);
CREATE INDEX tempox_records_op ON tempox_records (op, id);
CREATE INDEX tempox_records_workflow ON tempox_records (workflow, id) WHERE workflow IS NOT NULL;

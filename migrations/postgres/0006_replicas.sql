-- Replica registry (PostgreSQL dialect; migrations/sqlite/0006_* is the same logical schema).
-- Instants are BIGINT epoch ms.

-- One row per running archiver process (owner = the scheduler's lease owner id). A replica
-- rewrites heartbeat_at every few seconds; replicas whose heartbeat is recent are "live" and
-- share the tenant's Graph rate budget. A clean exit deletes its row; a killed replica's row
-- stops being live after the TTL and is deleted later by any live replica.
CREATE TABLE replicas (
    owner          TEXT   NOT NULL PRIMARY KEY,
    host           TEXT   NOT NULL,
    pid            BIGINT NOT NULL,
    -- boot id and pid namespace: rows with ours name processes this host can check
    node           TEXT   NOT NULL,
    started_at     BIGINT NOT NULL,
    heartbeat_at   BIGINT NOT NULL,
    -- how many replicas this one divides the tenant-wide budgets by right now, so that one
    -- that starts can wait until the others have made room for it
    budget_divisor BIGINT NOT NULL
);
CREATE INDEX replicas_by_heartbeat ON replicas (heartbeat_at);

-- Activity-based polling (SQLite dialect; migrations/postgres/0007_* is the same logical
-- schema). Instants are INTEGER epoch ms.

-- When each (source, scope) is next polled (src/scheduler/due.rs). Written after each
-- successful poll; a scope without a row, or whose last attempt failed (checkpoints), is due
-- at once, so a lost or stale row only ever makes a poll come sooner.
CREATE TABLE poll_schedule (
    source      TEXT    NOT NULL,
    scope_id    TEXT    NOT NULL,
    -- start of the pass that last polled the scope successfully
    polled_at   INTEGER NOT NULL,
    -- base interval after new records, doubled after each poll without, up to max_staleness
    interval_ms INTEGER NOT NULL,
    -- polled_at + interval_ms, less the jitter
    next_due_at INTEGER NOT NULL,
    -- start of the last pass whose poll found new record versions
    last_new_at INTEGER,
    PRIMARY KEY (source, scope_id)
);
CREATE INDEX poll_schedule_by_due ON poll_schedule (source, next_due_at);

-- Change notifications (SQLite dialect; migrations/postgres/0005_* is the same logical schema).
-- Instants are INTEGER epoch ms.

-- Accepted notification items waiting to be processed: the receiver answers 202 only after
-- the row is committed, so a crash after 202 loses nothing. `item` is the item exactly as
-- received, its resource data still encrypted (no plaintext in the state database).
CREATE TABLE notification_queue (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,   -- change | lifecycle
    subscription_id TEXT    NOT NULL,
    item            TEXT    NOT NULL,
    received_at     INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    not_before      INTEGER NOT NULL,
    claimed_by      TEXT,
    claimed_until   INTEGER,
    last_error      TEXT,
    dead            INTEGER NOT NULL DEFAULT 0  -- 1: gave up; polling catches the record up
);
CREATE INDEX notification_queue_ready ON notification_queue (dead, not_before);

-- Subscriptions this deployment owns (one row per Graph subscription).
CREATE TABLE subscriptions (
    id              TEXT    NOT NULL PRIMARY KEY,
    resource        TEXT    NOT NULL,
    user_id         TEXT,               -- NULL for the tenant-wide subscription
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    renewed_at      INTEGER,
    status          TEXT    NOT NULL,   -- active | removed | failed
    last_event      TEXT,
    last_event_at   INTEGER,
    last_notification_at INTEGER
);

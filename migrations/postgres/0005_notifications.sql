-- Change notifications (PostgreSQL dialect; migrations/sqlite/0005_* is the same logical schema).
-- Instants are BIGINT epoch ms.

-- Accepted notification items waiting to be processed: the receiver answers 202 only after
-- the row is committed, so a crash after 202 loses nothing. `item` is the item exactly as
-- received, its resource data still encrypted (no plaintext in the state database).
CREATE TABLE notification_queue (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT    NOT NULL,   -- change | lifecycle
    subscription_id TEXT    NOT NULL,
    item            TEXT    NOT NULL,
    received_at     BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    not_before      BIGINT  NOT NULL,
    claimed_by      TEXT,
    claimed_until   BIGINT,
    last_error      TEXT,
    dead            BIGINT  NOT NULL DEFAULT 0  -- 1: gave up; polling catches the record up
);
CREATE INDEX notification_queue_ready ON notification_queue (dead, not_before);

-- Subscriptions this deployment owns (one row per Graph subscription).
CREATE TABLE subscriptions (
    id              TEXT    NOT NULL PRIMARY KEY,
    resource        TEXT    NOT NULL,
    user_id         TEXT,               -- NULL for the tenant-wide subscription
    expires_at      BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    renewed_at      BIGINT,
    status          TEXT    NOT NULL,   -- active | removed | failed
    last_event      TEXT,
    last_event_at   BIGINT,
    last_notification_at BIGINT
);

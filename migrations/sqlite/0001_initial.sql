-- Initial state schema (SQLite dialect). migrations/postgres/0001_initial.sql holds the same
-- logical schema for PostgreSQL; change both together.
--
-- Every instant is an INTEGER of milliseconds since the Unix epoch (UTC): the one time
-- representation both databases share through sqlx's Any driver.

-- Scopes seen by discovery: users, teams, meeting organizers. A scope that disappears keeps its
-- row (gone_at) so that it still gets a final sweep (final_sweep_at).
CREATE TABLE scopes (
    kind           TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    label          TEXT,
    first_seen     INTEGER NOT NULL,
    last_seen      INTEGER NOT NULL,
    gone_at        INTEGER,
    final_sweep_at INTEGER,
    PRIMARY KEY (kind, id)
);

-- One checkpoint per (source, scope). scope_kind lets status join the scope row by (kind, id).
CREATE TABLE checkpoints (
    source            TEXT    NOT NULL,
    scope_id          TEXT    NOT NULL,
    scope_kind        TEXT    NOT NULL,
    watermark         INTEGER,
    last_lookback_at  INTEGER,
    last_success_at   INTEGER,
    last_error        TEXT,
    last_error_at     INTEGER,
    records_archived  INTEGER NOT NULL DEFAULT 0,
    windows_completed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, scope_id)
);

-- Every archived record version. record_key is built by the source from ALL identity parts
-- (Graph ids alone are not unique across a tenant); the primary key is the dedup index.
CREATE TABLE catalogue (
    source      TEXT    NOT NULL,
    record_key  TEXT    NOT NULL,
    etag        TEXT    NOT NULL,
    sha256      TEXT    NOT NULL,
    storage_key TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    scope_id    TEXT    NOT NULL,
    created_at  INTEGER,
    archived_at INTEGER NOT NULL,
    PRIMARY KEY (source, record_key, etag)
);
-- Status counts records per (source, scope).
CREATE INDEX catalogue_by_scope ON catalogue (source, scope_id);

-- Window manifests, hash-chained per (source, scope) by seq and prev_sha256.
CREATE TABLE manifests (
    source       TEXT    NOT NULL,
    scope_id     TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    prev_sha256  TEXT,
    storage_key  TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (source, scope_id, seq)
);

-- Leases on work items, so that several replicas sharing one database never work on the same
-- item at once.
CREATE TABLE leases (
    work_key    TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    acquired_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner);

-- Append-only audit log. AUTOINCREMENT so that ids are never reused.
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    detail  TEXT    NOT NULL
);

-- Rows that describe evidence never change: the audit log, and the catalogue and manifest rows
-- that describe immutable archived objects. The audit log cannot be deleted from either.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused');
END;

CREATE TRIGGER catalogue_no_update BEFORE UPDATE ON catalogue
BEGIN
    SELECT RAISE(ABORT, 'catalogue rows are immutable: UPDATE refused');
END;

CREATE TRIGGER manifests_no_update BEFORE UPDATE ON manifests
BEGIN
    SELECT RAISE(ABORT, 'manifests are immutable: UPDATE refused');
END;

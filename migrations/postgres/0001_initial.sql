-- Initial state schema (PostgreSQL dialect). migrations/sqlite/0001_initial.sql holds the same
-- logical schema for SQLite; change both together.
--
-- Every instant is a BIGINT of milliseconds since the Unix epoch (UTC): the one time
-- representation both databases share through sqlx's Any driver.

-- Scopes seen by discovery: users, teams, meeting organizers. A scope that disappears keeps its
-- row (gone_at) so that it still gets a final sweep (final_sweep_at).
CREATE TABLE scopes (
    kind           TEXT   NOT NULL,
    id             TEXT   NOT NULL,
    label          TEXT,
    first_seen     BIGINT NOT NULL,
    last_seen      BIGINT NOT NULL,
    gone_at        BIGINT,
    final_sweep_at BIGINT,
    PRIMARY KEY (kind, id)
);

-- One checkpoint per (source, scope). scope_kind lets status join the scope row by (kind, id).
CREATE TABLE checkpoints (
    source            TEXT   NOT NULL,
    scope_id          TEXT   NOT NULL,
    scope_kind        TEXT   NOT NULL,
    watermark         BIGINT,
    last_lookback_at  BIGINT,
    last_success_at   BIGINT,
    last_error        TEXT,
    last_error_at     BIGINT,
    records_archived  BIGINT NOT NULL DEFAULT 0,
    windows_completed BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (source, scope_id)
);

-- Every archived record version. record_key is built by the source from ALL identity parts
-- (Graph ids alone are not unique across a tenant); the primary key is the dedup index.
CREATE TABLE catalogue (
    source      TEXT   NOT NULL,
    record_key  TEXT   NOT NULL,
    etag        TEXT   NOT NULL,
    sha256      TEXT   NOT NULL,
    storage_key TEXT   NOT NULL,
    size_bytes  BIGINT NOT NULL,
    scope_id    TEXT   NOT NULL,
    created_at  BIGINT,
    archived_at BIGINT NOT NULL,
    PRIMARY KEY (source, record_key, etag)
);
-- Status counts records per (source, scope).
CREATE INDEX catalogue_by_scope ON catalogue (source, scope_id);

-- Window manifests, hash-chained per (source, scope) by seq and prev_sha256.
CREATE TABLE manifests (
    source       TEXT   NOT NULL,
    scope_id     TEXT   NOT NULL,
    seq          BIGINT NOT NULL,
    sha256       TEXT   NOT NULL,
    prev_sha256  TEXT,
    storage_key  TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    window_end   BIGINT NOT NULL,
    record_count BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (source, scope_id, seq)
);

-- Leases on work items, so that several replicas sharing one database never work on the same
-- item at once.
CREATE TABLE leases (
    work_key    TEXT   NOT NULL PRIMARY KEY,
    owner       TEXT   NOT NULL,
    acquired_at BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner);

-- Append-only audit log.
CREATE TABLE audit_log (
    id      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL,
    subject TEXT   NOT NULL,
    detail  TEXT   NOT NULL
);

-- Rows that describe evidence never change: the audit log, and the catalogue and manifest rows
-- that describe immutable archived objects. The audit log cannot be deleted from (or truncated)
-- either.
CREATE FUNCTION m365_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% refused on %: rows are immutable', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION m365_refuse_change();

CREATE TRIGGER catalogue_no_update BEFORE UPDATE ON catalogue
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();

CREATE TRIGGER manifests_no_update BEFORE UPDATE ON manifests
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();

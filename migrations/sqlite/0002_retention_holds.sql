-- Retention, legal holds and disposition (SQLite dialect). migrations/postgres/0002_* holds the
-- same logical schema for PostgreSQL; change both together. Instants are INTEGER epoch ms.
--
-- The catalogue and audit_log of 0001 refuse UPDATE; what changes over a record's life (a hold
-- applied and released, a disposition completed) lives in these tables instead, and even here
-- a trigger allows only the one forward step each row may take.

-- The retention decided for each archived object and written with it.
CREATE TABLE record_retention (
    storage_key  TEXT    NOT NULL PRIMARY KEY,
    source       TEXT    NOT NULL,
    scope_id     TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    retain_until INTEGER,            -- NULL: forever
    mode         TEXT    NOT NULL,   -- Unlocked | Locked
    created_at   INTEGER,            -- the record's own createdDateTime
    recorded_at  INTEGER NOT NULL
);
CREATE INDEX record_retention_by_until ON record_retention (retain_until);
CREATE INDEX record_retention_by_scope ON record_retention (source, scope_id);

-- Who a record belongs to, for legal holds: kind is user | upn | chat | team, id lowercased.
CREATE TABLE record_custodians (
    storage_key TEXT NOT NULL,
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    PRIMARY KEY (kind, id, storage_key)
);
CREATE INDEX record_custodians_by_key ON record_custodians (storage_key);

-- Legal holds on a custodian. Released holds stay, with who released them and why.
CREATE TABLE legal_holds (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           TEXT    NOT NULL,   -- user | chat | team
    target         TEXT    NOT NULL,   -- lowercased id
    reason         TEXT    NOT NULL,
    created_by     TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    released_at    INTEGER,
    released_by    TEXT,
    release_reason TEXT
);
CREATE INDEX legal_holds_active ON legal_holds (kind, target) WHERE released_at IS NULL;

-- Objects on which a hold was set in the store, and when that hold stopped covering them.
CREATE TABLE record_holds (
    hold_id     INTEGER NOT NULL REFERENCES legal_holds (id),
    storage_key TEXT    NOT NULL,
    applied_at  INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (hold_id, storage_key)
);
CREATE INDEX record_holds_by_key ON record_holds (storage_key);

-- Disposed objects: the row is written before the deletion (completed_at NULL) and completed
-- after it, so an interrupted run is finished by the next one.
CREATE TABLE dispositions (
    storage_key  TEXT    NOT NULL PRIMARY KEY,
    source       TEXT    NOT NULL,
    scope_id     TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    rule         TEXT    NOT NULL,
    retain_until INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    completed_at INTEGER,
    actor        TEXT    NOT NULL
);

CREATE TRIGGER record_retention_only_extends BEFORE UPDATE ON record_retention
WHEN NEW.storage_key <> OLD.storage_key OR NEW.sha256 <> OLD.sha256
  OR (OLD.retain_until IS NULL AND NEW.retain_until IS NOT NULL)
  OR (NEW.retain_until IS NOT NULL AND NEW.retain_until < OLD.retain_until)
  OR (OLD.mode = 'Locked' AND NEW.mode <> 'Locked')
BEGIN
    SELECT RAISE(ABORT, 'record_retention: a retention can only be extended');
END;

CREATE TRIGGER record_retention_no_delete BEFORE DELETE ON record_retention
BEGIN
    SELECT RAISE(ABORT, 'record_retention rows are kept: DELETE refused');
END;

CREATE TRIGGER legal_holds_release_once BEFORE UPDATE ON legal_holds
WHEN OLD.released_at IS NOT NULL OR NEW.released_at IS NULL
  OR NEW.id <> OLD.id OR NEW.kind <> OLD.kind OR NEW.target <> OLD.target
  OR NEW.reason <> OLD.reason OR NEW.created_by <> OLD.created_by OR NEW.created_at <> OLD.created_at
BEGIN
    SELECT RAISE(ABORT, 'legal_holds: only releasing an active hold is allowed');
END;

CREATE TRIGGER legal_holds_no_delete BEFORE DELETE ON legal_holds
BEGIN
    SELECT RAISE(ABORT, 'legal_holds rows are kept: DELETE refused');
END;

CREATE TRIGGER record_holds_release_once BEFORE UPDATE ON record_holds
WHEN OLD.released_at IS NOT NULL OR NEW.released_at IS NULL
  OR NEW.hold_id <> OLD.hold_id OR NEW.storage_key <> OLD.storage_key OR NEW.applied_at <> OLD.applied_at
BEGIN
    SELECT RAISE(ABORT, 'record_holds: only releasing an applied hold is allowed');
END;

CREATE TRIGGER record_holds_no_delete BEFORE DELETE ON record_holds
BEGIN
    SELECT RAISE(ABORT, 'record_holds rows are kept: DELETE refused');
END;

CREATE TRIGGER dispositions_complete_once BEFORE UPDATE ON dispositions
WHEN OLD.completed_at IS NOT NULL OR NEW.completed_at IS NULL
  OR NEW.storage_key <> OLD.storage_key OR NEW.sha256 <> OLD.sha256 OR NEW.rule <> OLD.rule
  OR NEW.retain_until <> OLD.retain_until OR NEW.started_at <> OLD.started_at
BEGIN
    SELECT RAISE(ABORT, 'dispositions: only completing a started disposition is allowed');
END;

CREATE TRIGGER dispositions_no_delete BEFORE DELETE ON dispositions
BEGIN
    SELECT RAISE(ABORT, 'dispositions rows are kept: DELETE refused');
END;

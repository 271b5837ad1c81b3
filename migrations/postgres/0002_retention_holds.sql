-- Retention, legal holds and disposition (PostgreSQL dialect). migrations/sqlite/0002_* holds
-- the same logical schema for SQLite; change both together. Instants are BIGINT epoch ms.
--
-- The catalogue and audit_log of 0001 refuse UPDATE; what changes over a record's life (a hold
-- applied and released, a disposition completed) lives in these tables instead, and even here
-- a trigger allows only the one forward step each row may take.

-- The retention decided for each archived object and written with it.
CREATE TABLE record_retention (
    storage_key  TEXT   NOT NULL PRIMARY KEY,
    source       TEXT   NOT NULL,
    scope_id     TEXT   NOT NULL,
    sha256       TEXT   NOT NULL,
    rule         TEXT   NOT NULL,
    retain_until BIGINT,            -- NULL: forever
    mode         TEXT   NOT NULL,   -- Unlocked | Locked
    created_at   BIGINT,            -- the record's own createdDateTime
    recorded_at  BIGINT NOT NULL
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
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind           TEXT   NOT NULL,   -- user | chat | team
    target         TEXT   NOT NULL,   -- lowercased id
    reason         TEXT   NOT NULL,
    created_by     TEXT   NOT NULL,
    created_at     BIGINT NOT NULL,
    released_at    BIGINT,
    released_by    TEXT,
    release_reason TEXT
);
CREATE INDEX legal_holds_active ON legal_holds (kind, target) WHERE released_at IS NULL;

-- Objects on which a hold was set in the store, and when that hold stopped covering them.
CREATE TABLE record_holds (
    hold_id     BIGINT NOT NULL REFERENCES legal_holds (id),
    storage_key TEXT   NOT NULL,
    applied_at  BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (hold_id, storage_key)
);
CREATE INDEX record_holds_by_key ON record_holds (storage_key);

-- Disposed objects: the row is written before the deletion (completed_at NULL) and completed
-- after it, so an interrupted run is finished by the next one.
CREATE TABLE dispositions (
    storage_key  TEXT   NOT NULL PRIMARY KEY,
    source       TEXT   NOT NULL,
    scope_id     TEXT   NOT NULL,
    sha256       TEXT   NOT NULL,
    rule         TEXT   NOT NULL,
    retain_until BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    completed_at BIGINT,
    actor        TEXT   NOT NULL
);

CREATE FUNCTION m365_retention_only_extends() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.storage_key <> OLD.storage_key OR NEW.sha256 <> OLD.sha256
       OR (OLD.retain_until IS NULL AND NEW.retain_until IS NOT NULL)
       OR (NEW.retain_until IS NOT NULL AND NEW.retain_until < OLD.retain_until)
       OR (OLD.mode = 'Locked' AND NEW.mode <> 'Locked') THEN
        RAISE EXCEPTION 'record_retention: a retention can only be extended'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER record_retention_only_extends BEFORE UPDATE ON record_retention
    FOR EACH ROW EXECUTE FUNCTION m365_retention_only_extends();

CREATE FUNCTION m365_release_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.released_at IS NOT NULL OR NEW.released_at IS NULL THEN
        RAISE EXCEPTION '%: only releasing an active hold is allowed', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_TABLE_NAME = 'legal_holds' AND (NEW.id <> OLD.id OR NEW.kind <> OLD.kind
       OR NEW.target <> OLD.target OR NEW.reason <> OLD.reason
       OR NEW.created_by <> OLD.created_by OR NEW.created_at <> OLD.created_at) THEN
        RAISE EXCEPTION 'legal_holds: only the release columns may change'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER legal_holds_release_once BEFORE UPDATE ON legal_holds
    FOR EACH ROW EXECUTE FUNCTION m365_release_once();

CREATE FUNCTION m365_record_hold_release_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.released_at IS NOT NULL OR NEW.released_at IS NULL
       OR NEW.hold_id <> OLD.hold_id OR NEW.storage_key <> OLD.storage_key
       OR NEW.applied_at <> OLD.applied_at THEN
        RAISE EXCEPTION 'record_holds: only releasing an applied hold is allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER record_holds_release_once BEFORE UPDATE ON record_holds
    FOR EACH ROW EXECUTE FUNCTION m365_record_hold_release_once();

CREATE FUNCTION m365_disposition_complete_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.completed_at IS NOT NULL OR NEW.completed_at IS NULL
       OR NEW.storage_key <> OLD.storage_key OR NEW.sha256 <> OLD.sha256
       OR NEW.rule <> OLD.rule OR NEW.retain_until <> OLD.retain_until
       OR NEW.started_at <> OLD.started_at THEN
        RAISE EXCEPTION 'dispositions: only completing a started disposition is allowed'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER dispositions_complete_once BEFORE UPDATE ON dispositions
    FOR EACH ROW EXECUTE FUNCTION m365_disposition_complete_once();

-- None of these rows may be deleted or truncated (m365_refuse_change comes from 0001).
CREATE TRIGGER record_retention_no_delete BEFORE DELETE ON record_retention
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();
CREATE TRIGGER legal_holds_no_delete BEFORE DELETE ON legal_holds
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();
CREATE TRIGGER record_holds_no_delete BEFORE DELETE ON record_holds
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();
CREATE TRIGGER dispositions_no_delete BEFORE DELETE ON dispositions
    FOR EACH ROW EXECUTE FUNCTION m365_refuse_change();
CREATE TRIGGER compliance_no_truncate BEFORE TRUNCATE ON record_retention
    FOR EACH STATEMENT EXECUTE FUNCTION m365_refuse_change();
CREATE TRIGGER legal_holds_no_truncate BEFORE TRUNCATE ON legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION m365_refuse_change();

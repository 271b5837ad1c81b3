-- Chat participants (SQLite dialect; migrations/postgres/0010_* is the same logical schema).
--
-- A user hold covers every record of the chats its user takes part in. Teams keeps a copy of
-- each chat message in every member's mailbox, and a hold on a member holds all of them; the
-- archive stores each message version once, whichever member's export reached it first, so
-- the per-record custodians alone would miss the members whose export came later.
-- A user takes part in a chat when their own export returned one of its messages, or when they
-- sent one. Rows are only ever added: a hold's coverage must not shrink.
CREATE TABLE chat_participants (
    chat_id TEXT NOT NULL,   -- lowercased
    kind    TEXT NOT NULL,   -- user | upn
    id      TEXT NOT NULL,   -- lowercased
    PRIMARY KEY (chat_id, kind, id)
);
CREATE INDEX chat_participants_by_id ON chat_participants (id, chat_id);

CREATE TRIGGER chat_participants_no_delete BEFORE DELETE ON chat_participants
BEGIN
    SELECT RAISE(ABORT, 'chat_participants rows are kept: DELETE refused');
END;

CREATE TRIGGER chat_participants_no_update BEFORE UPDATE ON chat_participants
BEGIN
    SELECT RAISE(ABORT, 'chat_participants rows are kept: UPDATE refused');
END;

-- Archives written before this migration recorded the exporting user and the sender on each
-- chat record: they become participants of its chat.
INSERT INTO chat_participants (chat_id, kind, id)
SELECT DISTINCT c.id, u.kind, u.id
FROM record_custodians c
JOIN record_custodians u ON u.storage_key = c.storage_key AND u.kind IN ('user', 'upn')
WHERE c.kind = 'chat'
ON CONFLICT (chat_id, kind, id) DO NOTHING;

-- Nothing reads record_retention by (source, scope): disposal walks it by key and by
-- retain_until. The index cost every archived version one more B-tree insert.
DROP INDEX record_retention_by_scope;

-- Idle replicas (SQLite dialect; migrations/postgres/0009_* is the same logical schema).
-- Instants are INTEGER epoch ms.

-- Set while a replica has nothing to send (its pass is over, or all it has left is scopes
-- leased elsewhere that it waits for): it sends no request then, so the others leave it out of
-- the count that divides the tenant's rate budget and take over its share. NULL: active.
ALTER TABLE replicas ADD COLUMN idle_since INTEGER;

-- Fewer index entries written per event: each signup used to write ten on
-- the outbox and six on users.

-- The per-user reads (newest pending event, older pending ones) walk the
-- user's few events through events_by_user instead: an index on pending
-- events by user cost two more entries per event, at insert and dispatch.
DROP INDEX IF EXISTS user_sync.events_pending_by_user;

-- A user claiming its username has no userId yet: no index entry until it
-- has one. Unique as before.
CREATE UNIQUE INDEX IF NOT EXISTS users_embedded_user_id ON user_sync.users (embedded_user_id)
    WHERE embedded_user_id IS NOT NULL;
ALTER TABLE user_sync.users DROP CONSTRAINT IF EXISTS users_embedded_user_id_key;

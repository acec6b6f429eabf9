-- Fewer index entries written per event. A signup used to write ten on the
-- outbox and six on users; it now writes eight on the outbox, and a user's
-- claim and its outcome write two on users in all.

-- The per-user reads (newest pending event, older pending ones) walk the
-- user's few events through events_by_user instead: an index of the pending
-- events by user cost two more entries per event, at insert and dispatch.
DROP INDEX IF EXISTS user_sync.events_pending_by_user;

-- A claim turning into a synced user ('creating' -> 'synced', its userId
-- set) is now an update that changes no indexed column: PostgreSQL keeps
-- the new row on its page and writes no index entry for it (a HOT update),
-- given room on the page, which the fill factor leaves.
--  * username is set only while the row holds it (creating, synced); the
--    states that release a claim clear it, so the unique index need not
--    name the state.
--  * embedded_user_id has no index: the host app reads users by
--    host_user_id. A userId comes from a create of a username the row holds
--    alone, or from adopting the user a lost create made, which first
--    checks (reading the table, on that rare path) that no other host user
--    is mapped to it; the backfill notes existing mappings once per run.
UPDATE user_sync.users SET username = NULL
    WHERE username IS NOT NULL AND state NOT IN ('creating', 'synced');
DROP INDEX IF EXISTS user_sync.users_username_claim;
CREATE UNIQUE INDEX IF NOT EXISTS users_username_held ON user_sync.users (username)
    WHERE username IS NOT NULL;
-- A writer that releases a claim without clearing the username (a worker
-- from before this migration, still running during a deploy) fails here
-- instead of leaving the username held; its event is retried.
ALTER TABLE user_sync.users ADD CONSTRAINT users_username_only_while_held
    CHECK (username IS NULL OR state IN ('creating', 'synced'));
ALTER TABLE user_sync.users DROP CONSTRAINT IF EXISTS users_embedded_user_id_key;
ALTER TABLE user_sync.users SET (fillfactor = 50);

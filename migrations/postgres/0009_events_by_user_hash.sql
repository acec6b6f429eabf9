-- no-transaction
-- The outbox's index by host user becomes a hash of the host user id. A
-- btree entry holds its key, and refuses one over about 2.7 KB: a host that
-- wrote a longer host_user_id saw its own INSERT fail, though a bad event
-- must never fail the host's transaction. A hash index holds 4 bytes a row
-- whatever the key, and serves every query by host user, which all compare
-- the id with `=` (and take the user's few events in id order after).
--
-- Built without locking out the host's inserts (CONCURRENTLY, so this file
-- is its one statement and runs outside a transaction); the old index,
-- events_by_user, is dropped once this one is valid, by `user-sync migrate`
-- itself (storage::pg::migrate): a worker of the older version running
-- during the deploy keeps an index for its own queries, which compare with
-- `=` too, all along.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_user_hash
    ON user_sync.events USING hash (host_user_id);

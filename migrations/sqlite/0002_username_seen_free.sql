-- Whether a claim ('creating') was made right after its username was seen
-- free in Embedded (see the PostgreSQL migration of the same name). Rows
-- claimed before this migration were all looked up first; every claim
-- from here on sets it.
ALTER TABLE user_sync_users ADD COLUMN username_seen_free INTEGER NOT NULL DEFAULT 1;

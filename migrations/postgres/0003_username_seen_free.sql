-- Whether a claim ('creating') was made right after its username was seen
-- free in Embedded. By default a job now sends the create first and looks
-- the username up only after a lost answer, so a claim no longer implies
-- that the username was free: a user found under it afterwards is adopted
-- only when this is true or its id proves it was made after the claim.
-- Rows claimed before this migration were all looked up first: true.
ALTER TABLE user_sync.users ADD COLUMN IF NOT EXISTS username_seen_free boolean NOT NULL DEFAULT true;
ALTER TABLE user_sync.users ALTER COLUMN username_seen_free SET DEFAULT false;

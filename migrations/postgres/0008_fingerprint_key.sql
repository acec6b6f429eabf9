-- The deployment's key for the usernames' fingerprints in logs (an HMAC
-- under it): made once, at random, by the migration, the same for every
-- process on this database. log.fingerprint_key overrides it.
CREATE TABLE IF NOT EXISTS user_sync.deployment (
    id               BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    fingerprint_key  TEXT NOT NULL
);
-- gen_random_uuid() draws from the server's strong random source.
INSERT INTO user_sync.deployment (fingerprint_key)
VALUES (replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''))
ON CONFLICT DO NOTHING;

-- The deployment's key for the usernames' fingerprints in logs (see the
-- PostgreSQL migration of the same name).
CREATE TABLE user_sync_deployment (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint_key  TEXT NOT NULL
);
INSERT INTO user_sync_deployment (id, fingerprint_key) VALUES (1, lower(hex(randomblob(32))));

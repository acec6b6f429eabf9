-- Retention (see the PostgreSQL migration of the same name). SQLite has
-- no concurrent index build: the index is made here, holding the file's
-- write lock while it reads the outbox (a second or so per million rows).
CREATE TABLE user_sync_retention (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    leased_by          TEXT,
    leased_until       TEXT,
    next_pass_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    events_floor       TEXT,
    full_pass_at       TEXT,
    last_pass_at       TEXT,
    events_removed     INTEGER NOT NULL DEFAULT 0,
    conflicts_removed  INTEGER NOT NULL DEFAULT 0,
    erasures_removed   INTEGER NOT NULL DEFAULT 0,
    webhooks_removed   INTEGER NOT NULL DEFAULT 0,
    last_removed_at    TEXT
);
INSERT INTO user_sync_retention (id) VALUES (1);

-- The finished events by state and end (see the PostgreSQL migrator): the
-- counts of `status` read only the failed, invalid and conflict entries,
-- the console's activity only the last hour's, and retention only the old.
-- An applied event adds one entry when it finishes; pending ones none.
CREATE INDEX user_sync_events_finished ON user_sync_events (state, finished_at)
    WHERE state <> 'pending';

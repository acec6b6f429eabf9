-- The worker's tables in a SQLite database. SQLite has no schemas: the
-- tables are prefixed user_sync_ instead (user_sync_events is the outbox).
-- Times are UTC text, 'YYYY-MM-DDTHH:MM:SS.sssZ', so that they compare in
-- order as text. The worker's migration bookkeeping is
-- user_sync_migrations, apart from the host app's own.

-- The outbox. The host app inserts (host_user_id, kind, email, full_name) in
-- the same transaction as its own change; every other column is the worker's.
-- No CHECK on kind or NOT NULL on host_user_id: a bad event must never make
-- the host's transaction fail. The worker records why it refused it instead.
-- AUTOINCREMENT: ids are never reused, so a newer event always has a
-- larger id (latest wins compares ids).
CREATE TABLE user_sync_events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    host_user_id   TEXT,
    kind           TEXT,
    email          TEXT,
    full_name      TEXT,
    occurred_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- pending -> applied | superseded | conflict | failed | invalid
    state          TEXT NOT NULL DEFAULT 'pending',
    -- Not dispatched before this time: backoff and snoozes move it forward.
    available_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- When the dispatcher pushed it to the queue; NULL means "to dispatch".
    dispatched_at  TEXT,
    -- Failed attempts so far (rate limits and auth pauses do not count).
    attempts       INTEGER NOT NULL DEFAULT 0,
    -- Why it failed, was refused or conflicted; never holds an email or a name.
    reason         TEXT,
    finished_at    TEXT
);

CREATE INDEX user_sync_events_to_dispatch ON user_sync_events (available_at, id)
    WHERE state = 'pending' AND dispatched_at IS NULL;
CREATE INDEX user_sync_events_in_flight ON user_sync_events (dispatched_at)
    WHERE state = 'pending' AND dispatched_at IS NOT NULL;
CREATE INDEX user_sync_events_pending_by_user ON user_sync_events (host_user_id, id)
    WHERE state = 'pending';
CREATE INDEX user_sync_events_by_user ON user_sync_events (host_user_id, id);

-- One row per host user the worker has acted on.
CREATE TABLE user_sync_users (
    host_user_id      TEXT PRIMARY KEY,
    -- What the host app reads to fetch a user token.
    embedded_user_id  TEXT UNIQUE,
    -- The username this host user holds in Embedded, or is about to claim.
    username          TEXT,
    full_name         TEXT,
    -- creating | synced | conflict | failed | not_created | erased
    state             TEXT NOT NULL,
    last_event_id     INTEGER,
    created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Two host users can never both claim one username.
CREATE UNIQUE INDEX user_sync_users_username_claim ON user_sync_users (username)
    WHERE username IS NOT NULL AND state IN ('creating', 'synced');

-- Usernames that could not be given to a host user, for reconciliation.
CREATE TABLE user_sync_conflicts (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    host_user_id             TEXT NOT NULL,
    username                 TEXT NOT NULL,
    -- taken_by_host_user | taken_in_embedded | rename_refused
    reason                   TEXT NOT NULL,
    holder_host_user_id      TEXT,
    holder_embedded_user_id  TEXT,
    event_id                 INTEGER,
    status                   TEXT NOT NULL DEFAULT 'open',
    detected_at              TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    resolved_at              TEXT
);

-- A conflict is reported once however often the event is retried.
CREATE UNIQUE INDEX user_sync_conflicts_open_once
    ON user_sync_conflicts (host_user_id, username, reason)
    WHERE status = 'open';

-- Proof of deletion: ids and times only.
CREATE TABLE user_sync_erasures (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    host_user_id      TEXT NOT NULL,
    embedded_user_id  TEXT,
    event_id          INTEGER NOT NULL UNIQUE,
    -- deleted | already_absent | never_created
    outcome           TEXT NOT NULL,
    requested_at      TEXT NOT NULL,
    completed_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX user_sync_erasures_by_user ON user_sync_erasures (host_user_id);

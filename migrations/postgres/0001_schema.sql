-- The worker's tables, all in schema user_sync. The worker's own migration
-- bookkeeping is user_sync._sqlx_migrations, apart from the host app's.
CREATE SCHEMA IF NOT EXISTS user_sync;

-- The outbox. The host app inserts (host_user_id, kind, email, full_name) in
-- the same transaction as its own change; every other column is the worker's.
-- No CHECK on kind or NOT NULL on host_user_id: a bad event must never make
-- the host's transaction fail. The worker records why it refused it instead.
CREATE TABLE user_sync.events (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_user_id   TEXT,
    kind           TEXT,
    email          TEXT,
    full_name      TEXT,
    occurred_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- pending -> applied | superseded | conflict | failed | invalid
    state          TEXT NOT NULL DEFAULT 'pending',
    -- Not dispatched before this time: backoff and snoozes move it forward.
    available_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When the dispatcher pushed it to the queue; NULL means "to dispatch".
    dispatched_at  TIMESTAMPTZ,
    -- Failed attempts so far (rate limits and auth pauses do not count).
    attempts       INTEGER NOT NULL DEFAULT 0,
    -- Why it failed, was refused or conflicted; never holds an email or a name.
    reason         TEXT,
    finished_at    TIMESTAMPTZ
);

CREATE INDEX events_to_dispatch ON user_sync.events (available_at, id)
    WHERE state = 'pending' AND dispatched_at IS NULL;
CREATE INDEX events_in_flight ON user_sync.events (dispatched_at)
    WHERE state = 'pending' AND dispatched_at IS NOT NULL;
CREATE INDEX events_pending_by_user ON user_sync.events (host_user_id, id)
    WHERE state = 'pending';
CREATE INDEX events_by_user ON user_sync.events (host_user_id, id);

-- Wakes the dispatcher as soon as the host's transaction commits.
CREATE FUNCTION user_sync.notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('user_sync_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON user_sync.events
    FOR EACH STATEMENT EXECUTE FUNCTION user_sync.notify_events();

-- One row per host user the worker has acted on.
CREATE TABLE user_sync.users (
    host_user_id      TEXT PRIMARY KEY,
    -- What the host app reads to fetch a user token.
    embedded_user_id  TEXT UNIQUE,
    -- The username this host user holds in Embedded, or is about to claim.
    -- Unique: two host users can never both claim one username.
    username          TEXT,
    full_name         TEXT,
    -- creating: a create was (maybe) sent and its outcome is not known yet;
    -- synced: embedded_user_id holds username/full_name;
    -- conflict: the username is held by someone else;
    -- erased: closed and deleted, personal data removed.
    state             TEXT NOT NULL,
    last_event_id     BIGINT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX users_username_claim ON user_sync.users (username)
    WHERE username IS NOT NULL AND state IN ('creating', 'synced');

-- Usernames that could not be given to a host user, for reconciliation.
CREATE TABLE user_sync.conflicts (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_user_id             TEXT NOT NULL,
    username                 TEXT NOT NULL,
    -- taken_by_host_user | taken_in_embedded | rename_refused
    reason                   TEXT NOT NULL,
    holder_host_user_id      TEXT,
    holder_embedded_user_id  TEXT,
    event_id                 BIGINT,
    status                   TEXT NOT NULL DEFAULT 'open',
    detected_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at              TIMESTAMPTZ
);

-- A conflict is reported once however often the event is retried.
CREATE UNIQUE INDEX conflicts_open_once ON user_sync.conflicts (host_user_id, username, reason)
    WHERE status = 'open';

-- Proof of deletion: ids and times only.
CREATE TABLE user_sync.erasures (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host_user_id      TEXT NOT NULL,
    embedded_user_id  TEXT,
    event_id          BIGINT NOT NULL UNIQUE,
    -- deleted | already_absent | never_created
    outcome           TEXT NOT NULL,
    requested_at      TIMESTAMPTZ NOT NULL,
    completed_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX erasures_by_user ON user_sync.erasures (host_user_id);

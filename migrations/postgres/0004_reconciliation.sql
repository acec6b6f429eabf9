-- Reconciliation: a conflict's life after it is reported, and the webhooks
-- that tell the host about it.

-- open -> resolved, with how and by whom. Conflicts resolved before this
-- migration were all resolved by the worker, their cause gone.
ALTER TABLE user_sync.conflicts
    -- adopted | retried | ignored | moot
    ADD COLUMN IF NOT EXISTS resolution   TEXT,
    -- 'worker', or the name an operator gave with --by
    ADD COLUMN IF NOT EXISTS resolved_by  TEXT,
    ADD COLUMN IF NOT EXISTS note         TEXT,
    -- An operator's retry under way: the conflict resolves `retried`, by
    -- them, when the retried event syncs the user.
    ADD COLUMN IF NOT EXISTS retry_by     TEXT,
    ADD COLUMN IF NOT EXISTS retry_note   TEXT,
    -- How often it was looked at again (a retry, a recheck), and when last.
    ADD COLUMN IF NOT EXISTS checks       INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS checked_at   TIMESTAMPTZ,
    -- When the worker next looks whether the holder still holds the
    -- username (open conflicts only).
    ADD COLUMN IF NOT EXISTS next_check_at TIMESTAMPTZ;
UPDATE user_sync.conflicts SET resolution = 'moot', resolved_by = 'worker'
    WHERE status = 'resolved' AND resolution IS NULL;
UPDATE user_sync.conflicts SET next_check_at = now()
    WHERE status = 'open' AND next_check_at IS NULL;
ALTER TABLE user_sync.conflicts ALTER COLUMN next_check_at SET DEFAULT now();

-- A host user's conflicts: erasure, ignored ones, `show`.
CREATE INDEX IF NOT EXISTS conflicts_by_host ON user_sync.conflicts (host_user_id);
-- Open conflicts due a recheck.
CREATE INDEX IF NOT EXISTS conflicts_recheck_due ON user_sync.conflicts (next_check_at)
    WHERE status = 'open';
-- Host users waiting for another host user to let a username go.
CREATE INDEX IF NOT EXISTS conflicts_waiting_on ON user_sync.conflicts (holder_host_user_id)
    WHERE status = 'open' AND holder_host_user_id IS NOT NULL;

-- Webhooks to the host, written in the same transaction as the change each
-- reports, and sent at least once by whichever process claims them.
CREATE TABLE IF NOT EXISTS user_sync.webhook_deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The webhook-id header: the same on every attempt.
    webhook_id       TEXT NOT NULL UNIQUE
                     DEFAULT ('msg_' || replace(gen_random_uuid()::text, '-', '')),
    -- conflict.opened | conflict.resolved | erasure.completed | event.failed
    type             TEXT NOT NULL,
    -- The body as sent (and signed): ids, reasons and resolutions only.
    payload          TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- When it may be tried next; a claim moves it ahead by a lease.
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- The last failure: an HTTP status or a transport error, never a body.
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    abandoned_at     TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON user_sync.webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

-- The webhook types the deployment sends, as `user-sync run` was configured
-- at its start (`webhooks.url` and `webhooks.events`); empty: webhooks off.
-- Every writer, an operator's command included, writes a delivery only for
-- a type listed here, so what the deployment sends does not depend on the
-- configuration of whoever made the change.
CREATE TABLE IF NOT EXISTS user_sync.webhook_subscriptions (
    type TEXT PRIMARY KEY
);

-- The body of a webhook: {"type", "timestamp", "data"}.
CREATE OR REPLACE FUNCTION user_sync.webhook_body(kind TEXT, data JSONB) RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'type', kind,
        'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'data', data)::text
$$;

-- A conflict as its webhooks tell it: ids, the reason, holders and how it
-- ended; never the username (an email), a note or an operator's name.
CREATE OR REPLACE FUNCTION user_sync.conflict_data(
    id BIGINT, host_user_id TEXT, reason TEXT, holder_host_user_id TEXT,
    holder_embedded_user_id TEXT, status TEXT, resolution TEXT) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'conflict_id', id, 'host_user_id', host_user_id, 'reason', reason,
        'holder_host_user_id', holder_host_user_id,
        'holder_embedded_user_id', holder_embedded_user_id,
        'status', status, 'resolution', resolution)
$$;

-- Sends the newest event of `host` again, at once, when it ended in a
-- conflict: what stood in its way may be gone. Returns its id, if any.
CREATE OR REPLACE FUNCTION user_sync.wake_user(host TEXT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    woken BIGINT;
BEGIN
    UPDATE user_sync.events e
    SET state = 'pending', available_at = now(), dispatched_at = NULL, attempts = 0,
        reason = NULL, finished_at = NULL
    WHERE e.id = (SELECT max(n.id) FROM user_sync.events n WHERE n.host_user_id = host)
      AND e.state = 'conflict'
    RETURNING e.id INTO woken;
    IF woken IS NOT NULL THEN
        PERFORM pg_notify('user_sync_events', '');
    END IF;
    RETURN woken;
END;
$$;

-- A host user letting a username go (closed, erased, its email changed, its
-- create refused) wakes the host users whose conflict was that it held it:
-- they are synced at once, and their conflicts resolve `moot`.
CREATE OR REPLACE FUNCTION user_sync.username_released() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM user_sync.wake_user(c.host_user_id)
    FROM user_sync.conflicts c
    WHERE c.holder_host_user_id = OLD.host_user_id AND c.username = OLD.username
      AND c.status = 'open' AND c.reason = 'taken_by_host_user';
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS users_username_released ON user_sync.users;
CREATE TRIGGER users_username_released AFTER UPDATE OF username ON user_sync.users
    FOR EACH ROW WHEN (OLD.username IS NOT NULL AND OLD.username IS DISTINCT FROM NEW.username)
    EXECUTE FUNCTION user_sync.username_released();

-- Reconciliation: a conflict's life after it is reported, and the webhooks
-- that tell the host about it (see the PostgreSQL migration of the same
-- name for what each column means).
ALTER TABLE user_sync_conflicts ADD COLUMN resolution TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN resolved_by TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN note TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN retry_by TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN retry_note TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE user_sync_conflicts ADD COLUMN checked_at TEXT;
ALTER TABLE user_sync_conflicts ADD COLUMN next_check_at TEXT;
UPDATE user_sync_conflicts SET resolution = 'moot', resolved_by = 'worker'
    WHERE status = 'resolved' AND resolution IS NULL;
UPDATE user_sync_conflicts SET next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE status = 'open' AND next_check_at IS NULL;

CREATE INDEX user_sync_conflicts_by_host ON user_sync_conflicts (host_user_id);
CREATE INDEX user_sync_conflicts_recheck_due ON user_sync_conflicts (next_check_at)
    WHERE status = 'open';
CREATE INDEX user_sync_conflicts_waiting_on ON user_sync_conflicts (holder_host_user_id)
    WHERE status = 'open' AND holder_host_user_id IS NOT NULL;

CREATE TABLE user_sync_webhook_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id       TEXT NOT NULL UNIQUE DEFAULT ('msg_' || lower(hex(randomblob(16)))),
    type             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    next_attempt_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    delivered_at     TEXT,
    abandoned_at     TEXT
);
CREATE INDEX user_sync_webhook_deliveries_due ON user_sync_webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE TABLE user_sync_webhook_subscriptions (
    type TEXT PRIMARY KEY
);

-- A host user letting a username go (closed, erased, its email changed, its
-- create refused) sends again, at once, the newest event of each host user
-- whose conflict was that it held it, when that event ended in the
-- conflict: they are synced, and their conflicts resolve `moot`. Here a
-- row holds its username while creating or synced (its state says so).
CREATE TRIGGER user_sync_users_username_released
AFTER UPDATE OF username, state ON user_sync_users
FOR EACH ROW WHEN OLD.username IS NOT NULL AND OLD.state IN ('creating', 'synced')
    AND (NEW.username IS NULL OR NEW.username <> OLD.username
         OR NEW.state NOT IN ('creating', 'synced'))
BEGIN
    UPDATE user_sync_events
    SET state = 'pending', available_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
        dispatched_at = NULL, attempts = 0, reason = NULL, finished_at = NULL
    WHERE state = 'conflict'
      AND id IN (SELECT (SELECT max(n.id) FROM user_sync_events n
                         WHERE n.host_user_id = c.host_user_id)
                 FROM user_sync_conflicts c
                 WHERE c.holder_host_user_id = OLD.host_user_id
                   AND c.username = OLD.username
                   AND c.status = 'open' AND c.reason = 'taken_by_host_user');
END;

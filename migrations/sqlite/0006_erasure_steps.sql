-- An erasure in steps (see the PostgreSQL migration of the same name).
CREATE TABLE user_sync_erasure_steps (
    host_user_id      TEXT PRIMARY KEY,
    embedded_user_id  TEXT NOT NULL,
    logs_sent_at      TEXT,
    logs_deleted_at   TEXT,
    user_sent_at      TEXT
);

ALTER TABLE user_sync_erasures ADD COLUMN logs_deleted_at TEXT;
ALTER TABLE user_sync_erasures ADD COLUMN user_deleted_at TEXT;
CREATE INDEX user_sync_erasures_by_completion ON user_sync_erasures (completed_at);

CREATE TABLE user_sync_erasure_alerts (
    event_id    INTEGER PRIMARY KEY,
    alerted_at  TEXT NOT NULL
);

CREATE INDEX user_sync_events_open_closures ON user_sync_events (occurred_at)
    WHERE kind = 'account_closure' AND state IN ('pending', 'failed');

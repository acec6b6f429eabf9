-- The deployment-wide pause (see the PostgreSQL migration of the same name).
CREATE TABLE user_sync_pause (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    paused_at  TEXT,
    paused_by  TEXT,
    reason     TEXT
);
INSERT INTO user_sync_pause (id) VALUES (1);

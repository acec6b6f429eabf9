-- The deployment-wide pause (`user-sync pause` / `resume`): one row. While
-- paused_at is set, every process stops calling the Embedded API and keeps
-- its events pending.
CREATE TABLE IF NOT EXISTS user_sync.pause (
    id         BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    paused_at  TIMESTAMPTZ,
    paused_by  TEXT,
    reason     TEXT
);
INSERT INTO user_sync.pause (id) VALUES (true) ON CONFLICT DO NOTHING;

-- An erasure in steps: the workflow logs, then the user (DELETE
-- /users/{id}/logs, then DELETE /users/{id}), each with its intent recorded
-- before the call, so that the proof stays true across lost answers and
-- crashes.

-- The steps of an erasure under way, one row per host user (a closure
-- superseded by another closure of the same user keeps what the first did).
-- Ids and times only; the row goes when the erasure is recorded.
CREATE TABLE user_sync.erasure_steps (
    host_user_id      TEXT PRIMARY KEY,
    -- The Embedded user the steps were taken on: steps taken on another
    -- user (one deleted outside and created again) do not count.
    embedded_user_id  TEXT NOT NULL,
    -- Intent: the logs delete was sent (its answer may be lost).
    logs_sent_at      TIMESTAMPTZ,
    -- Answered 200 or 404.
    logs_deleted_at   TIMESTAMPTZ,
    -- Intent: the user delete was sent. A 404 afterwards means the worker's
    -- own delete went through: the outcome is `deleted`.
    user_sent_at      TIMESTAMPTZ
);

-- The time of each step in the proof. NULL when the step did not apply:
-- logs_deleted_at when gdpr.delete_workflow_logs is off or no user was ever
-- created; user_deleted_at when no user was ever created.
ALTER TABLE user_sync.erasures
    ADD COLUMN logs_deleted_at TIMESTAMPTZ,
    ADD COLUMN user_deleted_at TIMESTAMPTZ;
CREATE INDEX erasures_by_completion ON user_sync.erasures (completed_at);

-- When each overdue request was last alerted (once an hour per request,
-- across every process). Its rows go with the erasure.
CREATE TABLE user_sync.erasure_alerts (
    event_id    BIGINT PRIMARY KEY,
    alerted_at  TIMESTAMPTZ NOT NULL
);

-- The closures not applied yet, for `erasures --pending`, `status` and the
-- deadline watch. Partial: only closures have entries, and `state` is
-- already an indexed column (events_to_dispatch), so no update that was HOT
-- stops being so.
CREATE INDEX events_open_closures ON user_sync.events (occurred_at)
    WHERE kind = 'account_closure' AND state IN ('pending', 'failed');

-- Retention (`[retention]`): finished rows the worker no longer needs are
-- deleted once they are old, in small batches, by one process of the
-- deployment at a time. This row is the deployment's schedule, the lease
-- of the process running a pass, and what retention removed, for
-- `user-sync status`.
--
-- The index retention and the operators' reads need on the outbox,
-- events_finished, is not made here: a CREATE INDEX in a migration's
-- transaction would stop the host's inserts for as long as it reads the
-- whole outbox. `user-sync migrate` builds it after the migrations,
-- CONCURRENTLY (src/storage/pg/migrate.rs); `run` refuses to start without
-- it.
CREATE TABLE IF NOT EXISTS user_sync.retention (
    id                 BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    -- The process running a pass, and until when its lease holds (each
    -- batch renews it; a process that dies leaves it to run out).
    leased_by          TEXT,
    leased_until       TIMESTAMPTZ,
    -- When the next pass is due, for whichever process comes first.
    next_pass_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Every event that finished before this was looked at by a pass: the
    -- next pass starts there.
    events_floor       TIMESTAMPTZ,
    -- When the last pass from the oldest event started (once a day: the
    -- rows kept then, a user's newest event among them, may go since).
    full_pass_at       TIMESTAMPTZ,
    -- When the last pass ended.
    last_pass_at       TIMESTAMPTZ,
    -- What retention removed since this table was made, and when last.
    events_removed     BIGINT NOT NULL DEFAULT 0,
    conflicts_removed  BIGINT NOT NULL DEFAULT 0,
    erasures_removed   BIGINT NOT NULL DEFAULT 0,
    webhooks_removed   BIGINT NOT NULL DEFAULT 0,
    last_removed_at    TIMESTAMPTZ
);
INSERT INTO user_sync.retention (id) VALUES (true) ON CONFLICT DO NOTHING;

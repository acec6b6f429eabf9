-- The dispatcher stops writing to the outbox. Until now each event was
-- updated once to say it was dispatched (`dispatched_at`), an update that
-- could not be HOT (the column is in two partial indexes' predicates): a
-- new row version and three index entries per event, paid in the host's
-- database. From now on the dispatcher keeps one row of its own, the
-- snapshot of the transactions it has dispatched the events of, and takes
-- the events of every transaction that committed since (the method of
-- PgQ): exact whatever order the host's transactions commit in, with no
-- window in which a late commit can be passed over.
--
-- Each event records the transaction that wrote it, `txid`, by default:
-- the host's insert still names only its four columns. Added without a
-- default first, then given one: an old row keeps NULL (no rewrite of a
-- large outbox), a new one gets its transaction's id. The pending events by
-- `txid` (`events_pending`, built concurrently by `migrate`) are what the
-- dispatcher, the sweeper and `status` read; the index takes the place of
-- the one of events to dispatch, and a host's insert adds one entry to it
-- as it did to that one.
--
-- The migration takes the outbox's exclusive lock for a moment (adding a
-- column needs it): it waits at most `lock_timeout` for a host transaction
-- that holds the table, then gives up and `migrate` tries again, so that
-- the host's inserts never queue behind it for long.
SET LOCAL lock_timeout = '2s';

ALTER TABLE user_sync.events ADD COLUMN IF NOT EXISTS txid xid8;
ALTER TABLE user_sync.events ALTER COLUMN txid SET DEFAULT pg_current_xact_id();

-- An event to dispatch again (a snooze, a sweep of a lost job) waits with
-- this mark until `available_at`; the dispatcher takes the mark off when it
-- pushes it. Its index (`events_redispatch`, built concurrently by
-- `migrate`) holds only the marked events: the host's insert and the end
-- of an event add nothing to it.
ALTER TABLE user_sync.events ADD COLUMN IF NOT EXISTS redispatch boolean NOT NULL DEFAULT false;

-- The dispatcher's progress, written by the process that holds the
-- dispatch lock (an advisory lock).
-- `snapshot`: every event of a transaction visible in it has been
-- dispatched. `draining` and `after_txid`/`after_id`: a tick that found
-- more events than one batch holds, the snapshot it drains and the last
-- event it took.
CREATE TABLE IF NOT EXISTS user_sync.dispatch (
    id           BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    snapshot     pg_snapshot NOT NULL,
    draining     pg_snapshot,
    after_txid   xid8,
    after_id     BIGINT
);

-- The events pending now were written before this transaction's snapshot:
-- they join the new scheme under its own transaction id (visible in the
-- snapshot, so not dispatched a second time as new). Those never
-- dispatched are marked to dispatch; those in flight keep their job, and
-- the time they were dispatched stands in for `available_at`, which is
-- how the sweeper tells how long an event has waited on its job.
UPDATE user_sync.events
SET txid = pg_current_xact_id(),
    redispatch = (dispatched_at IS NULL),
    available_at = GREATEST(available_at, dispatched_at)
WHERE state = 'pending';

INSERT INTO user_sync.dispatch (snapshot) VALUES (pg_current_snapshot())
ON CONFLICT DO NOTHING;

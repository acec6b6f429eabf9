-- An event's end becomes a HOT update. Until now it changed `state`, a
-- column of three partial indexes (the pending events, the finished ones,
-- the open closures), and `finished_at`: PostgreSQL wrote a new row
-- version with an entry in every index, and vacuum had to clean each of
-- them, all in the host's database. From now on no index of the outbox
-- names `state`, `finished_at` or `attempts`: the end rewrites the row in
-- place on its page (the fill factor leaves room), one WAL record.
--
-- What those indexes answered is answered otherwise:
--  * the dispatcher reads every event by `txid` (`events_by_txid`, built
--    concurrently by `migrate`), and skips the ended ones on the row;
--  * the sweeper no longer reads the pending events: it walks the events
--    the dispatcher took, in its order, once, from where it stopped
--    (`swept` below), and stops at the first one still in flight;
--  * an event dispatched again stays marked (`redispatch`) until it ends,
--    its `available_at` the time by which its job must have ended (a
--    lease): the events in flight are those after the sweeper's place and
--    those marked;
--  * the failed, invalid and conflict events all carry a reason, and are
--    found among the events that do (`events_with_reason`);
--  * closures are found among the closures (`events_closures`);
--  * the ends per minute are counted as they happen
--    (`user_sync.finished_counts`), and retention walks the outbox by id.
--
-- Workers of the older version stop dispatching and sweeping once this has
-- run (their dispatcher's table is renamed, and a trigger refuses the one
-- write of theirs that would take a pending event's mark off); their jobs
-- in the queue end as before, and the workers of this version take over.
-- `migrate` builds the new indexes before this runs (they need no column
-- of its own), so that they can start at once.
--
-- The host's inserts wait while this runs (see the trigger below), at
-- most `lock_timeout` longer. A run that deadlocks with an older worker's
-- end of an event is tried again by `migrate`, as one whose lock timed out.
SET LOCAL lock_timeout = '2s';

-- No claim of an older dispatcher is under way while the table moves.
SELECT pg_advisory_xact_lock(hashtext('user_sync.dispatch'), 0);

ALTER TABLE user_sync.dispatch RENAME TO dispatcher;

-- The sweeper passes each event once: a pending event's mark may come off
-- only with a new `txid` (a retry), which puts it after the sweeper's place.
-- An older worker's dispatcher takes marks off; this stops it. Made first:
-- creating a trigger takes a lock on the outbox that holds the host's
-- inserts until this commits (the statements below take well under a
-- second), and taking it before any row lock leaves nothing to deadlock
-- on; it waits at most `lock_timeout` for a host transaction. An AFTER
-- trigger, whose condition is checked on the row as the update leaves it:
-- a BEFORE one would lock each row before its update (a WAL record more
-- for every end).
CREATE OR REPLACE FUNCTION user_sync.refuse_unmarking() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a pending event keeps its redispatch mark (a user-sync worker older '
        'than migration 0014 is dispatching: stop it)'
        USING ERRCODE = 'check_violation';
END;
$$;
DROP TRIGGER IF EXISTS events_keep_marks ON user_sync.events;
CREATE TRIGGER events_keep_marks AFTER UPDATE OF redispatch ON user_sync.events
    FOR EACH ROW
    WHEN (OLD.redispatch AND NOT NEW.redispatch AND NEW.state = 'pending'
          AND NEW.txid IS NOT DISTINCT FROM OLD.txid)
    EXECUTE FUNCTION user_sync.refuse_unmarking();

-- The sweeper's place: every event of a transaction visible in `swept` was
-- dispatched, and then ended, marked, or found lost (and marked). A walk
-- that stops inside the next tick (at an event still in flight, or at its
-- batch's end) keeps the tick's snapshot in `sweeping` and the last event
-- it passed in `swept_txid`/`swept_id`.
ALTER TABLE user_sync.dispatcher
    ADD COLUMN IF NOT EXISTS swept pg_snapshot,
    ADD COLUMN IF NOT EXISTS sweeping pg_snapshot,
    ADD COLUMN IF NOT EXISTS swept_txid xid8,
    ADD COLUMN IF NOT EXISTS swept_id BIGINT;

-- The events in flight now, dispatched by the older version, are marked
-- to dispatch again at once: the sweeper starts after them, and their job
-- may be lost. One whose job is alive is carried out twice, harmlessly
-- (the second job finds it done). A marked event's `dispatched_at` says it
-- is in flight on a lease from now on: the older version's is cleared.
UPDATE user_sync.events e
SET redispatch = true, dispatched_at = NULL, available_at = LEAST(e.available_at, now())
FROM user_sync.dispatcher d
WHERE e.state = 'pending' AND NOT e.redispatch AND e.txid IS NOT NULL
  AND (pg_visible_in_snapshot(e.txid, d.snapshot)
       OR (d.draining IS NOT NULL AND pg_visible_in_snapshot(e.txid, d.draining)
           AND (e.txid, e.id) <= (d.after_txid, d.after_id)));
UPDATE user_sync.events SET dispatched_at = NULL
WHERE redispatch AND dispatched_at IS NOT NULL;

UPDATE user_sync.dispatcher SET swept = snapshot WHERE swept IS NULL;
ALTER TABLE user_sync.dispatcher ALTER COLUMN swept SET NOT NULL;

-- Every failed, invalid or conflict event says why (the worker always gave
-- one; a row without is given its state): `events_with_reason` finds them.
UPDATE user_sync.events SET reason = state
WHERE state IN ('failed', 'invalid', 'conflict') AND reason IS NULL;

-- How many events ended in each state, per minute, for the console's
-- activity. Each statement that ends events adds a row of its own (no
-- row lock is shared between jobs); the sweeper folds them into one row
-- per minute and state (`compacted`) and drops what is a day old. The
-- counts start here: the ends before this migration are not in them.
CREATE TABLE IF NOT EXISTS user_sync.finished_counts (
    minute     TIMESTAMPTZ NOT NULL,
    state      TEXT NOT NULL,
    events     BIGINT NOT NULL,
    compacted  BOOLEAN NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX IF NOT EXISTS finished_counts_per_minute
    ON user_sync.finished_counts (minute, state) WHERE compacted;

-- A user woken (the username of its conflict is free again) has its event
-- marked to dispatch at once: the sweeper has passed it, as it passes every
-- ended event; its conflict's end is taken back from the counts.
CREATE OR REPLACE FUNCTION user_sync.wake_user(host TEXT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    woken BIGINT;
    was_finished TIMESTAMPTZ;
BEGIN
    SELECT e.id, e.finished_at INTO woken, was_finished
    FROM user_sync.events e
    WHERE e.id = (SELECT max(n.id) FROM user_sync.events n WHERE n.host_user_id = host)
      AND e.state = 'conflict'
    FOR UPDATE;
    IF woken IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE user_sync.events
    SET state = 'pending', available_at = now(), dispatched_at = NULL, attempts = 0,
        reason = NULL, finished_at = NULL, redispatch = true
    WHERE id = woken;
    IF was_finished IS NOT NULL THEN
        INSERT INTO user_sync.finished_counts (minute, state, events)
        VALUES (date_trunc('minute', was_finished), 'conflict', -1);
    END IF;
    PERFORM pg_notify('user_sync_events', '');
    RETURN woken;
END;
$$;

-- Retention's events sweep goes by id from here: every event below it
-- that had finished before `events_floor` was looked at. `events_reached`
-- is where the pass under way has got to.
ALTER TABLE user_sync.retention
    ADD COLUMN IF NOT EXISTS events_floor_id BIGINT,
    ADD COLUMN IF NOT EXISTS events_reached_id BIGINT;


//! The outbox, `user_sync.events`, on PostgreSQL: what the dispatcher
//! claims, what a job reads, and how an event ends.
//!
//! # Plans that do not depend on statistics
//!
//! The outbox fills in bursts (a backfill, a migration of the host's users)
//! far faster than autovacuum analyzes it, and the planner's idea of how
//! many events are pending is then from before the burst: none. Any access
//! path through the pending events' partial indexes looks free to it, and a
//! statement meant to touch 64 rows reads every pending event instead, each
//! time (measured: 37 ms instead of 2 ms per batch with 30,000 pending).
//! So the statements of the sync path say how they reach their rows:
//!
//! - by key, through the primary key: a guard on the state is written
//!   `state IS NOT DISTINCT FROM 'pending'`, which means the same on this
//!   `NOT NULL` column but does not let the planner pick a partial index on
//!   pending events to find the keys;
//! - per host user, through a `LATERAL` subquery with a `LIMIT`, which is
//!   always run once per user and through the index on its key (a hash of
//!   the host user id over all of the user's events, `events_by_user_hash`:
//!   a user has few, sorted by id once found; a btree would refuse a long
//!   id in the host's own insert, and an index of the pending ones alone
//!   cost two more index entries per event);
//! - an `EXISTS` that must stay a per-row probe carries `OFFSET 0`, which
//!   keeps PostgreSQL from turning it into a join over the whole table;
//! - a condition on the id beside the host user's (its events before or
//!   after one) is applied to the user's events once found, above an
//!   `OFFSET 0`: written beside the host user's, it lets the planner read
//!   the primary key's range of every id below (a bitmap of half the
//!   table, per user) or walk the primary key backwards for `ORDER BY id
//!   DESC LIMIT 1`, plans it picks as soon as the table's pages outgrow its
//!   estimate of their rows (seen when the outbox's pages were given room
//!   for updates: a job's read went from under 1 ms to 200 ms).
//!
//! A statement whose shape alone fixes its plan is prepared once per
//! connection and its plan reused: planning was a fifth of the database's
//! time in the pipeline bench. One that joins a batch to a table reaches the
//! table's rows by key, and is reused too, with sequential scans off for
//! its transaction: through `= ANY` of the batch's keys where it needs
//! nothing of the batch's rows (`users::mark_synced`, the events it
//! applies), or by a probe of the key per row of the batch where it does
//! (the ends of events, [`FINISH`]: with `= ANY` as well, the plan compared
//! every event with every row of the batch). One that cannot leaves the
//! join method to the planner, so it is planned for its rows each time
//! (`.persistent(false)`, retention's batches): a plan made while the table
//! was nearly empty would otherwise read all of it once it has grown. The
//! dispatcher's claim and the sweeper's walk read `events_by_txid` in its
//! order up to a `LIMIT`, a plan the same at any size, and are reused
//! (with bitmap scans off, which a plan made for any snapshot would pick:
//! see [`CLAIM`]); `status` reads the range after the sweeper's place, of
//! any size, by index only (`BY_INDEX`), in a plan made once.
//!
//! # No index names what an end changes
//!
//! An event's end sets `state`, `finished_at`, `reason` (`attempts` when it
//! failed), and takes a mark off (`redispatch`, already off on an event
//! dispatched once). None is in an index of the outbox (`reason` is in
//! `events_with_reason`'s condition: an applied event has none), so the end
//! rewrites the row on its page and writes no index entry (a HOT update;
//! the fill factor of 0012 leaves the room). A statement here that wants
//! the events in some state reaches them otherwise: by `txid` and the
//! sweeper's place (pending), by their reason (failed, invalid, conflict),
//! by kind (closures), by user or by key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::domain::{EventState, FullName, HostUserId, Intent, Profile, WebhookKind};
use crate::storage::events::{Claimed, NextEvent, NextEventRow, claimed_from, host_of_written};
use crate::storage::written::Written;

/// The reason an ending row `$t` (with `state` and `reason`) records: its
/// own, and for a failed, invalid or conflict event at least its state
/// (`events_with_reason` finds those by their reason).
macro_rules! reason_of {
    ($t:literal) => {
        concat!(
            "CASE WHEN ",
            $t,
            ".state IN ('failed', 'invalid', 'conflict') THEN COALESCE(",
            $t,
            ".reason, ",
            $t,
            ".state) ELSE ",
            $t,
            ".reason END"
        )
    };
}

/// A `WITH` item that adds the events the data-modifying `WITH` item `$cte`
/// returned (their `state`) to the ends per minute, one row per state for
/// the statement: no row is shared with another job's statement, so none
/// waits for another's lock. The sweeper folds them together
/// ([`compact_finished_counts`]).
macro_rules! count_ends {
    ($cte:literal) => {
        concat!(
            "counted AS (
         INSERT INTO user_sync.finished_counts (minute, state, events)
         SELECT date_trunc('minute', now()), state, count(*) FROM ",
            $cte,
            " GROUP BY state)"
        )
    };
}
pub(super) use count_ends;

/// A `WITH` item that takes back, from the ends per minute, the ends the
/// data-modifying `WITH` item `$cte` undid: the events it made pending
/// again (a retry), returned with the state and end they had
/// (`was_state`, `was_finished`). An event counts once, as it ended last.
macro_rules! uncount_ends {
    ($cte:literal) => {
        concat!(
            "uncounted AS (
         INSERT INTO user_sync.finished_counts (minute, state, events)
         SELECT date_trunc('minute', was_finished), was_state, -count(*) FROM ",
            $cte,
            " WHERE was_state <> 'pending' AND was_finished IS NOT NULL GROUP BY 1, 2)"
        )
    };
}
pub(super) use uncount_ends;

/// When event row `$e` was or is due: its `available_at`, but for an event
/// dispatched again and in flight (marked, with the time it was dispatched),
/// whose `available_at` is the end of its lease ([`claim_due`]): due then.
macro_rules! due_of {
    ($e:literal) => {
        concat!(
            "CASE WHEN ",
            $e,
            ".redispatch AND ",
            $e,
            ".dispatched_at IS NOT NULL THEN LEAST(",
            $e,
            ".available_at, ",
            $e,
            ".dispatched_at) ELSE ",
            $e,
            ".available_at END"
        )
    };
}
pub(super) use due_of;

/// Claims up to `limit` events due for dispatch, inside `tx`, without
/// writing to a new event's row: the claim is the dispatcher's own row
/// (`user_sync.dispatcher`), which moves on in `tx` and commits only once the
/// jobs are in the queue. A crash before the commit leaves the events to
/// dispatch again; nothing is lost.
///
/// # What is due
///
/// - The events marked to dispatch again (snoozed, swept, an older row's)
///   whose time has come. The mark stays until the event ends, and
///   `available_at` moves `lease` on: the time by which its job must have
///   ended it, after which it is due again (the sweeper brings that time
///   forward when the queue lost its jobs). The sweeper never looks at a
///   marked event, so this is what finds its job lost.
/// - The events of every transaction that committed since the last claim:
///   those whose `txid` is not visible in the snapshot the dispatcher kept
///   and is visible in this claim's own (the method of PgQ). A host
///   transaction that commits late, after later ones were dispatched, was
///   in progress in the kept snapshot, so its events are taken by the
///   first claim that sees them: none is passed over, none taken twice.
///   A tick with more events than a batch holds is drained over several
///   claims, in `(txid, id)` order, from where the last one stopped.
///
/// One process of the deployment claims at a time: the first to take the
/// dispatch lock claims, and another that finds it taken claims
/// nothing this round (it claims again at its next wake-up, which every
/// commit of the host's sends to every process). An event that ended
/// meanwhile (superseded by a job of its user) is left out, or, if it ends
/// while this claim reads, dispatched once more, which is harmless: its
/// job finds nothing pending.
///
/// Returns the events to push, and whether the claim stopped at `limit`
/// (more may be due at once: an ended event it passed over counts).
pub async fn claim_due(
    tx: &mut Transaction<'_, Postgres>,
    limit: u32,
    lease: Duration,
) -> sqlx::Result<(Vec<Claimed>, bool)> {
    // A transaction-scoped advisory lock, which writes nothing (a row lock
    // would log a record each claim, an idle worker's included); the key
    // an older version's dispatcher takes, so the two never claim at once.
    let locked: bool = sqlx::query_scalar(DISPATCH_LOCK)
        .fetch_one(&mut **tx)
        .await?;
    if !locked {
        return Ok((Vec::new(), false));
    }
    let again: Vec<(i64, Option<Written>, bool)> = sqlx::query_as(
        // The host id up to its bound (`storage::written`): 256 characters.
        // A pending event keeps its mark, and is due again when its lease
        // runs out; one that ended meanwhile loses it. A row written
        // without a `txid` (by an older version) gets this transaction's.
        "UPDATE user_sync.events e
         SET redispatch = e.state IS NOT DISTINCT FROM 'pending',
             available_at = now() + make_interval(secs => $2), dispatched_at = now(),
             txid = COALESCE(e.txid, pg_current_xact_id())
         WHERE e.id = ANY(ARRAY(SELECT id FROM user_sync.events
                                WHERE redispatch AND available_at <= now()
                                ORDER BY available_at LIMIT $1))
           AND e.redispatch
         RETURNING e.id, substr(e.host_user_id, 1, 256), e.state = 'pending'",
    )
    .bind(i64::from(limit))
    .bind(lease.as_secs_f64())
    .fetch_all(&mut **tx)
    .await?;
    let room = i64::from(limit).saturating_sub(i64::try_from(again.len()).unwrap_or(i64::MAX));
    let fresh: Vec<(i64, Option<Written>, bool)> = if room > 0 {
        sqlx::query_as(CLAIM_FRESH)
            .bind(room)
            .fetch_all(&mut **tx)
            .await?
    } else {
        Vec::new()
    };
    let full = room <= 0 || i64::try_from(fresh.len()).is_ok_and(|n| n >= room);
    let rows: Vec<(i64, Option<Written>)> = again
        .into_iter()
        .chain(fresh)
        .filter(|(_, _, pending)| *pending)
        .map(|(id, host, _)| (id, host))
        .collect();
    Ok((claimed_from(rows), full))
}

/// Opens the claim's transaction: it commits as an outcome does, without
/// waiting for the disk (a move lost in a crash of the database server only
/// dispatches its events once more), and reads the events through their
/// indexes, in their order. A plan made once for any snapshot guesses a
/// tick holds a row or two, and would rather fetch the whole tick through
/// a bitmap and sort it, for each batch of a burst (seen: 21,500 rows read
/// to take 64), or read a small outbox whole, and keep that plan as it
/// grows.
pub(super) const CLAIM: &str = "BEGIN; SET LOCAL synchronous_commit = off;
     SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off";

/// Takes the dispatch lock if it is free.
const DISPATCH_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtext('user_sync.dispatch'), 0)";

/// The pending events of the transactions that committed since the
/// dispatcher's kept snapshot, up to `$1`, and the dispatcher's row moved
/// past them: to this statement's snapshot when the tick is done, to the
/// last event taken while it drains.
///
/// Through `events_by_txid`, in its order, in two parts: the transactions
/// the kept snapshot saw in progress (a probe each), then every one from
/// its end on. A host transaction that stays open for long is one probe,
/// not a scan of every event written since it began.
const CLAIM_FRESH: &str = "WITH d AS (
         SELECT snapshot AS prev, COALESCE(draining, pg_current_snapshot()) AS cur,
                COALESCE(after_txid, '0'::xid8) AS after_txid, COALESCE(after_id, 0) AS after_id,
                draining IS NOT NULL AS draining
         FROM user_sync.dispatcher),
     taken AS (
         SELECT e.id, e.txid, e.host_user_id
         FROM d CROSS JOIN LATERAL (
             (SELECT id, txid, host_user_id FROM user_sync.events
              WHERE txid = ANY(ARRAY(SELECT pg_snapshot_xip(d.prev)))
                AND state = 'pending' AND (txid, id) > (d.after_txid, d.after_id)
                AND pg_visible_in_snapshot(txid, d.cur)
              ORDER BY txid, id LIMIT $1)
             UNION ALL
             (SELECT id, txid, host_user_id FROM user_sync.events
              WHERE txid >= pg_snapshot_xmax(d.prev) AND txid < pg_snapshot_xmax(d.cur)
                AND state = 'pending' AND (txid, id) > (d.after_txid, d.after_id)
                AND pg_visible_in_snapshot(txid, d.cur)
              ORDER BY txid, id LIMIT $1)
             ORDER BY txid, id LIMIT $1) e),
     last AS (
         SELECT count(*) AS n, max(txid) AS txid,
                max(id) FILTER (WHERE txid = (SELECT max(txid) FROM taken)) AS id
         FROM taken),
     moved AS (
         UPDATE user_sync.dispatcher SET
             snapshot = CASE WHEN last.n < $1 THEN d.cur ELSE d.prev END,
             draining = CASE WHEN last.n < $1 THEN NULL ELSE d.cur END,
             after_txid = CASE WHEN last.n < $1 THEN NULL ELSE last.txid END,
             after_id = CASE WHEN last.n < $1 THEN NULL ELSE last.id END
         FROM d, last
         -- Nothing taken and nothing drained: the kept snapshot still
         -- says what was dispatched, and the row is left as it is (an
         -- idle worker writes nothing).
         WHERE last.n > 0 OR d.draining)
     -- Pending, as both parts read them: the flag the marked events carry.
     SELECT id, substr(host_user_id, 1, 256), true FROM taken";

/// How long until the next event marked to dispatch again is due, if any.
pub async fn next_due_in(pool: &PgPool) -> sqlx::Result<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (min(available_at) - now()))::float8
         FROM user_sync.events WHERE redispatch",
    )
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// The dispatcher's kept snapshot, as text (`xmin:xmax:xip,...`): every
/// event of a transaction visible in it has been dispatched.
pub async fn dispatched_snapshot(pool: &PgPool) -> sqlx::Result<String> {
    sqlx::query_scalar("SELECT snapshot::text FROM user_sync.dispatcher")
        .fetch_one(pool)
        .await
}

/// Finds the events whose job was lost, dispatched before `dispatched` (a
/// snapshot the dispatcher kept, as [`dispatched_snapshot`] read it) and
/// waiting on their job since before `after` ago, still pending, and
/// marks them to dispatch again, at once. Returns how many.
///
/// Two kinds of events are in flight. Those dispatched again carry their
/// mark until they end, and a lease ([`claim_due`]): a lease older than
/// `after` comes due now. The others are dispatched once, by their
/// transaction: the sweeper walks them in the dispatcher's order
/// ([`WALK`]), from where it stopped, passing those that ended or were
/// marked, marking those lost, and stopping at the first one still in
/// flight and not yet lost: every event is looked at once or a few
/// times, never the whole history, and no index of pending events is
/// needed.
pub async fn sweep_stale(pool: &PgPool, dispatched: &str, after: Duration) -> sqlx::Result<u64> {
    let mut conn = pool.acquire().await?;
    let leased = sqlx::query(
        "UPDATE user_sync.events SET available_at = now()
         WHERE redispatch AND available_at > now()
           AND dispatched_at < now() - make_interval(secs => $1)
           AND state IS NOT DISTINCT FROM 'pending'",
    )
    .bind(after.as_secs_f64())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let mut lost = 0;
    for _ in 0..WALKS_PER_SWEEP {
        let mut tx = sqlx::Connection::begin_with(&mut *conn, WALK_BEGIN).await?;
        sqlx::query(SWEEP_LOCK).execute(&mut *tx).await?;
        let (marked, more): (i64, bool) = sqlx::query_as(WALK)
            .bind(WALK_BATCH)
            .bind(dispatched)
            .bind(after.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        lost += u64::try_from(marked).unwrap_or(0);
        if !more {
            break;
        }
    }
    Ok(leased + lost)
}

/// Events one walk looks at, at most.
const WALK_BATCH: i64 = 5_000;

/// Walks one sweep goes on for while each finds the next batch as far as
/// its end (a burst was dispatched since the last sweep; the queue lost
/// the jobs of every event in flight): five million events.
const WALKS_PER_SWEEP: usize = 1_000;

/// Opens a walk's transaction: the events by `txid` in the index's order,
/// as the claim reads them ([`CLAIM`]).
const WALK_BEGIN: &str = "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off";

/// Taken by the one process of the deployment that walks at a time; one
/// that finds it taken waits (a walk takes milliseconds), then walks from
/// where the other stopped: a process that learned the queue lost its jobs
/// must mark every event in flight, whoever walked last.
const SWEEP_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('user_sync.dispatch'), 1)";

/// One walk of the sweeper (see [`sweep_stale`]): up to `$1` events of
/// the tick after `swept` (the dispatcher's snapshot then: its events are
/// all dispatched), in `(txid, id)` order from where the last walk
/// stopped. Lost: pending, unmarked, its transaction visible in `$2` (a
/// snapshot the dispatcher kept at least `$3` seconds ago) and due since
/// before then. Each lost one is marked; the walk's place moves up to the
/// first event still in flight (pending, unmarked, not lost), or past the
/// tick when it has none. Returns how many it marked, and whether the
/// next walk may go on at once: nothing in flight stopped this one, and it
/// stopped at `$1`, or finished a tick it had kept from an earlier walk
/// (the dispatcher has moved on since: a sweep after the queue lost its
/// jobs must reach every event dispatched before it looked).
const WALK: &str = "WITH d AS (
         SELECT swept AS prev, COALESCE(sweeping, snapshot) AS cur,
                COALESCE(swept_txid, '0'::xid8) AS after_txid, COALESCE(swept_id, 0) AS after_id,
                sweeping IS NOT NULL AS fixed
         FROM user_sync.dispatcher),
     walked AS (
         SELECT e.id, e.txid, e.pending AND NOT e.marked AS in_flight,
                e.pending AND NOT e.marked AND e.lost AS lost
         FROM d CROSS JOIN LATERAL (
             (SELECT id, txid, state = 'pending' AS pending, redispatch AS marked,
                     pg_visible_in_snapshot(txid, $2::text::pg_snapshot)
                       AND available_at < now() - make_interval(secs => $3) AS lost
              FROM user_sync.events
              WHERE txid = ANY(ARRAY(SELECT pg_snapshot_xip(d.prev)))
                AND (txid, id) > (d.after_txid, d.after_id)
                AND pg_visible_in_snapshot(txid, d.cur)
              ORDER BY txid, id LIMIT $1)
             UNION ALL
             (SELECT id, txid, state = 'pending', redispatch,
                     pg_visible_in_snapshot(txid, $2::text::pg_snapshot)
                       AND available_at < now() - make_interval(secs => $3)
              FROM user_sync.events
              WHERE txid >= pg_snapshot_xmax(d.prev) AND txid < pg_snapshot_xmax(d.cur)
                AND (txid, id) > (d.after_txid, d.after_id)
                AND pg_visible_in_snapshot(txid, d.cur)
              ORDER BY txid, id LIMIT $1)
             ORDER BY txid, id LIMIT $1) e),
     waiting AS (
         SELECT txid, id FROM walked WHERE in_flight AND NOT lost ORDER BY txid, id LIMIT 1),
     passed AS (
         SELECT w.txid, w.id FROM walked w
         WHERE NOT EXISTS (SELECT 1 FROM waiting b WHERE (w.txid, w.id) >= (b.txid, b.id))),
     last AS (
         SELECT (SELECT count(*) FROM walked) AS walked,
                EXISTS (SELECT 1 FROM waiting) AS waiting,
                max(txid) AS txid,
                max(id) FILTER (WHERE txid = (SELECT max(txid) FROM passed)) AS id
         FROM passed),
     marked AS (
         UPDATE user_sync.events e SET redispatch = true, available_at = now(), dispatched_at = NULL
         WHERE e.id = ANY(ARRAY(SELECT id FROM walked WHERE lost))
           AND e.state IS NOT DISTINCT FROM 'pending' AND NOT e.redispatch
         RETURNING 1),
     moved AS (
         UPDATE user_sync.dispatcher SET
             swept = CASE WHEN done THEN d.cur ELSE d.prev END,
             sweeping = CASE WHEN done THEN NULL ELSE d.cur END,
             swept_txid = CASE WHEN done THEN NULL ELSE COALESCE(last.txid, d.after_txid) END,
             swept_id = CASE WHEN done THEN NULL ELSE COALESCE(last.id, d.after_id) END
         FROM d, last, LATERAL (SELECT NOT last.waiting AND last.walked < $1 AS done) t
         -- A tick with nothing in it is passed without a write when the
         -- dispatcher has not moved (an idle worker writes nothing).
         WHERE last.walked > 0 OR d.cur::text <> d.prev::text)
     SELECT (SELECT count(*) FROM marked),
            (SELECT NOT last.waiting AND (last.walked >= $1 OR d.fixed) FROM last, d)";

/// Folds the rows each ending statement added to `finished_counts` into
/// one per minute and state, and drops the minutes older than the console
/// shows (a day). Two processes folding at once fold different rows.
pub async fn compact_finished_counts(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query(
        "WITH raw AS (
             DELETE FROM user_sync.finished_counts WHERE NOT compacted
             RETURNING minute, state, events)
         INSERT INTO user_sync.finished_counts (minute, state, events, compacted)
         SELECT minute, state, sum(events)::bigint, true FROM raw GROUP BY 1, 2
         ON CONFLICT (minute, state) WHERE compacted
         DO UPDATE SET events = finished_counts.events + excluded.events",
    )
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM user_sync.finished_counts WHERE minute < now() - interval '25 hours'")
        .execute(pool)
        .await?;
    Ok(())
}

/// [`NextEvent`] of each of `hosts` (in their order), read in one round
/// trip for all of them: `None` for a host with no pending event.
pub async fn newest_pending_many(
    conn: &mut PgConnection,
    hosts: &[&str],
) -> sqlx::Result<Vec<Option<NextEvent>>> {
    let rows: Vec<NextEventRow> = sqlx::query_as(concat!(
        // The host's columns up to their bounds (`storage::written`).
        "SELECT e.id, substr(e.host_user_id, 1, 256) AS host_user_id,
                substr(e.kind, 1, 65) AS kind, substr(e.email, 1, 1025) AS email,
                substr(e.full_name, 1, 1025) AS full_name, e.occurred_at,
                e.attempts, ",
        due_of!("e"),
        " AS available_at,
                e.older_pending,
                u.last_event_id AS last_acted_on,
                COALESCE((SELECT l.state IN ('pending', 'superseded') FROM user_sync.events l
                          WHERE l.id = u.last_event_id), false) AS last_acted_unfinished,
                u.state AS user_state,
                u.embedded_user_id AS user_embedded_id, u.username AS user_username,
                u.full_name AS user_full_name, u.updated_at AS user_updated_at,
                u.username_seen_free AS user_seen_free,
                p.username AS probe_username,
                (SELECT o.host_user_id FROM user_sync.users o
                  WHERE o.username = p.username AND o.state IN ('creating', 'synced')
                    AND o.host_user_id <> h.host
                  LIMIT 1) AS probe_holder
         FROM unnest($1::text[]) AS h(host)
         CROSS JOIN LATERAL (
             SELECT *, count(*) OVER () - 1 AS older_pending
             FROM (SELECT * FROM user_sync.events e
                   WHERE e.host_user_id = h.host OFFSET 0) e
             WHERE e.state = 'pending'
             ORDER BY e.id DESC LIMIT 1) e
         LEFT JOIN LATERAL (
             SELECT * FROM user_sync.users u WHERE u.host_user_id = h.host LIMIT 1) u ON true
         CROSS JOIN LATERAL (SELECT lower(btrim(substr(e.email, 1, 1025))) AS username) p"
    ))
    // Per-user probes only: the plan is the same at any size, and reused.
    // A user's events are read once: the newest pending one, and how many
    // others are pending (all older: the newest has the highest id), by a
    // count over the same rows (a second probe of them cost 4% of the
    // statement, counted by callgrind).
    .bind(hosts)
    .fetch_all(conn)
    .await?;
    let mut by_host: std::collections::HashMap<String, NextEvent> = rows
        .into_iter()
        .filter_map(|row| {
            let next = row.into_next();
            Some((next.event.host_user_id.clone()?, next))
        })
        .collect();
    Ok(hosts.iter().map(|host| by_host.remove(*host)).collect())
}

/// Ends one event, in the caller's transaction.
pub async fn finish(
    conn: &mut PgConnection,
    id: i64,
    state: EventState,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    // A plan of `FINISH` made while the outbox was small would read it
    // whole at every end after.
    super::by_key_from_here(conn).await?;
    finish_many(conn, &[(id, state, reason)]).await
}

/// Ends several events, each in its own state and with its own reason. An
/// event that ends `failed` writes an `event.failed` webhook in the same
/// statement, when the deployment sends them.
pub async fn finish_many(
    conn: &mut PgConnection,
    ends: &[(i64, EventState, Option<&str>)],
) -> sqlx::Result<()> {
    let ids: Vec<i64> = ends.iter().map(|(id, _, _)| *id).collect();
    let states: Vec<&str> = ends.iter().map(|(_, state, _)| state.as_str()).collect();
    let reasons: Vec<Option<&str>> = ends.iter().map(|(_, _, reason)| *reason).collect();
    // Nearly every batch ends no event `failed`: it runs the bare update,
    // and the statement that also writes webhooks is paid only by a batch
    // that needs it.
    let failing = ends
        .iter()
        .any(|(_, state, _)| *state == EventState::Failed);
    let query = sqlx::query(if failing {
        FINISH_WRITING_FAILURES
    } else {
        FINISH
    })
    // The events are reached by key (`= ANY` of the batch's ids): the plan
    // is the same at any size, and reused.
    .bind(&ids)
    .bind(&states)
    .bind(&reasons);
    let query = if failing {
        query.bind(WebhookKind::EventFailed.as_str())
    } else {
        query
    };
    query.execute(conn).await?;
    Ok(())
}

/// Ends the events of `$1` in the states `$2` with the reasons `$3`, and
/// counts them. An ended event leaves the marks to dispatch again
/// (`redispatch = false` changes nothing on an event that had none: the
/// update of an unmarked event that applied changes no indexed column,
/// and is HOT).
///
/// Each event is reached by its key from its row of `t` (a probe of the
/// primary key per event): with `e.id = ANY($1)` as well, the plan made
/// once (guessing ten rows a side) read the events by the array and
/// compared each with every row of `t` (for 64 events, 4,032 rows removed
/// by the join's filter, 3.9 ms against 1.1).
const FINISH: &str = concat!(
    "WITH ended AS (
         UPDATE user_sync.events e SET state = t.state, reason = ",
    reason_of!("t"),
    ", finished_at = now(), redispatch = false
         FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, state, reason)
         WHERE e.id = t.id AND e.state IS NOT DISTINCT FROM 'pending'
         RETURNING e.state),
     ",
    count_ends!("ended"),
    "
     SELECT count(*) FROM ended"
);

/// [`FINISH`], and a webhook of type `$4` for each event it ends `failed`:
/// ids, its kind and its attempts. The attempt that failed for good counts
/// among an event's attempts. The reason stays
/// out: an API's refusal may quote a name.
const FINISH_WRITING_FAILURES: &str = concat!(
    "WITH ended AS (
         UPDATE user_sync.events e SET state = t.state, reason = ",
    reason_of!("t"),
    ", finished_at = now(),
             redispatch = false, attempts = e.attempts + CASE WHEN t.state = 'failed' THEN 1 ELSE 0 END
         FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, state, reason)
         WHERE e.id = t.id AND e.state IS NOT DISTINCT FROM 'pending'
         RETURNING e.id, e.host_user_id, e.kind, e.attempts, e.state),
     ",
    count_ends!("ended"),
    "
     INSERT INTO user_sync.webhook_deliveries (type, payload)
     SELECT $4, user_sync.webhook_body($4, jsonb_build_object(
                'event_id', id, 'host_user_id', host_user_id, 'kind', kind,
                'attempts', attempts))
     FROM ended
     WHERE state = 'failed'
       AND EXISTS (SELECT 1 FROM user_sync.webhook_subscriptions WHERE type = $4)"
);

/// Ends every pending event of `host` older than `newest`: latest wins.
pub async fn supersede_older(
    conn: &mut PgConnection,
    host: &HostUserId,
    newest: i64,
) -> sqlx::Result<u64> {
    let ended: i64 = sqlx::query_scalar(concat!(
        "WITH ended AS (
             UPDATE user_sync.events
             SET state = 'superseded', finished_at = now(), redispatch = false
             WHERE id = ANY(ARRAY(
                     SELECT o.id FROM (SELECT id, state FROM user_sync.events
                                       WHERE host_user_id = $1 OFFSET 0) o
                     WHERE o.state = 'pending' AND o.id < $2))
               AND state IS NOT DISTINCT FROM 'pending'
             RETURNING state),
         ",
        count_ends!("ended"),
        "
         SELECT count(*) FROM ended"
    ))
    // The user's events through the index of its key, then by key: the
    // plan is the same at any size (see "Plans that do not depend on
    // statistics" above).
    .bind(host.as_str())
    .bind(newest)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(ended).unwrap_or(0))
}

/// Puts an event back to be dispatched after `delay`. `failed` counts it as
/// a failed attempt (rate limits and auth pauses do not).
pub async fn snooze(
    conn: &mut PgConnection,
    id: i64,
    delay: Duration,
    failed: bool,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync.events
         SET redispatch = true, dispatched_at = NULL,
             available_at = now() + make_interval(secs => $2),
             attempts = attempts + $3,
             reason = COALESCE($4, reason)
         WHERE id = $1 AND state IS NOT DISTINCT FROM 'pending'",
    )
    .bind(id)
    .bind(delay.as_secs_f64())
    .bind(i32::from(failed))
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks an event invalid outright (no host user to serialise on).
pub async fn mark_invalid(pool: &PgPool, id: i64, reason: &str) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    finish(&mut conn, id, EventState::Invalid, Some(reason)).await
}

/// Writes one `signup` event per user to create, as the host app would
/// (the backfill's `--mode single` runs their jobs itself). A worker that
/// runs meanwhile dispatches them too, as it does every event: whichever
/// job takes the user first carries the event out, the other finds it
/// done; and one the backfill leaves pending (stopped mid-way) is the
/// sweeper's like any other. Returns (event id, host user).
pub async fn record_signups(
    conn: &mut PgConnection,
    creates: &[(&HostUserId, &Profile, Option<Intent>)],
) -> sqlx::Result<Vec<(i64, HostUserId)>> {
    if creates.is_empty() {
        return Ok(Vec::new());
    }
    let hosts: Vec<&str> = creates.iter().map(|c| c.0.as_str()).collect();
    let emails: Vec<&str> = creates.iter().map(|c| c.1.username.as_str()).collect();
    let names: Vec<Option<&str>> = creates
        .iter()
        .map(|c| c.1.full_name.as_ref().map(FullName::as_str))
        .collect();
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         SELECT h, 'signup', e, n FROM unnest($1::text[], $2::text[], $3::text[])
             AS t(h, e, n)
         RETURNING id, host_user_id",
    )
    .bind(&hosts)
    .bind(&emails)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, host)| Some((id, HostUserId::parse(&host).ok()?)))
        .collect())
}

/// The state of some events, and when a pending one comes due.
pub async fn states(
    conn: &mut PgConnection,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT id, state, available_at FROM user_sync.events WHERE id = ANY($1::bigint[])",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// The host user id of pending event `id` as the host wrote it; `None`
/// when no such event is pending.
pub async fn host_of_pending(
    pool: &PgPool,
    id: i64,
) -> sqlx::Result<Option<Result<HostUserId, String>>> {
    let host: Option<Option<Written>> = sqlx::query_scalar(
        "SELECT substr(host_user_id, 1, 256) FROM user_sync.events
         WHERE id = $1 AND state IS NOT DISTINCT FROM 'pending'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(host.map(host_of_written))
}

//! Retention on PostgreSQL (see `storage::retention`). A batch reads the
//! next rows of its table in an index's order, then deletes those that may
//! go, `FOR UPDATE SKIP LOCKED`: it never waits for a row a job, an
//! operator or another deleter holds, and it takes no lock the host's
//! inserts wait for (an `INSERT` touches no existing row of the outbox).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::storage::PgStore;
use crate::storage::retention::{Cursor, EVENT_STAYS, Pass, PassEnd, Retention, Sweep, Swept};

/// A pass starts from the oldest event again when the last such pass is
/// older than this: rows kept then (a user's newest event, one an open
/// conflict named) may go since, and are below the floor.
const FULL_PASS_EVERY: &str = "1 day";

impl Retention for PgStore {
    fn claim_pass<'a>(
        &'a self,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Option<Pass>>> {
        Box::pin(async move {
            let claimed: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE user_sync.retention
                     SET leased_by = $1, leased_until = now() + make_interval(secs => $2),
                         events_reached_id = NULL
                     WHERE id AND next_pass_at <= now()
                       AND (leased_until IS NULL OR leased_until < now())
                     RETURNING now(),
                               CASE WHEN full_pass_at >= now() - interval '{FULL_PASS_EVERY}'
                                    THEN events_floor END"
                )))
                .bind(holder)
                .bind(lease.as_secs_f64())
                .fetch_optional(self.pool())
                .await?;
            Ok(claimed.map(|(now, floor)| Pass { now, floor }))
        })
    }

    fn sweep<'a>(
        &'a self,
        holder: &'a str,
        lease: Duration,
        sweep: Sweep,
        after: Cursor,
        limit: u32,
    ) -> BoxFuture<'a, sqlx::Result<Swept>> {
        Box::pin(async move {
            let mut tx = self.pool().begin_with(super::session::OUTCOME).await?;
            let swept = sweep_in(&mut tx, holder, lease, sweep, after, limit).await?;
            tx.commit().await?;
            Ok(swept)
        })
    }

    fn end_pass<'a>(&'a self, holder: &'a str, end: PassEnd) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync.retention
                 SET leased_by = NULL, leased_until = NULL, last_pass_at = now(),
                     next_pass_at = now() + make_interval(secs => $2),
                     events_floor = coalesce($3, events_floor),
                     events_floor_id = CASE WHEN $3::timestamptz IS NULL THEN events_floor_id
                                            ELSE coalesce(events_reached_id, events_floor_id) END,
                     events_reached_id = NULL,
                     full_pass_at = coalesce($4, full_pass_at)
                 WHERE id AND leased_by = $1",
            )
            .bind(holder)
            .bind(end.next_in.as_secs_f64())
            .bind(end.floor)
            .bind(end.full_from)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }
}

/// One batch of `sweep` on `conn`, inside the caller's transaction, which
/// holds the deleted rows' locks until it ends (see [`Retention::sweep`]).
pub async fn sweep_in(
    conn: &mut PgConnection,
    holder: &str,
    lease: Duration,
    sweep: Sweep,
    after: Cursor,
    limit: u32,
) -> sqlx::Result<Swept> {
    let limit = i64::from(limit);
    // The rows looked at, in the table's order, with their place in it.
    let batch: Vec<(i64, Option<DateTime<Utc>>)> = match sweep {
        Sweep::Events { before, .. } => {
            // By id, from the cursor on (the first batch of a pass from the
            // floor starts at the floor's id): no index of the outbox names
            // `state` or `finished_at` (an event's end is a HOT update).
            // Those that occurred before `before` are looked at; the first
            // batch that reaches a younger one is the sweep's last, since
            // an event finishes after it occurred. The cursor keeps its
            // `at`, which says whether the pass started from the floor.
            sqlx::query_as(
                "WITH b AS (
                     SELECT id, occurred_at FROM user_sync.events
                     WHERE id > CASE WHEN $2 <> 0 THEN $2
                                     WHEN $3 THEN (SELECT COALESCE(events_floor_id, $5)
                                                   FROM user_sync.retention)
                                     ELSE $5 END
                     ORDER BY id LIMIT $4)
                 SELECT id, NULL::timestamptz FROM b
                 WHERE id < COALESCE((SELECT min(id) FROM b WHERE occurred_at >= $1),
                                     9223372036854775807)
                 ORDER BY id",
            )
            .bind(before)
            .bind(after.id)
            .bind(after.id == 0 && after.at != DateTime::UNIX_EPOCH)
            .bind(limit)
            .bind(i64::MIN)
            .fetch_all(&mut *conn)
            .await?
        }
        Sweep::Erasures { before } => {
            // In the order of the index of their time
            // (`erasures_by_completion`), from the cursor on.
            sqlx::query_as(
                "SELECT id, completed_at FROM user_sync.erasures
                 WHERE completed_at < $1 AND completed_at >= $2
                   AND (completed_at > $2 OR id > $3)
                 ORDER BY completed_at, id LIMIT $4",
            )
            .bind(before)
            .bind(after.at)
            .bind(after.id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        Sweep::Conflicts { .. } | Sweep::Deliveries { .. } => {
            let table = match sweep {
                Sweep::Conflicts { .. } => "conflicts",
                _ => "webhook_deliveries",
            };
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, NULL::timestamptz FROM user_sync.{table}
                 WHERE id > $1 ORDER BY id LIMIT $2"
            )))
            .bind(after.id)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
    let next = batch.last().map_or(after, |(id, at)| Cursor {
        at: at.unwrap_or(after.at),
        id: *id,
    });
    // Where the events' sweep got to: the next pass from the floor starts
    // at the lowest place any state's sweep of this pass ended.
    let reached = match sweep {
        Sweep::Events { .. }
            if batch.len() < usize::try_from(limit).unwrap_or(usize::MAX) && next.id != 0 =>
        {
            Some(next.id)
        }
        _ => None,
    };
    let removed = if ids.is_empty() {
        0
    } else {
        delete_among(conn, sweep, &ids).await?
    };
    let lease_held: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE user_sync.retention
         SET {counter} = {counter} + $1,
             last_removed_at = CASE WHEN $1 > 0 THEN now() ELSE last_removed_at END,
             events_reached_id = CASE WHEN $4::bigint IS NULL THEN events_reached_id
                                      ELSE LEAST(events_reached_id, $4) END,
             leased_until = CASE WHEN leased_by = $2
                                 THEN now() + make_interval(secs => $3) ELSE leased_until END
         WHERE id
         RETURNING leased_by IS NOT DISTINCT FROM $2",
        counter = sweep.counter()
    )))
    .bind(i64::try_from(removed).unwrap_or(i64::MAX))
    .bind(holder)
    .bind(lease.as_secs_f64())
    .bind(reached)
    .fetch_optional(&mut *conn)
    .await?
    .unwrap_or(false);
    Ok(Swept {
        looked: batch.len(),
        removed,
        next,
        lease_held,
    })
}

/// Deletes, of the rows `ids`, those `sweep` says may go, skipping any
/// another transaction holds; returns how many.
async fn delete_among(conn: &mut PgConnection, sweep: Sweep, ids: &[i64]) -> sqlx::Result<u64> {
    let (table, condition) = match sweep {
        Sweep::Events { .. } => (
            "events",
            format!("e.state = $2 AND e.finished_at < $3 AND {EVENT_STAYS} IS FALSE"),
        ),
        Sweep::Conflicts { .. } => (
            "conflicts",
            "e.status = 'resolved' AND e.resolution IS DISTINCT FROM 'ignored'
             AND e.resolved_at < $2"
                .to_owned(),
        ),
        Sweep::Erasures { .. } => ("erasures", "e.completed_at < $2".to_owned()),
        Sweep::Deliveries { .. } => (
            "webhook_deliveries",
            "(e.delivered_at < $2 OR e.abandoned_at < $3)".to_owned(),
        ),
    };
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH doomed AS (
             SELECT e.id FROM user_sync.{table} e
             WHERE e.id = ANY($1) AND {condition}
             FOR UPDATE OF e SKIP LOCKED)
         DELETE FROM user_sync.{table} t USING doomed d WHERE t.id = d.id"
    )))
    // Planned for its rows each time (see `events`: "Plans that do not
    // depend on statistics").
    .persistent(false)
    .bind(ids);
    let query = match sweep {
        Sweep::Events { state, before } => query.bind(state.as_str()).bind(before),
        Sweep::Conflicts { before } | Sweep::Erasures { before } => query.bind(before),
        Sweep::Deliveries {
            delivered,
            abandoned,
        } => query.bind(delivered).bind(abandoned),
    };
    Ok(query.execute(conn).await?.rows_affected())
}

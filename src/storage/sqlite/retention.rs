//! Retention in a SQLite file (see `storage::retention`). The file has one
//! writer at a time, so a batch's delete is a short write transaction of
//! its own (the host's insert waits for it, as for any other writer, a few
//! milliseconds), and the read that picks the batch runs before it, beside
//! the writers.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use sqlx::SqlitePool;

use super::{BEGIN_WRITE, json_list, now_text, text_at};
use crate::storage::SqliteStore;
use crate::storage::retention::{Cursor, EVENT_STAYS, Pass, PassEnd, Retention, Sweep, Swept};

/// See the PostgreSQL side.
const FULL_PASS_EVERY: TimeDelta = TimeDelta::days(1);

fn later(by: Duration) -> String {
    text_at(Utc::now() + TimeDelta::from_std(by).unwrap_or(TimeDelta::MAX))
}

impl Retention for SqliteStore {
    fn claim_pass<'a>(
        &'a self,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Option<Pass>>> {
        Box::pin(async move {
            // Times in a SQLite file are the worker's clock.
            let now = Utc::now();
            let floor: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
                "UPDATE user_sync_retention SET leased_by = ?1, leased_until = ?2
                 WHERE id = 1 AND next_pass_at <= ?3
                   AND (leased_until IS NULL OR leased_until < ?3)
                 RETURNING CASE WHEN full_pass_at >= ?4 THEN events_floor END",
            )
            .bind(holder)
            .bind(later(lease))
            .bind(text_at(now))
            .bind(text_at(now - FULL_PASS_EVERY))
            .fetch_optional(self.pool())
            .await?;
            Ok(floor.map(|floor| Pass { now, floor }))
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
            let batch = next_rows(self.pool(), sweep, after, limit).await?;
            let next = batch.last().map_or(after, |(id, at)| Cursor {
                at: at.unwrap_or(after.at),
                id: *id,
            });
            let mut tx = self.pool().begin_with(BEGIN_WRITE).await?;
            let removed = if batch.is_empty() {
                0
            } else {
                let ids = json_list(batch.iter().map(|(id, _)| *id));
                delete_among(&mut tx, sweep, &ids).await?
            };
            let lease_held: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "UPDATE user_sync_retention
                 SET {counter} = {counter} + ?1,
                     last_removed_at = CASE WHEN ?1 > 0 THEN ?4 ELSE last_removed_at END,
                     leased_until = CASE WHEN leased_by = ?2 THEN ?3 ELSE leased_until END
                 WHERE id = 1
                 RETURNING leased_by IS ?2",
                counter = sweep.counter()
            )))
            .bind(i64::try_from(removed).unwrap_or(i64::MAX))
            .bind(holder)
            .bind(later(lease))
            .bind(now_text())
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or(false);
            tx.commit().await?;
            Ok(Swept {
                looked: batch.len(),
                removed,
                next,
                lease_held,
            })
        })
    }

    fn end_pass<'a>(&'a self, holder: &'a str, end: PassEnd) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync_retention
                 SET leased_by = NULL, leased_until = NULL, last_pass_at = ?2,
                     next_pass_at = ?3, events_floor = coalesce(?4, events_floor),
                     full_pass_at = coalesce(?5, full_pass_at)
                 WHERE id = 1 AND leased_by = ?1",
            )
            .bind(holder)
            .bind(now_text())
            .bind(later(end.next_in))
            .bind(end.floor.map(text_at))
            .bind(end.full_from.map(text_at))
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }
}

/// The next rows of `sweep`'s table after `after`, in its order, with
/// their place in it.
async fn next_rows(
    pool: &SqlitePool,
    sweep: Sweep,
    after: Cursor,
    limit: u32,
) -> sqlx::Result<Vec<(i64, Option<DateTime<Utc>>)>> {
    match sweep {
        Sweep::Events { before, .. } | Sweep::Erasures { before } => {
            // In the order of the index of their time, from the cursor on;
            // the literal `state <> 'pending'` lets SQLite use the partial
            // index of finished events.
            let (table, at, state) = match sweep {
                Sweep::Events { state, .. } => ("events", "finished_at", Some(state)),
                _ => ("erasures", "completed_at", None),
            };
            let query = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, {at} FROM user_sync_{table}
                 WHERE {at} < ?1 AND {at} >= ?2 AND ({at} > ?2 OR id > ?3) {}
                 ORDER BY {at}, id LIMIT ?4",
                if state.is_some() {
                    "AND state <> 'pending' AND state = ?5"
                } else {
                    ""
                }
            )))
            .bind(text_at(before))
            .bind(text_at(after.at))
            .bind(after.id)
            .bind(limit);
            match state {
                Some(state) => query.bind(state.as_str()),
                None => query,
            }
            .fetch_all(pool)
            .await
        }
        Sweep::Conflicts { .. } | Sweep::Deliveries { .. } => {
            let table = match sweep {
                Sweep::Conflicts { .. } => "conflicts",
                _ => "webhook_deliveries",
            };
            let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM user_sync_{table} WHERE id > ?1 ORDER BY id LIMIT ?2"
            )))
            .bind(after.id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            Ok(ids.into_iter().map(|id| (id, None)).collect())
        }
    }
}

/// Deletes, of the rows `ids` (a JSON list), those `sweep` says may go;
/// returns how many.
async fn delete_among(
    conn: &mut sqlx::SqliteConnection,
    sweep: Sweep,
    ids: &str,
) -> sqlx::Result<u64> {
    let (table, condition) = match sweep {
        Sweep::Events { .. } => (
            "events",
            format!(
                "e.state = ?2 AND e.finished_at < ?3 AND {} IS FALSE",
                EVENT_STAYS.replace("user_sync.", "user_sync_")
            ),
        ),
        Sweep::Conflicts { .. } => (
            "conflicts",
            "e.status = 'resolved' AND e.resolution IS NOT 'ignored' AND e.resolved_at < ?2"
                .to_owned(),
        ),
        Sweep::Erasures { .. } => ("erasures", "e.completed_at < ?2".to_owned()),
        Sweep::Deliveries { .. } => (
            "webhook_deliveries",
            "(e.delivered_at < ?2 OR e.abandoned_at < ?3)".to_owned(),
        ),
    };
    let query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM user_sync_{table}
         WHERE id IN (SELECT e.id FROM user_sync_{table} e
                      WHERE e.id IN (SELECT value FROM json_each(?1)) AND {condition})"
    )))
    .bind(ids);
    let query = match sweep {
        Sweep::Events { state, before } => query.bind(state.as_str()).bind(text_at(before)),
        Sweep::Conflicts { before } | Sweep::Erasures { before } => query.bind(text_at(before)),
        Sweep::Deliveries {
            delivered,
            abandoned,
        } => query.bind(text_at(delivered)).bind(text_at(abandoned)),
    };
    Ok(query.execute(conn).await?.rows_affected())
}

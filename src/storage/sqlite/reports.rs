//! What operators read, in a SQLite file: `status`, `conflicts`,
//! `/metrics`.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::Row;

use crate::domain::{
    ConflictRow, ConflictStatus, ErasureRow, EventFilter, EventRow, FinishedInMinute, Pause,
    RetryTarget, Status, UserRecord,
};
use crate::storage::retention::RETAINED;
use crate::storage::{Operate, Reports, SqliteStore, ping};

use super::parse_at;

impl Reports for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(ping(self.pool()))
    }

    /// The counts behind `user-sync status`, each through a partial index
    /// of live rows (see the PostgreSQL side): the pending events through
    /// `user_sync_events_pending_by_user`, the failed, invalid and conflict
    /// ones through `user_sync_events_finished` (whose condition each
    /// query repeats, so that SQLite may use it).
    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT (SELECT count(*) FROM user_sync_events WHERE state = 'pending') AS pending,
                        (SELECT count(*) FROM user_sync_events
                          WHERE state <> 'pending' AND state = 'failed') AS failed,
                        (SELECT count(*) FROM user_sync_events
                          WHERE state <> 'pending' AND state = 'invalid') AS invalid,
                        (SELECT count(*) FROM user_sync_events
                          WHERE state <> 'pending' AND state = 'conflict') AS conflict,
                        (SELECT min(occurred_at) FROM user_sync_events
                          WHERE state = 'pending') AS oldest,
                        (SELECT count(*) FROM user_sync_users WHERE state = 'synced') AS synced,
                        (SELECT count(*) FROM user_sync_conflicts WHERE status = 'open') AS open,
                        (SELECT count(*) FROM user_sync_erasures) AS erasures",
            )
            .fetch_one(self.pool())
            .await?;
            let oldest: Option<String> = row.try_get("oldest")?;
            let lag = oldest
                .as_deref()
                .and_then(parse_at)
                .map(|at| (Utc::now() - at).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(0.0);
            let (pending_erasures, oldest_pending_erasure_seconds) =
                super::super::erasures::pending_summary(self).await?;
            Ok(Status {
                pending_events: row.try_get("pending")?,
                failed_events: row.try_get("failed")?,
                invalid_events: row.try_get("invalid")?,
                conflict_events: row.try_get("conflict")?,
                synced_users: row.try_get("synced")?,
                open_conflicts: row.try_get("open")?,
                completed_erasures: row.try_get("erasures")?,
                outbox_lag_seconds: lag.max(0.0),
                pending_erasures,
                oldest_pending_erasure_seconds,
                paused: self.pause_state().await?,
                retention: sqlx::query_as(sqlx::AssertSqlSafe(
                    RETAINED.replace("user_sync.", "user_sync_"),
                ))
                .fetch_optional(self.pool())
                .await?
                .unwrap_or_default(),
            })
        })
    }

    fn conflicts(&self, status: ConflictStatus) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_conflicts
                 WHERE status IN (SELECT value FROM json_each(?1)) ORDER BY id",
                ConflictRow::COLUMNS
            )))
            .bind(serde_json::json!(status.statuses()).to_string())
            .fetch_all(self.pool())
            .await
        })
    }

    fn conflict(&self, id: i64) -> BoxFuture<'_, sqlx::Result<Option<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_conflicts WHERE id = ?1",
                ConflictRow::COLUMNS
            )))
            .bind(id)
            .fetch_optional(self.pool())
            .await
        })
    }

    fn pause_state(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>> {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT paused_at, paused_by, reason FROM user_sync_pause
                 WHERE paused_at IS NOT NULL",
            )
            .fetch_optional(self.pool())
            .await
        })
    }
}

impl Operate for SqliteStore {
    fn pause<'a>(
        &'a self,
        by: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<Pause>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE user_sync_pause
                 SET paused_at = coalesce(paused_at, ?1), paused_by = ?2,
                     reason = coalesce(?3, reason)
                 RETURNING paused_at, paused_by, reason",
            )
            .bind(super::now_text())
            .bind(by)
            .bind(reason)
            .fetch_one(self.pool())
            .await
        })
    }

    fn resume(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>> {
        Box::pin(async move {
            let mut tx = self.pool().begin_with(super::BEGIN_WRITE).await?;
            let was: Option<Pause> = sqlx::query_as(
                "SELECT paused_at, paused_by, reason FROM user_sync_pause
                 WHERE paused_at IS NOT NULL",
            )
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE user_sync_pause SET paused_at = NULL, paused_by = NULL, reason = NULL",
            )
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(was)
        })
    }

    fn events<'a>(&'a self, filter: &'a EventFilter) -> BoxFuture<'a, sqlx::Result<Vec<EventRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_events
                 WHERE {}
                   AND (?2 IS NULL OR host_user_id = ?2)
                   AND (?3 IS NULL OR occurred_at >= ?3)
                 ORDER BY id DESC LIMIT ?4",
                EventRow::COLUMNS,
                match filter.state.as_deref() {
                    None | Some("pending") => "(?1 IS NULL OR state = ?1)",
                    // The finished states' index (see `status`).
                    Some(_) => "state <> 'pending' AND state = ?1",
                }
            )))
            .bind(filter.state.as_deref())
            .bind(filter.host_user_id.as_deref())
            .bind(filter.since.map(super::text_at))
            .bind(filter.limit)
            .fetch_all(self.pool())
            .await
        })
    }

    fn retry_events<'a>(&'a self, target: &'a RetryTarget) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let (state, hosts) = match target {
                RetryTarget::State(state) => (Some(state.as_str()), None),
                RetryTarget::Hosts(hosts) => (None, Some(serde_json::json!(hosts).to_string())),
            };
            let retried = sqlx::query(
                "UPDATE user_sync_events AS e
                 SET state = 'pending', available_at = ?3, dispatched_at = NULL,
                     attempts = 0, reason = NULL, finished_at = NULL
                 WHERE e.host_user_id IS NOT NULL
                   AND (?1 IS NULL OR e.state = ?1)
                   AND (?2 IS NULL OR e.host_user_id IN (SELECT value FROM json_each(?2)))
                   AND NOT EXISTS (SELECT 1 FROM user_sync_events n
                                   WHERE n.host_user_id = e.host_user_id AND n.id > e.id)",
            )
            .bind(state)
            .bind(hosts)
            .bind(super::now_text())
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(retried)
        })
    }

    fn user_record<'a>(
        &'a self,
        host: &'a str,
        recent: i64,
    ) -> BoxFuture<'a, sqlx::Result<UserRecord>> {
        Box::pin(async move {
            let mapping = sqlx::query_as(
                "SELECT state, embedded_user_id, username, updated_at FROM user_sync_users
                 WHERE host_user_id = ?1",
            )
            .bind(host)
            .fetch_optional(self.pool())
            .await?;
            let events = self
                .events(&EventFilter {
                    host_user_id: Some(host.to_owned()),
                    limit: recent,
                    ..EventFilter::default()
                })
                .await?;
            let conflicts = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_conflicts WHERE host_user_id = ?1 ORDER BY id",
                ConflictRow::COLUMNS
            )))
            .bind(host)
            .fetch_all(self.pool())
            .await?;
            let erasures = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_erasures WHERE host_user_id = ?1 ORDER BY id",
                ErasureRow::COLUMNS
            )))
            .bind(host)
            .fetch_all(self.pool())
            .await?;
            Ok(UserRecord {
                host_user_id: host.to_owned(),
                mapping,
                events,
                conflicts,
                erasures,
            })
        })
    }

    fn erasures(&self, limit: i64) -> BoxFuture<'_, sqlx::Result<Vec<ErasureRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_erasures ORDER BY id DESC LIMIT ?1",
                ErasureRow::COLUMNS
            )))
            .bind(limit)
            .fetch_all(self.pool())
            .await
        })
    }

    fn finished_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<FinishedInMinute>>> {
        Box::pin(async move {
            // Times are RFC 3339 text of one width (`text_at`): its first
            // 16 characters are the minute, and text order is time order.
            let rows: Vec<(String, String, i64)> = sqlx::query_as(
                "SELECT substr(finished_at, 1, 16), state, count(*)
                 FROM user_sync_events
                 WHERE state <> 'pending'
                   AND state IN ('applied', 'superseded', 'conflict', 'failed', 'invalid')
                   AND finished_at >= ?1
                 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(super::text_at(since))
            .fetch_all(self.pool())
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(minute, state, events)| {
                    Some(FinishedInMinute {
                        minute: parse_at(&format!("{minute}:00Z"))?,
                        state,
                        events,
                    })
                })
                .collect())
        })
    }
}

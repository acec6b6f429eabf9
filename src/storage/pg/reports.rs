//! What operators read, on PostgreSQL: `status`, `conflicts`, `/metrics`.

use futures::future::BoxFuture;

use crate::domain::{ConflictRow, ConflictStatus, Pause, Status};
use crate::storage::{Operate, PgStore, Reports, ping};

impl Reports for PgStore {
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(ping(self.pool()))
    }

    /// The counts behind `user-sync status`.
    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>> {
        Box::pin(async move {
            let row: (i64, i64, i64, i64, f64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state = 'pending'),
                        count(*) FILTER (WHERE state = 'failed'),
                        count(*) FILTER (WHERE state = 'invalid'),
                        count(*) FILTER (WHERE state = 'conflict'),
                        COALESCE(EXTRACT(EPOCH FROM now() - min(occurred_at) FILTER (WHERE state = 'pending')), 0)::float8
                 FROM user_sync.events",
            )
            .fetch_one(self.pool())
            .await?;
            let (synced_users, open_conflicts, completed_erasures): (i64, i64, i64) =
                sqlx::query_as(
                    "SELECT (SELECT count(*) FROM user_sync.users WHERE state = 'synced'),
                        (SELECT count(*) FROM user_sync.conflicts WHERE status = 'open'),
                        (SELECT count(*) FROM user_sync.erasures)",
                )
                .fetch_one(self.pool())
                .await?;
            Ok(Status {
                pending_events: row.0,
                failed_events: row.1,
                invalid_events: row.2,
                conflict_events: row.3,
                synced_users,
                open_conflicts,
                completed_erasures,
                outbox_lag_seconds: row.4.max(0.0),
                paused: self.pause_state().await?,
            })
        })
    }

    fn conflicts(&self, status: ConflictStatus) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.conflicts WHERE status = ANY($1) ORDER BY id",
                ConflictRow::COLUMNS
            )))
            .bind(status.statuses())
            .fetch_all(self.pool())
            .await
        })
    }

    fn conflict(&self, id: i64) -> BoxFuture<'_, sqlx::Result<Option<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.conflicts WHERE id = $1",
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
                "SELECT paused_at, paused_by, reason FROM user_sync.pause
                 WHERE paused_at IS NOT NULL",
            )
            .fetch_optional(self.pool())
            .await
        })
    }
}

impl Operate for PgStore {
    fn pause<'a>(
        &'a self,
        by: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<Pause>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE user_sync.pause
                 SET paused_at = coalesce(paused_at, now()), paused_by = $1,
                     reason = coalesce($2, reason)
                 RETURNING paused_at, paused_by, reason",
            )
            .bind(by)
            .bind(reason)
            .fetch_one(self.pool())
            .await
        })
    }

    fn resume(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE user_sync.pause p SET paused_at = NULL, paused_by = NULL, reason = NULL
                 FROM (SELECT paused_at, paused_by, reason FROM user_sync.pause) AS was
                 WHERE was.paused_at IS NOT NULL
                 RETURNING was.paused_at, was.paused_by, was.reason",
            )
            .fetch_optional(self.pool())
            .await
        })
    }
}

//! What operators read, on PostgreSQL: `status`, `conflicts`, `/metrics`.

use futures::future::BoxFuture;

use crate::domain::{ConflictRow, Status};
use crate::storage::{PgStore, Reports, ping};

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
            })
        })
    }

    /// The open conflicts, oldest first.
    fn open_conflicts(&self) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT id, host_user_id, username, reason, holder_host_user_id,
                        holder_embedded_user_id, event_id, detected_at
                 FROM user_sync.conflicts WHERE status = 'open' ORDER BY id",
            )
            .fetch_all(self.pool())
            .await
        })
    }
}

//! `user_sync_conflicts` in a SQLite file.

use sqlx::SqlitePool;

use crate::domain::{ConflictReason, EmbeddedUserId};
use crate::storage::conflicts::NewConflict;

use super::now_text;

/// Reports a conflict once; returns whether a row was added.
pub(crate) async fn report_conflict(pool: &SqlitePool, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    // As on PostgreSQL: an open unconfirmed_create met again by its user
    // stands; an open one with another reason no longer does.
    if c.reason == ConflictReason::TakenInEmbedded {
        let kept: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM user_sync_conflicts
             WHERE host_user_id = ?1 AND username = ?2 AND status = 'open'
               AND reason = 'unconfirmed_create' AND holder_embedded_user_id IS ?3",
        )
        .bind(c.host.as_str())
        .bind(c.username.as_str())
        .bind(c.holder_embedded_user_id.map(EmbeddedUserId::as_str))
        .fetch_optional(pool)
        .await?;
        if kept.is_some() {
            return Ok(false);
        }
    }
    sqlx::query(
        "UPDATE user_sync_conflicts SET status = 'resolved', resolved_at = ?4
         WHERE host_user_id = ?1 AND username = ?2 AND status = 'open' AND reason <> ?3",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(now_text())
    .execute(pool)
    .await?;
    let insert = sqlx::query(
        "INSERT INTO user_sync_conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id,
              event_id, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO NOTHING",
    );
    let result = c.bind_to(insert).bind(now_text()).execute(pool).await?;
    Ok(result.rows_affected() == 1)
}

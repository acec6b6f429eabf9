//! `user_sync.conflicts`: a username the worker could not have for a host
//! user, reported once and kept open until it is resolved.

use sqlx::PgConnection;

use crate::domain::{ConflictReason, EmbeddedUserId, HostUserId, Username};

/// A conflict to report.
pub struct NewConflict<'a> {
    pub host: &'a HostUserId,
    pub username: &'a Username,
    pub reason: ConflictReason,
    pub holder_host_user_id: Option<&'a HostUserId>,
    pub holder_embedded_user_id: Option<&'a EmbeddedUserId>,
    /// The event that met the conflict; `None` when the backfill found it.
    pub event_id: Option<i64>,
}

/// Reports a conflict once: an open one for the same host user, username
/// and reason is left as it is. Returns whether a row was added.
pub async fn report_conflict(conn: &mut PgConnection, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO user_sync.conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id, event_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_user_id, username, reason) WHERE status = 'open' DO NOTHING",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(c.holder_host_user_id.map(HostUserId::as_str))
    .bind(c.holder_embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(c.event_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

//! `user_sync.conflicts` on PostgreSQL.

use sqlx::PgConnection;

use crate::storage::conflicts::NewConflict;

/// Reports a conflict once: an open one for the same host user, username
/// and reason is left as it is. One with another reason is resolved: the
/// newest event met this one, so that one is no longer what stands in the
/// way (a holder who let go, a create whose refusal was lost). Returns
/// whether a row was added.
pub async fn report_conflict(conn: &mut PgConnection, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let insert = sqlx::query(
        "WITH superseded AS (
             UPDATE user_sync.conflicts SET status = 'resolved', resolved_at = now()
             WHERE host_user_id = $1 AND username = $2 AND status = 'open' AND reason <> $3)
         INSERT INTO user_sync.conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id, event_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_user_id, username, reason) WHERE status = 'open' DO NOTHING",
    );
    let result = c.bind_to(insert).execute(conn).await?;
    Ok(result.rows_affected() == 1)
}

//! `user_sync.conflicts` on PostgreSQL.

use sqlx::PgConnection;

use crate::storage::conflicts::NewConflict;

/// Reports a conflict once: an open one for the same host user, username
/// and reason is left as it is. One with another reason is resolved: the
/// newest event met this one, so that one is no longer what stands in the
/// way (a holder who let go, a create whose refusal was lost), except an
/// open `unconfirmed_create` met again as `taken_in_embedded` by the same
/// Embedded user: that one stands (the user may be the worker's own, for
/// an operator to decide), and nothing is added. Returns whether a row was
/// added.
pub async fn report_conflict(conn: &mut PgConnection, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let insert = sqlx::query(
        "WITH kept AS (
             SELECT 1 FROM user_sync.conflicts
             WHERE host_user_id = $1 AND username = $2 AND status = 'open'
               AND reason = 'unconfirmed_create' AND $3 = 'taken_in_embedded'
               AND holder_embedded_user_id IS NOT DISTINCT FROM $5),
         superseded AS (
             UPDATE user_sync.conflicts SET status = 'resolved', resolved_at = now()
             WHERE host_user_id = $1 AND username = $2 AND status = 'open' AND reason <> $3
               AND NOT EXISTS (SELECT 1 FROM kept))
         INSERT INTO user_sync.conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id, event_id)
         SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM kept)
         ON CONFLICT (host_user_id, username, reason) WHERE status = 'open' DO NOTHING",
    );
    let result = c.bind_to(insert).execute(conn).await?;
    Ok(result.rows_affected() == 1)
}

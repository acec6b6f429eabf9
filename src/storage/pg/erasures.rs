//! `user_sync.erasures` on PostgreSQL: the proof of deletion. A closure
//! completes here, in one transaction with the scrubbing of the user's personal
//! data.

use sqlx::PgConnection;

use crate::domain::{EmbeddedUserId, ErasureOutcome, HostUserId, WebhookKind};
use crate::storage::webhooks::erasure_completed;

/// Completes a closure: in one transaction, removes every email and name of
/// `host` from the worker's tables (its user row, its outbox rows up to the
/// closure, its conflicts), records the erasure with ids and times only
/// (and, when the deployment sends them, an `erasure.completed` webhook),
/// and ends the closure event.
pub async fn erase(
    conn: &mut PgConnection,
    host: &HostUserId,
    embedded_user_id: Option<&EmbeddedUserId>,
    closure_event_id: i64,
    outcome: ErasureOutcome,
) -> sqlx::Result<()> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state, last_event_id)
         VALUES ($1, 'erased', $2)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, username = NULL, full_name = NULL, state = 'erased',
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(host.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE user_sync.events SET email = NULL, full_name = NULL
         WHERE host_user_id = $1 AND id <= $2 AND (email IS NOT NULL OR full_name IS NOT NULL)",
    )
    .bind(host.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    // Its open conflicts end with it (the host hears of each), then go:
    // they name its username.
    sqlx::query(concat!(
        "WITH synced AS (SELECT unnest($1::text[]) AS host_user_id),",
        super::conflicts::resolve_synced!()
    ))
    .bind([host.as_str()])
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_sync.conflicts WHERE host_user_id = $1")
        .bind(host.as_str())
        .execute(&mut *tx)
        .await?;
    let recorded: Option<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync.erasures
             (host_user_id, embedded_user_id, event_id, outcome, requested_at)
         SELECT $1, $2, id, $3, occurred_at FROM user_sync.events WHERE id = $4
         ON CONFLICT (event_id) DO NOTHING
         RETURNING id",
    )
    .bind(host.as_str())
    .bind(embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(outcome.as_str())
    .bind(closure_event_id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(erasure_id) = recorded {
        let data = erasure_completed(
            host.as_str(),
            embedded_user_id,
            closure_event_id,
            outcome,
            erasure_id,
        );
        super::webhooks::enqueue(&mut tx, WebhookKind::ErasureCompleted, &data).await?;
    }
    super::events::finish(
        &mut tx,
        closure_event_id,
        crate::domain::EventState::Applied,
        None,
    )
    .await?;
    tx.commit().await
}

// ---------------------------------------------------------------------------
// The backfill's set-based variants. One page of host users at a time: the
// same rows and states as the per-user functions above, in a few statements
// instead of a few per user.
// ---------------------------------------------------------------------------

//! `user_sync_erasures` in a SQLite file: the proof of deletion, written in
//! one transaction with the scrubbing of the user's personal data.

use sqlx::SqlitePool;

use crate::domain::{EmbeddedUserId, ErasureOutcome, HostUserId, WebhookKind};
use crate::storage::webhooks::erasure_completed as completed;

use super::now_text;

/// Completes a closure in one transaction: scrubs the user's email and
/// name from every table, records the erasure (and, when the deployment
/// sends them, an `erasure.completed` webhook), ends the event.
pub(super) async fn erase(
    pool: &SqlitePool,
    host: &HostUserId,
    embedded_user_id: Option<&EmbeddedUserId>,
    closure_event_id: i64,
    outcome: ErasureOutcome,
) -> sqlx::Result<()> {
    let now = now_text();
    let host = host.as_str();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO user_sync_users (host_user_id, state, last_event_id, updated_at)
         VALUES (?1, 'erased', ?2, ?3)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, username = NULL, full_name = NULL, state = 'erased',
             last_event_id = excluded.last_event_id, updated_at = excluded.updated_at",
    )
    .bind(host)
    .bind(closure_event_id)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE user_sync_events SET email = NULL, full_name = NULL
         WHERE host_user_id = ?1 AND id <= ?2
           AND (email IS NOT NULL OR full_name IS NOT NULL)",
    )
    .bind(host)
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    // Its open conflicts end with it (the host hears of each), then go:
    // they name its username.
    super::conflicts::resolve_synced(&mut tx, &[host], &now).await?;
    sqlx::query("DELETE FROM user_sync_conflicts WHERE host_user_id = ?1")
        .bind(host)
        .execute(&mut *tx)
        .await?;
    let recorded: Option<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync_erasures
             (host_user_id, embedded_user_id, event_id, outcome, requested_at, completed_at)
         SELECT ?1, ?2, id, ?3, occurred_at, ?5 FROM user_sync_events WHERE id = ?4
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(host)
    .bind(embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(outcome.as_str())
    .bind(closure_event_id)
    .bind(&now)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(erasure_id) = recorded {
        let data = completed(
            host,
            embedded_user_id,
            closure_event_id,
            outcome,
            erasure_id,
        );
        super::webhooks::enqueue(&mut tx, WebhookKind::ErasureCompleted, &data).await?;
    }
    super::events::mark_applied(&mut tx, closure_event_id, &now).await?;
    tx.commit().await
}

//! The outbox, `user_sync_events`, in a SQLite file: how an event ends or
//! waits, and what the dispatcher claims.

use std::time::Duration;

use chrono::Utc;
use sqlx::SqlitePool;

use crate::domain::{EventState, HostUserId, WebhookKind};

use crate::storage::Claimed;
use crate::storage::events::{claimed_from, host_of_written};
use crate::storage::written::Written;

use super::{now_text, parse_at, text_at};

/// Ends one event. One that ends `failed` writes an `event.failed` webhook
/// in the same transaction, when the deployment sends them.
pub(super) async fn finish(
    pool: &SqlitePool,
    id: i64,
    state: EventState,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    const FINISH: &str = "UPDATE user_sync_events SET state = ?2, reason = ?3, finished_at = ?4
         WHERE id = ?1 AND state = 'pending'";
    if state != EventState::Failed {
        sqlx::query(FINISH)
            .bind(id)
            .bind(state.as_str())
            .bind(reason)
            .bind(now_text())
            .execute(pool)
            .await?;
        return Ok(());
    }
    // The attempt that failed for good counts among the event's attempts.
    let mut tx = pool.begin().await?;
    let ended: Option<(Option<String>, Option<String>, i64)> = sqlx::query_as(
        "UPDATE user_sync_events SET state = ?2, reason = ?3, finished_at = ?4,
             attempts = attempts + 1
         WHERE id = ?1 AND state = 'pending'
         RETURNING host_user_id, kind, attempts",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(reason)
    .bind(now_text())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((host_user_id, kind, attempts)) = ended {
        // Ids, the kind and the attempts; the reason stays out: an API's
        // refusal may quote a name.
        let data = serde_json::json!({
            "event_id": id,
            "host_user_id": host_user_id,
            "kind": kind,
            "attempts": attempts,
        });
        super::webhooks::enqueue(&mut tx, WebhookKind::EventFailed, &data).await?;
    }
    tx.commit().await
}

/// Puts an event back to be dispatched after `delay`.
pub(super) async fn snooze(
    pool: &SqlitePool,
    id: i64,
    delay: Duration,
    failed: bool,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    let due = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    sqlx::query(
        "UPDATE user_sync_events
         SET dispatched_at = NULL, available_at = ?2, attempts = attempts + ?3,
             reason = COALESCE(?4, reason)
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .bind(text_at(due))
    .bind(i32::from(failed))
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends an event `applied`, inside the transaction that did its work.
pub(super) async fn mark_applied(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    now: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync_events SET state = 'applied', reason = NULL, finished_at = ?2
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Claims up to `limit` events due for dispatch, committed at once: a
/// transaction held open across the push would make the queue's writer
/// wait for it. An abandoned claim hands the events back ([`abandon`]); a
/// crash before the push leaves them to the sweeper.
///
/// The host ids are read up to their bound and decoded whatever the host
/// wrote (`storage::written`): a BLOB there must not fail the statement
/// after its update has claimed the whole batch.
pub(super) async fn claim_due(pool: &SqlitePool, limit: u32) -> sqlx::Result<Vec<Claimed>> {
    let now = now_text();
    let rows = sqlx::query_as(
        "UPDATE user_sync_events SET dispatched_at = ?1
         WHERE id IN (SELECT id FROM user_sync_events
                      WHERE state = 'pending' AND dispatched_at IS NULL
                        AND available_at <= ?1
                      ORDER BY id LIMIT ?2)
         RETURNING id, substr(host_user_id, 1, 256) AS host_user_id",
    )
    .bind(&now)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    Ok(claimed_from(rows))
}

/// Hands claimed events back, to be dispatched at once.
pub(super) async fn abandon(pool: &SqlitePool, claimed: &[Claimed]) -> sqlx::Result<()> {
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    sqlx::query(
        "UPDATE user_sync_events SET dispatched_at = NULL
         WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'",
    )
    .bind(serde_json::Value::from(ids).to_string())
    .execute(pool)
    .await?;
    Ok(())
}

/// How long until the next snoozed event is due, if any is waiting.
pub(super) async fn next_due_in(pool: &SqlitePool) -> sqlx::Result<Option<Duration>> {
    let next: Option<String> = sqlx::query_scalar(
        "SELECT min(available_at) FROM user_sync_events
         WHERE state = 'pending' AND dispatched_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(next
        .as_deref()
        .and_then(parse_at)
        .map(|at| (at - Utc::now()).to_std().unwrap_or_default()))
}

/// Events dispatched more than `after` ago and still pending go back to be
/// dispatched: their job was lost. Returns how many.
pub(super) async fn sweep_stale(pool: &SqlitePool, after: Duration) -> sqlx::Result<u64> {
    let cutoff = Utc::now() - chrono::Duration::from_std(after).unwrap_or_default();
    let result = sqlx::query(
        "UPDATE user_sync_events SET dispatched_at = NULL
         WHERE state = 'pending' AND dispatched_at IS NOT NULL AND dispatched_at < ?1",
    )
    .bind(text_at(cutoff))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// The host user id of pending event `id` as the host wrote it; `None`
/// when no such event is pending.
pub(super) async fn host_of_pending(
    pool: &SqlitePool,
    id: i64,
) -> sqlx::Result<Option<Result<HostUserId, String>>> {
    let host: Option<Option<Written>> = sqlx::query_scalar(
        "SELECT substr(host_user_id, 1, 256) FROM user_sync_events
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(host.map(host_of_written))
}

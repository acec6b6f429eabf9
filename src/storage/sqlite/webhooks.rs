//! `user_sync_webhook_deliveries` in a SQLite file: each webhook as sent,
//! written in the transaction of the change it reports, and claimed by the
//! file's one worker process or an operator's command (a lease, as on
//! PostgreSQL: see [`crate::storage::Deliveries`]); and
//! `user_sync_webhook_subscriptions`, the types the deployment sends.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use sqlx::SqliteConnection;

use crate::domain::WebhookKind;
use crate::storage::webhooks::{Deliveries, Delivery, FailedAttempt, WaitingDelivery};

use super::{SqliteStore, now_text, parse_at, text_at};

/// The body of a webhook, `{"type", "timestamp", "data"}`, as an SQL
/// expression of its type and its data (JSON text), for `concat!`.
macro_rules! webhook_body {
    ($kind:literal, $data:literal) => {
        concat!(
            "json_object('type', ",
            $kind,
            ", 'timestamp', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 'data', json(",
            $data,
            "))"
        )
    };
}

/// Writes a webhook of `kind` with `data` (ids, reasons and resolutions
/// only), in the caller's transaction, when the deployment sends that kind
/// (`user_sync_webhook_subscriptions`).
pub(crate) async fn enqueue(
    conn: &mut SqliteConnection,
    kind: WebhookKind,
    data: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(concat!(
        "INSERT INTO user_sync_webhook_deliveries (type, payload) SELECT ?1, ",
        webhook_body!("?1", "?2"),
        " WHERE EXISTS (SELECT 1 FROM user_sync_webhook_subscriptions WHERE type = ?1)"
    ))
    .bind(kind.as_str())
    .bind(data.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// The time `offset` from now, as the file's times are written.
fn from_now(offset: Duration) -> String {
    moved(offset, true)
}

/// The time `offset` before now, as the file's times are written.
fn ago(offset: Duration) -> String {
    moved(offset, false)
}

/// Now moved `offset` ahead or back; the end of time when out of range.
fn moved(offset: Duration, ahead: bool) -> String {
    let offset = TimeDelta::from_std(offset).unwrap_or(TimeDelta::MAX);
    let now = Utc::now();
    let at = if ahead {
        now.checked_add_signed(offset)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    } else {
        now.checked_sub_signed(offset)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    text_at(at)
}

/// A claim of the deliveries `$select` picks: an attempt counted, and the
/// rows leased until `?1`, then returned. The file's one process (or an
/// operator's command) claims at a time: SQLite runs one write at a time.
macro_rules! claim {
    ($select:literal) => {
        concat!(
            "UPDATE user_sync_webhook_deliveries
             SET attempts = attempts + 1, leased_until = ?1, next_attempt_at = ?1
             WHERE id IN (",
            $select,
            ") RETURNING id, webhook_id, type, payload, attempts"
        )
    };
}

impl Deliveries for SqliteStore {
    fn subscribe<'a>(&'a self, kinds: &'a [WebhookKind]) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            let names = serde_json::Value::from(names).to_string();
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "DELETE FROM user_sync_webhook_subscriptions
                 WHERE type NOT IN (SELECT value FROM json_each(?1))",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO user_sync_webhook_subscriptions (type)
                 SELECT value FROM json_each(?1) WHERE true ON CONFLICT (type) DO NOTHING",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    fn claim_due_deliveries(
        &self,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<Delivery>>> {
        Box::pin(
            sqlx::query_as(claim!(
                "SELECT id FROM user_sync_webhook_deliveries
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= ?3
                 ORDER BY next_attempt_at LIMIT ?2"
            ))
            .bind(from_now(lease))
            .bind(i64::from(limit))
            .bind(now_text())
            .fetch_all(&self.pool),
        )
    }

    fn claim_for_redelivery(
        &self,
        after: i64,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<Delivery>>> {
        Box::pin(
            sqlx::query_as(claim!(
                "SELECT id FROM user_sync_webhook_deliveries
                 WHERE delivered_at IS NULL AND id > ?4
                   AND (leased_until IS NULL OR leased_until <= ?3)
                 ORDER BY id LIMIT ?2"
            ))
            .bind(from_now(lease))
            .bind(i64::from(limit))
            .bind(now_text())
            .bind(after)
            .fetch_all(&self.pool),
        )
    }

    fn mark_delivered(&self, id: i64) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync_webhook_deliveries
                 SET delivered_at = ?2, abandoned_at = NULL, leased_until = NULL
                 WHERE id = ?1 AND delivered_at IS NULL",
            )
            .bind(id)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn mark_attempt_failed<'a>(
        &'a self,
        failed: FailedAttempt<'a>,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move {
            // Created at or before `?3`: older than the webhook's age. The
            // next attempt comes no later than its creation plus that age
            // (`?6`).
            let abandoned: Option<bool> = sqlx::query_scalar(
                "UPDATE user_sync_webhook_deliveries
                 SET last_error = ?2, leased_until = NULL,
                     abandoned_at = COALESCE(abandoned_at, CASE WHEN created_at <= ?3 THEN ?4 END),
                     next_attempt_at = min(?5, strftime('%Y-%m-%dT%H:%M:%fZ', created_at, ?6))
                 WHERE id = ?1 AND delivered_at IS NULL
                 RETURNING abandoned_at IS NOT NULL",
            )
            .bind(failed.id)
            .bind(failed.error)
            .bind(ago(failed.max_age))
            .bind(now_text())
            .bind(from_now(failed.retry_in))
            .bind(format!("+{:.3} seconds", failed.max_age.as_secs_f64()))
            .fetch_optional(&self.pool)
            .await?;
            Ok(abandoned.unwrap_or(false))
        })
    }

    fn oldest_undelivered(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>> {
        Box::pin(async move {
            let oldest: Option<String> = sqlx::query_scalar(
                "SELECT min(created_at) FROM user_sync_webhook_deliveries
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(oldest
                .as_deref()
                .and_then(parse_at)
                .map(|at| (Utc::now() - at).to_std().unwrap_or_default()))
        })
    }

    fn waiting_deliveries(&self) -> BoxFuture<'_, sqlx::Result<Vec<WaitingDelivery>>> {
        Box::pin(async move {
            type Row = (i64, String, String, bool, i32, String, Option<String>);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT id, webhook_id, type, abandoned_at IS NOT NULL, attempts, created_at,
                        last_error
                 FROM user_sync_webhook_deliveries WHERE delivered_at IS NULL ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await?;
            let now = Utc::now();
            Ok(rows
                .into_iter()
                .map(
                    |(id, webhook_id, kind, abandoned, attempts, created, last_error)| {
                        let created_at = parse_at(&created).unwrap_or(now);
                        WaitingDelivery {
                            id,
                            webhook_id,
                            kind,
                            state: WaitingDelivery::state_of(abandoned),
                            attempts,
                            created_at,
                            age_seconds: (now - created_at).as_seconds_f64().max(0.0),
                            last_error,
                        }
                    },
                )
                .collect())
        })
    }
}

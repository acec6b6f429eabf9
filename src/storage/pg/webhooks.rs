//! `user_sync.webhook_deliveries` on PostgreSQL: each webhook as sent,
//! written in the transaction of the change it reports, and claimed by
//! whichever process sends it (`FOR UPDATE SKIP LOCKED`, then a lease: see
//! [`crate::storage::Deliveries`]); and `user_sync.webhook_subscriptions`,
//! the types the deployment sends.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};

use crate::domain::WebhookKind;
use crate::storage::webhooks::{Deliveries, Delivery, FailedAttempt, WaitingDelivery};

use super::PgStore;

/// Writes a webhook of `kind` with `data` (ids, reasons and resolutions
/// only), in the caller's transaction, when the deployment sends that kind
/// (`user_sync.webhook_subscriptions`).
pub async fn enqueue(
    conn: &mut PgConnection,
    kind: WebhookKind,
    data: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync.webhook_deliveries (type, payload)
         SELECT $1, user_sync.webhook_body($1, $2)
         WHERE EXISTS (SELECT 1 FROM user_sync.webhook_subscriptions WHERE type = $1)",
    )
    .bind(kind.as_str())
    .bind(sqlx::types::Json(data))
    .execute(conn)
    .await?;
    Ok(())
}

/// A claim of the deliveries `$select` picks (their ids, locked, skipping
/// those locked by another claim): an attempt counted, and the rows leased
/// for `$1` seconds, then returned.
macro_rules! claim {
    ($select:literal) => {
        concat!(
            "UPDATE user_sync.webhook_deliveries d
             SET attempts = d.attempts + 1,
                 leased_until = now() + make_interval(secs => $1),
                 next_attempt_at = now() + make_interval(secs => $1)
             FROM (",
            $select,
            " FOR UPDATE SKIP LOCKED) claimed
             WHERE d.id = claimed.id
             RETURNING d.id, d.webhook_id, d.type, d.payload, d.attempts"
        )
    };
}

/// A claim's statement. It joins the claimed ids back to the table, so it
/// is planned for its rows each time, as the outbox's claim is (see
/// `events`).
fn claiming(sql: &'static str) -> QueryAs<'static, Postgres, Delivery, PgArguments> {
    sqlx::query_as(sql).persistent(false)
}

impl Deliveries for PgStore {
    fn subscribe<'a>(&'a self, kinds: &'a [WebhookKind]) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            let mut tx = self.pool.begin().await?;
            // Processes starting at once take turns: the last one's list is
            // the whole list, never a mix. Writers only read the table, and
            // read on.
            sqlx::query("LOCK TABLE user_sync.webhook_subscriptions IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "DELETE FROM user_sync.webhook_subscriptions WHERE type <> ALL($1::text[])",
            )
            .bind(&names)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO user_sync.webhook_subscriptions (type) SELECT unnest($1::text[])
                 ON CONFLICT (type) DO NOTHING",
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
            claiming(claim!(
                "SELECT id FROM user_sync.webhook_deliveries
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()
                 ORDER BY next_attempt_at LIMIT $2"
            ))
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
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
            claiming(claim!(
                "SELECT id FROM user_sync.webhook_deliveries
                 WHERE delivered_at IS NULL AND id > $3
                   AND (leased_until IS NULL OR leased_until <= now())
                 ORDER BY id LIMIT $2"
            ))
            .bind(lease.as_secs_f64())
            .bind(i64::from(limit))
            .bind(after)
            .fetch_all(&self.pool),
        )
    }

    fn mark_delivered(&self, id: i64) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync.webhook_deliveries
                 SET delivered_at = now(), abandoned_at = NULL, leased_until = NULL
                 WHERE id = $1 AND delivered_at IS NULL",
            )
            .bind(id)
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
            let abandoned: Option<bool> = sqlx::query_scalar(
                "UPDATE user_sync.webhook_deliveries
                 SET last_error = $2, leased_until = NULL,
                     abandoned_at = COALESCE(abandoned_at,
                         CASE WHEN created_at + make_interval(secs => $4) <= now() THEN now() END),
                     next_attempt_at = LEAST(now() + make_interval(secs => $3),
                                             created_at + make_interval(secs => $4))
                 WHERE id = $1 AND delivered_at IS NULL
                 RETURNING abandoned_at IS NOT NULL",
            )
            .bind(failed.id)
            .bind(failed.error)
            .bind(failed.retry_in.as_secs_f64())
            .bind(failed.max_age.as_secs_f64())
            .fetch_optional(&self.pool)
            .await?;
            Ok(abandoned.unwrap_or(false))
        })
    }

    fn oldest_undelivered(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>> {
        Box::pin(async move {
            // The first entry of the index of undelivered rows by creation.
            let seconds: Option<f64> = sqlx::query_scalar(
                "SELECT EXTRACT(EPOCH FROM (now() - min(created_at)))::float8
                 FROM user_sync.webhook_deliveries
                 WHERE delivered_at IS NULL AND abandoned_at IS NULL",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
        })
    }

    fn waiting_deliveries(&self) -> BoxFuture<'_, sqlx::Result<Vec<WaitingDelivery>>> {
        Box::pin(async move {
            let rows: Vec<WaitingRow> = sqlx::query_as(
                "SELECT id, webhook_id, type, abandoned_at IS NOT NULL AS abandoned, attempts,
                        created_at, EXTRACT(EPOCH FROM (now() - created_at))::float8 AS age_seconds,
                        last_error
                 FROM user_sync.webhook_deliveries WHERE delivered_at IS NULL ORDER BY id",
            )
            .fetch_all(&self.pool)
            .await?;
            Ok(rows.into_iter().map(WaitingRow::into_waiting).collect())
        })
    }
}

/// A row of [`Deliveries::waiting_deliveries`], as read.
#[derive(sqlx::FromRow)]
struct WaitingRow {
    id: i64,
    webhook_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    abandoned: bool,
    attempts: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    age_seconds: f64,
    last_error: Option<String>,
}

impl WaitingRow {
    fn into_waiting(self) -> WaitingDelivery {
        WaitingDelivery {
            id: self.id,
            webhook_id: self.webhook_id,
            kind: self.kind,
            state: WaitingDelivery::state_of(self.abandoned),
            attempts: self.attempts,
            created_at: self.created_at,
            age_seconds: self.age_seconds.max(0.0),
            last_error: self.last_error,
        }
    }
}

//! `user_sync.webhook_deliveries` on PostgreSQL: each webhook as sent,
//! written in the transaction of the change it reports.

use sqlx::PgConnection;

use crate::domain::WebhookKind;

/// Writes a webhook of `kind` with `data` (ids, reasons and resolutions
/// only), in the caller's transaction, when the deployment sends that kind
/// (`user_sync.webhook_subscriptions`).
#[allow(dead_code)] // Until erasures and failed events write theirs.
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

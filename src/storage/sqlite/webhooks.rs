//! `user_sync_webhook_deliveries` in a SQLite file: each webhook as sent,
//! written in the transaction of the change it reports.

use sqlx::SqliteConnection;

use crate::domain::WebhookKind;

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

//! The webhook deliveries (`user_sync.webhook_deliveries`): their rows, and
//! what the deliverer and `user-sync webhooks` do to them, through
//! [`Deliveries`].
//!
//! A delivery is written in the transaction of the change it reports (by
//! `enqueue` on each backend, for a subscribed type only) and then belongs
//! to whoever claims it: a claim counts an attempt and leases the row for
//! as long as an attempt can take, so that several processes send each
//! webhook once in the normal case, and an attempt lost in a crash is
//! taken up again when its lease runs out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::domain::{EmbeddedUserId, ErasureOutcome, WebhookKind};

/// A webhook claimed for one attempt.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    /// The `webhook-id` header: the same on every attempt.
    pub webhook_id: String,
    /// Its type, as written (`conflict.opened`, …).
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The body as it is sent and signed: ids, reasons and resolutions.
    pub payload: String,
    /// Attempts so far, this one included.
    pub attempts: i32,
}

impl Delivery {
    /// Its type as a metric label: one of the four, or `unknown`.
    pub fn kind_label(&self) -> &'static str {
        WebhookKind::parse(&self.kind).map_or("unknown", WebhookKind::as_str)
    }
}

/// How an attempt that did not deliver ends.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    pub id: i64,
    /// An HTTP status or the kind of transport error; never a response body.
    pub error: &'a str,
    /// When to try again, from now (the backoff's draw).
    pub retry_in: Duration,
    /// How long after its creation a webhook is tried: past it, the
    /// delivery is abandoned, and the last retry comes no later than it.
    /// One abandoned already stays abandoned (a failed redelivery).
    pub max_age: Duration,
}

/// A delivery not delivered: waiting for its next attempt, or abandoned.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WaitingDelivery {
    pub id: i64,
    pub webhook_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending` (it will be tried again) or `abandoned`.
    pub state: &'static str,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub age_seconds: f64,
    pub last_error: Option<String>,
}

impl WaitingDelivery {
    /// Its `state`: `abandoned` or `pending`.
    pub(crate) fn state_of(abandoned: bool) -> &'static str {
        if abandoned { "abandoned" } else { "pending" }
    }
}

/// What the deliverer of webhooks and `user-sync webhooks` do to the
/// deliveries and the subscriptions.
pub trait Deliveries: Send + Sync {
    /// Makes the deployment's subscriptions exactly `kinds`, in one
    /// transaction: every writer writes a webhook of a type listed there
    /// only.
    fn subscribe<'a>(&'a self, kinds: &'a [WebhookKind]) -> BoxFuture<'a, sqlx::Result<()>>;
    /// Claims up to `limit` deliveries due for an attempt, leased for
    /// `lease`: nobody else claims them until the attempt ends or the
    /// lease runs out.
    fn claim_due_deliveries(
        &self,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<Delivery>>>;
    /// Claims up to `limit` undelivered deliveries with an id above
    /// `after`, abandoned ones included, due or not, but none whose lease
    /// runs: what an operator sends again now.
    fn claim_for_redelivery(
        &self,
        after: i64,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<Delivery>>>;
    /// The receiver took it.
    fn mark_delivered(&self, id: i64) -> BoxFuture<'_, sqlx::Result<()>>;
    /// An attempt did not deliver; returns whether the delivery is now
    /// abandoned.
    fn mark_attempt_failed<'a>(
        &'a self,
        failed: FailedAttempt<'a>,
    ) -> BoxFuture<'a, sqlx::Result<bool>>;
    /// The age of the oldest delivery still to be tried, if any.
    fn oldest_undelivered(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>>;
    /// Every delivery not delivered, oldest first.
    fn waiting_deliveries(&self) -> BoxFuture<'_, sqlx::Result<Vec<WaitingDelivery>>>;
}

/// The data of an `erasure.completed` webhook: ids and the outcome.
pub(crate) fn erasure_completed(
    host_user_id: &str,
    embedded_user_id: Option<&EmbeddedUserId>,
    event_id: i64,
    outcome: ErasureOutcome,
    erasure_id: i64,
) -> serde_json::Value {
    serde_json::json!({
        "erasure_id": erasure_id,
        "event_id": event_id,
        "host_user_id": host_user_id,
        "embedded_user_id": embedded_user_id.map(EmbeddedUserId::as_str),
        "outcome": outcome.as_str(),
    })
}

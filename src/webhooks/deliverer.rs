//! The deliverer: a task of every `user-sync run` process that sends due
//! webhooks, and the redelivery of `user-sync webhooks --redeliver`, over
//! one attempt.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::send::{Refusal, Sender};
use crate::config::WebhookSettings;
use crate::retry::Backoff;
use crate::storage::{Deliveries, Delivery, FailedAttempt};

/// How often the deliveries are looked at: one probe of the index of due
/// rows. A webhook waits at most this long for its first attempt.
const POLL: Duration = Duration::from_secs(1);
/// Deliveries claimed at a time, and sent at once.
const BATCH: u32 = 32;
/// Retries: full jitter, from up to a second after the first failure to up
/// to an hour between late attempts (and never past `webhooks.max_age_ms`).
const RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(3600),
};
/// How much longer than an attempt's timeout a claim holds: a process that
/// dies mid-attempt leaves its webhooks to the others after this.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// How long attempts under way may finish after shutdown; one cut short is
/// sent again when its lease runs out.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempted {
    Delivered,
    /// Not delivered; tried again later.
    Failed(Refusal),
    /// Not delivered, and too old to try again.
    Abandoned(Refusal),
}

/// What `--redeliver` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redelivered {
    pub delivered: u64,
    pub failed: u64,
}

/// Sends the webhooks of one database to one receiver.
pub struct Deliverer {
    deliveries: Arc<dyn Deliveries>,
    sender: Sender,
    max_age: Duration,
    /// How long a claim holds (see [`LEASE_MARGIN`]).
    lease: Duration,
}

impl Deliverer {
    /// `None` when webhooks are off (`webhooks.url` empty).
    pub fn new(
        deliveries: Arc<dyn Deliveries>,
        settings: &WebhookSettings,
    ) -> anyhow::Result<Option<Self>> {
        let Some(target) = settings.target() else {
            return Ok(None);
        };
        Ok(Some(Self {
            deliveries,
            sender: Sender::new(target, settings.timeout)?,
            max_age: settings.max_age,
            lease: settings.timeout + LEASE_MARGIN,
        }))
    }

    /// Delivers due webhooks until `shutdown`; keeps the metric of the
    /// oldest undelivered one (retention deletes the old rows).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let round = self.deliver_due();
            tokio::pin!(round);
            let outcome = tokio::select! {
                outcome = &mut round => outcome,
                () = shutdown.cancelled() => {
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, round).await;
                    return;
                }
            };
            let full = match outcome {
                Ok(claimed) => {
                    failures = 0;
                    claimed == BATCH as usize
                }
                Err(error) => {
                    tracing::warn!(%error, "webhook delivery round failed; it tries again");
                    failures = failures.saturating_add(1);
                    if Backoff::RESTART.pause(failures, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            self.measure().await;
            // A full batch means more may be due: no wait.
            if !full {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// One round: claims due webhooks and sends them at once; returns how
    /// many were claimed.
    pub async fn deliver_due(&self) -> sqlx::Result<usize> {
        let claimed = self
            .deliveries
            .claim_due_deliveries(BATCH, self.lease)
            .await?;
        let count = claimed.len();
        self.attempt_all(claimed).await?;
        Ok(count)
    }

    /// Sends every undelivered webhook now, abandoned ones included, except
    /// those another process is sending.
    pub async fn redeliver(&self) -> sqlx::Result<Redelivered> {
        let mut done = Redelivered::default();
        let mut after = 0;
        loop {
            let claimed = self
                .deliveries
                .claim_for_redelivery(after, BATCH, self.lease)
                .await?;
            let Some(last) = claimed.iter().map(|d| d.id).max() else {
                return Ok(done);
            };
            after = last;
            for attempted in self.attempt_all(claimed).await? {
                match attempted {
                    Attempted::Delivered => done.delivered += 1,
                    Attempted::Failed(_) | Attempted::Abandoned(_) => done.failed += 1,
                }
            }
        }
    }

    /// Attempts every claimed webhook at once.
    async fn attempt_all(&self, claimed: Vec<Delivery>) -> sqlx::Result<Vec<Attempted>> {
        let width = claimed.len().max(1);
        futures::stream::iter(claimed)
            .map(|delivery| self.attempt(delivery))
            .buffer_unordered(width)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// One attempt, recorded: delivered, or failed with the next attempt
    /// drawn from the backoff, or abandoned past `webhooks.max_age_ms`.
    async fn attempt(&self, delivery: Delivery) -> sqlx::Result<Attempted> {
        let kind = delivery.kind_label();
        let attempted = match self.sender.send(&delivery).await {
            Ok(()) => {
                self.deliveries.mark_delivered(delivery.id).await?;
                Attempted::Delivered
            }
            Err(refusal) => {
                let failures = u32::try_from(delivery.attempts.max(1) - 1).unwrap_or(0);
                let error = refusal.describe();
                let abandoned = self
                    .deliveries
                    .mark_attempt_failed(FailedAttempt {
                        id: delivery.id,
                        error: &error,
                        retry_in: RETRY.delay(failures),
                        max_age: self.max_age,
                    })
                    .await?;
                metrics::counter!(
                    "user_sync_webhook_failures_total",
                    "type" => kind,
                    "error" => refusal.label()
                )
                .increment(1);
                if abandoned {
                    tracing::warn!(
                        webhook_id = %delivery.webhook_id,
                        r#type = kind,
                        attempts = delivery.attempts,
                        last_error = %error,
                        "webhook abandoned: not delivered within webhooks.max_age_ms"
                    );
                    Attempted::Abandoned(refusal)
                } else {
                    let id = &delivery.webhook_id;
                    tracing::debug!(webhook_id = %id, %error, "webhook not delivered; retried later");
                    Attempted::Failed(refusal)
                }
            }
        };
        let result = match attempted {
            Attempted::Delivered => "delivered",
            Attempted::Failed(_) => "failed",
            Attempted::Abandoned(_) => "abandoned",
        };
        metrics::counter!("user_sync_webhook_deliveries_total", "type" => kind, "result" => result)
            .increment(1);
        Ok(attempted)
    }

    /// Sets the gauge of the oldest webhook still to be delivered.
    async fn measure(&self) {
        match self.deliveries.oldest_undelivered().await {
            Ok(age) => {
                let seconds = age.unwrap_or_default().as_secs_f64();
                metrics::gauge!("user_sync_webhook_oldest_undelivered_seconds").set(seconds);
            }
            Err(error) => tracing::debug!(%error, "the oldest undelivered webhook is unknown"),
        }
    }
}

//! The Embedded API as a foreground command (the backfill, an operator's
//! `conflicts resolve`) calls it: through the process's gate, as
//! the jobs do, with the worker's retry policy cut to waits a foreground run
//! can sit through, and [`Resend`] saying which failures a call may be sent
//! again after (a create that may have been applied never is).
//!
//! Apart from the run so that the run reads as what it does with the
//! answers, and this file as how it gets them.

use std::sync::Arc;
use std::time::Duration;

use crate::config::WorkerSettings;
use crate::embedded::{ApiError, EmbeddedClient};
use crate::ratelimit::{ApiGate, GateRefusal};
use crate::retry::{Backoff, Retry, RetryPolicy};

/// When a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Reads: any retryable failure.
    Always,
    /// Creates: only when nothing can have been applied (`429`, or no
    /// connection); a maybe-applied create is confirmed from `GET /users`.
    UnlessApplied,
}

/// The API through the process's gate, as the jobs call it: `acquire`
/// before each call, `observe` after each error.
pub struct Api {
    pub client: EmbeddedClient,
    pub gate: Arc<ApiGate>,
    pub worker: WorkerSettings,
}

/// A foreground run waits at most this long between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Api {
    pub async fn call<T, F, Fut>(&self, retry: Resend, make: F) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        loop {
            match self.gate.acquire().await {
                Ok(()) => {}
                Err(GateRefusal::Backoff(wait)) => {
                    // A foreground run has no slot to give back: it waits.
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(GateRefusal::Paused) => {
                    // Paused by an operator: a foreground run waits too.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(GateRefusal::AuthPaused) => {
                    return Err(ApiError::Unauthorized { status: 401 });
                }
            }
            let error = match make().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            self.gate.observe(&error);
            // A refused key ends a foreground run, and a create that may
            // have been applied is confirmed from `GET /users`, never sent
            // again.
            if error.is_auth() || (retry == Resend::UnlessApplied && error.outcome_unknown()) {
                return Err(error);
            }
            match self.policy().after_error(&error, failures) {
                Retry::GiveUp { .. } => return Err(error),
                Retry::After {
                    counts_attempt: true,
                    after,
                    ..
                } => {
                    failures += 1;
                    tokio::time::sleep(after).await;
                }
                // The gate now pauses every call for the hinted time.
                Retry::After { .. } => {
                    rate_limited += 1;
                    if rate_limited >= self.worker.max_attempts.saturating_mul(10) {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// The worker's policy, with waits a foreground run can sit through.
    pub(super) fn policy(&self) -> RetryPolicy {
        let mut policy = RetryPolicy::new(&self.worker);
        policy.backoff = Backoff::new(
            self.worker.backoff_base,
            self.worker.backoff_cap.min(MAX_BACKOFF),
        );
        policy
    }
}

//! One retry policy and one backoff for everything that tries again: a
//! job's API calls, the backfill's, and every loop that restarts a part of
//! the process (the dispatcher, the queue's workers).
//!
//! The policy is the one place that says what a failed call means: a
//! refusal of the gate or an error of the API becomes [`Retry::After`] (with
//! whether it used up an attempt) or [`Retry::GiveUp`]. Waits grow
//! exponentially with full jitter ([`Backoff`]), so that many callers
//! failing at once do not come back at once.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerSettings;
use crate::embedded::ApiError;
use crate::ratelimit::GateRefusal;

/// How soon an event refused by an operator's pause is looked at again:
/// the dispatcher holds everything else back while paused, so this is only
/// the few events already in the queue when the pause came.
pub const OPERATOR_PAUSE_RETRY: Duration = Duration::from_secs(2);

/// Full-jitter exponential backoff: after `attempt` failures, a random wait
/// in `[1 ms, min(cap, base * 2^attempt)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// How a part of the process that stopped on an error (the database or
    /// Redis away) waits before it starts again.
    pub const RESTART: Self = Self {
        base: Duration::from_millis(250),
        cap: Duration::from_secs(10),
    };

    pub fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The wait after `attempt` failures.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &mut rand::rng())
    }

    /// [`Backoff::delay`] drawn from `rng`.
    pub fn delay_with(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let millis = u64::try_from(self.ceiling(attempt).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_millis(rng.random_range(1..=millis))
    }

    /// The longest wait after `attempt` failures.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Waits [`Backoff::delay`] after `attempt` failures; `true` when
    /// `shutdown` came first.
    pub async fn pause(&self, attempt: u32, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(self.delay(attempt)) => false,
        }
    }
}

/// Why a call did not go through: the gate refused to send it, or the API
/// answered with an error.
#[derive(Debug)]
pub enum Stop {
    Gate(GateRefusal),
    Api(ApiError),
}

/// What to do about a call that did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Try again after `after`. `counts_attempt` when the failure used up
    /// one of `worker.max_attempts` (rate limits and a refused key do not:
    /// they say nothing about the call).
    After {
        after: Duration,
        counts_attempt: bool,
        reason: String,
    },
    /// Give up for good: trying again cannot help.
    GiveUp { reason: String },
}

/// The worker's retry policy, from `[worker]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// Attempts a call may fail (5xx, timeouts) before it is given up.
    pub max_attempts: u32,
    /// How long a refused key pauses a call before it is tried again.
    pub auth_retry_interval: Duration,
}

impl RetryPolicy {
    pub fn new(worker: &WorkerSettings) -> Self {
        Self {
            backoff: Backoff::new(worker.backoff_base, worker.backoff_cap),
            max_attempts: worker.max_attempts,
            auth_retry_interval: worker.auth_retry_interval,
        }
    }

    /// What `stop` means for a call that had failed `attempts` times before.
    pub fn decide(&self, stop: &Stop, attempts: u32) -> Retry {
        match stop {
            Stop::Gate(GateRefusal::AuthPaused) => Retry::After {
                after: self.auth_retry_interval,
                counts_attempt: false,
                reason: "paused: the Embedded API refused the API key".into(),
            },
            Stop::Gate(GateRefusal::Paused) => Retry::After {
                after: OPERATOR_PAUSE_RETRY,
                counts_attempt: false,
                reason: "paused by an operator".into(),
            },
            Stop::Gate(GateRefusal::Backoff(wait)) => Retry::After {
                after: *wait,
                counts_attempt: false,
                reason: "waiting for the rate limit".into(),
            },
            Stop::Api(error) => self.after_error(error, attempts),
        }
    }

    /// What an error of the API means for a call that had failed
    /// `attempts` times before.
    pub fn after_error(&self, error: &ApiError, attempts: u32) -> Retry {
        let again = |after, counts_attempt, reason: String| Retry::After {
            after,
            counts_attempt,
            reason,
        };
        match error {
            ApiError::RateLimited { retry_after } => again(
                retry_after.unwrap_or_else(|| self.backoff.delay(attempts)),
                false,
                "rate limited by the Embedded API".into(),
            ),
            ApiError::Unauthorized { status } => again(
                self.auth_retry_interval,
                false,
                format!("paused: the Embedded API refused the API key (status {status})"),
            ),
            ApiError::Unavailable { .. } => {
                if attempts + 1 >= self.max_attempts {
                    Retry::GiveUp {
                        reason: format!("gave up after {} attempts: {error}", attempts + 1),
                    }
                } else {
                    again(self.backoff.delay(attempts), true, error.to_string())
                }
            }
            // NotFound or a refusal where none was expected: permanent.
            _ => Retry::GiveUp {
                reason: error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::UnavailableCause;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_then_caps() {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let ceilings: Vec<u64> = (0..8)
            .map(|a| backoff.ceiling(a).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        assert_eq!(backoff.ceiling(200), backoff.cap);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for attempt in 0..20 {
            let wait = backoff.delay_with(attempt, &mut rng);
            assert!(wait >= Duration::from_millis(1));
            assert!(wait <= backoff.ceiling(attempt));
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
            max_attempts: 3,
            auth_retry_interval: Duration::from_secs(30),
        }
    }

    fn unavailable() -> Stop {
        Stop::Api(ApiError::Unavailable {
            cause: UnavailableCause::ServerError(503),
        })
    }

    #[test]
    fn server_errors_count_attempts_until_the_last_one_gives_up() {
        let policy = policy();
        for attempts in 0..2 {
            match policy.decide(&unavailable(), attempts) {
                Retry::After {
                    after,
                    counts_attempt,
                    ..
                } => {
                    assert!(counts_attempt);
                    assert!(after <= policy.backoff.ceiling(attempts));
                }
                other => panic!("attempt {attempts}: {other:?}"),
            }
        }
        match policy.decide(&unavailable(), 2) {
            Retry::GiveUp { reason } => assert!(reason.starts_with("gave up after 3 attempts")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limits_and_refused_keys_never_use_up_attempts() {
        let policy = policy();
        let hinted = Stop::Api(ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        });
        let cases = [
            (hinted, Some(Duration::from_secs(7))),
            (
                Stop::Api(ApiError::Unauthorized { status: 401 }),
                Some(Duration::from_secs(30)),
            ),
            (
                Stop::Gate(GateRefusal::AuthPaused),
                Some(Duration::from_secs(30)),
            ),
            (
                Stop::Gate(GateRefusal::Backoff(Duration::from_millis(40))),
                Some(Duration::from_millis(40)),
            ),
            (Stop::Api(ApiError::RateLimited { retry_after: None }), None),
        ];
        for (stop, want) in cases {
            // Far past max_attempts: still retried.
            match policy.decide(&stop, 1_000) {
                Retry::After {
                    after,
                    counts_attempt: false,
                    ..
                } => {
                    if let Some(want) = want {
                        assert_eq!(after, want, "{stop:?}");
                    } else {
                        assert!(after <= policy.backoff.cap);
                    }
                }
                other => panic!("{stop:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_answers_are_given_up_at_once() {
        for error in [
            ApiError::NotFound,
            ApiError::Rejected {
                status: 422,
                message: "invalid".into(),
            },
        ] {
            assert!(matches!(
                policy().decide(&Stop::Api(error), 0),
                Retry::GiveUp { .. }
            ));
        }
    }
}

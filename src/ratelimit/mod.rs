//! The gate every API call passes: the rate limit, the pause after a `429`,
//! and the auth pause after a `401`/`403`.
//!
//! The limit is one of three, from `[rate_limit]`:
//! - `scope = "process"`, fixed: governor, per process;
//! - `scope = "process"`, `adaptive = true`: a local pacer whose rate
//!   follows additive increase, multiplicative decrease (`pacer`);
//! - `scope = "global"`: one limit in Redis for every process
//!   ([`SharedLimit`]), fixed or adaptive, with governor still guarding
//!   each process when fixed.
//!
//! A task never waits long at the gate: when the wait would be long it is
//! told so, and snoozes its event instead of holding a worker slot, so
//! waiting for budget pushes back on the queue and never blocks shutdown.

mod pacer;
mod shared;

pub use shared::{REDIS_TIMEOUT, SharedLimit, SharedParams, Slot};

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::RateLimitSettings;
use crate::embedded::ApiError;
use pacer::{Aimd, LocalPacer};

/// The longest a task waits at the gate before it gives its slot back.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);
/// The pause after a `429` that gave no `Retry-After`.
pub const DEFAULT_429_PAUSE: Duration = Duration::from_secs(1);
/// With a shared or adaptive limit, a short `Retry-After` is honoured by the
/// request that got it (its event waits that long) while the schedule slows
/// everyone (a skipped slot, or the adaptive cut); a longer one pauses every
/// task. A process-local fixed limit pauses every task of the process.
pub const SHORT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The adaptive rate never falls below this.
pub const ADAPTIVE_FLOOR: f64 = 1.0;

/// Why the gate did not let a call through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// The API refused the key; calls resume when a probe succeeds.
    AuthPaused,
    /// An operator paused the deployment (`user-sync pause`); calls resume
    /// with `user-sync resume`.
    Paused,
    /// Come back after this long.
    Backoff(Duration),
}

enum Limit {
    Fixed(DefaultDirectRateLimiter),
    Adaptive(LocalPacer),
    Shared {
        /// The process's own guard at the configured rate (fixed only).
        guard: Option<DefaultDirectRateLimiter>,
        shared: Arc<SharedLimit>,
    },
}

impl Limit {
    async fn reserve(&self, max_wait: Duration) -> Slot {
        match self {
            Self::Fixed(limiter) => Slot::from_local(governor_wait(limiter)),
            Self::Adaptive(pacer) => Slot::from_local(pacer.reserve()),
            Self::Shared { guard, shared } => {
                if let Some(guard) = guard {
                    let wait = governor_wait(guard);
                    if !wait.is_zero() {
                        return Slot::Retry(wait);
                    }
                }
                shared.reserve(max_wait).await
            }
        }
    }

    fn rate(&self, configured: f64) -> f64 {
        match self {
            Self::Fixed(_) => configured,
            Self::Adaptive(pacer) => pacer.rate(),
            Self::Shared { shared, .. } => shared.rate(),
        }
    }
}

fn governor_wait(limiter: &DefaultDirectRateLimiter) -> Duration {
    match limiter.check() {
        Ok(()) => Duration::ZERO,
        Err(not_until) => not_until.wait_time_from(DefaultClock::default().now()),
    }
}

/// A fixed limit runs this much under the configured rate. The API counts
/// arrivals in a sliding second and the gate counts departures; the jitter
/// between them (scheduling, the network) would otherwise now and then put
/// one request too many in the API's second, and each `429` costs a pause.
pub const FIXED_RATE_MARGIN: f64 = 0.98;
/// In global scope the requests come from several processes, each with its
/// own scheduling jitter between the shared schedule and the wire.
pub const GLOBAL_RATE_MARGIN: f64 = 0.97;

/// The rate a fixed limit keeps to, requests per second.
fn fixed_rate(settings: &RateLimitSettings) -> f64 {
    f64::from(settings.requests_per_second.max(1)) * FIXED_RATE_MARGIN
}

fn quota(settings: &RateLimitSettings) -> Quota {
    let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
    let period = Duration::from_secs_f64(1.0 / fixed_rate(settings));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

pub struct ApiGate {
    limit: Limit,
    adaptive: bool,
    configured_rate: f64,
    /// No call before this instant: set by a `429`, for every task.
    paused_until: Mutex<Option<Instant>>,
    /// Set by a `401`/`403`; cleared by a successful auth probe.
    auth_paused: AtomicBool,
    /// An operator's pause of the deployment, as last read from the
    /// database.
    operator_paused: AtomicBool,
    /// The last time a caller had to wait for budget (or was told to come
    /// back): work of the lowest priority goes only when nobody has lately.
    contended_at: Mutex<Option<Instant>>,
    /// Calls let through since the process started: the console reads the
    /// rate in use from two readings.
    granted: AtomicU64,
}

impl std::fmt::Debug for ApiGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiGate")
            .field("adaptive", &self.adaptive)
            .field("auth_paused", &self.auth_paused())
            .finish_non_exhaustive()
    }
}

impl ApiGate {
    /// A limit of this process alone (`scope = "process"`).
    pub fn new(settings: &RateLimitSettings) -> Self {
        let limit = if settings.adaptive {
            Limit::Adaptive(LocalPacer::adaptive(
                Aimd::new(
                    f64::from(settings.requests_per_second),
                    ADAPTIVE_FLOOR,
                    f64::from(settings.max_requests_per_second),
                ),
                settings.burst,
            ))
        } else {
            Limit::Fixed(RateLimiter::direct(quota(settings)))
        };
        Self::build(settings, limit)
    }

    /// A limit shared through Redis by every process (`scope = "global"`).
    pub fn shared(settings: &RateLimitSettings, shared: Arc<SharedLimit>) -> Self {
        let guard = (!settings.adaptive).then(|| RateLimiter::direct(quota(settings)));
        Self::build(settings, Limit::Shared { guard, shared })
    }

    /// What the shared limit's script needs from the settings.
    pub fn shared_params(settings: &RateLimitSettings) -> SharedParams {
        SharedParams {
            rate: if settings.adaptive {
                f64::from(settings.requests_per_second)
            } else {
                f64::from(settings.requests_per_second.max(1)) * GLOBAL_RATE_MARGIN
            },
            burst: settings.burst.max(1),
            adaptive: settings.adaptive,
            floor: ADAPTIVE_FLOOR,
            ceiling: f64::from(settings.max_requests_per_second),
        }
    }

    fn build(settings: &RateLimitSettings, limit: Limit) -> Self {
        let configured_rate = f64::from(settings.requests_per_second);
        metrics::gauge!("user_sync_rate_limit_allowed_rps").set(configured_rate);
        Self {
            limit,
            adaptive: settings.adaptive,
            configured_rate,
            paused_until: Mutex::new(None),
            auth_paused: AtomicBool::new(false),
            operator_paused: AtomicBool::new(false),
            contended_at: Mutex::new(None),
            granted: AtomicU64::new(0),
        }
    }

    /// Calls this gate let through since it was made.
    pub fn calls_granted(&self) -> u64 {
        self.granted.load(Ordering::Relaxed)
    }

    /// The rate allowed now, requests per second (adaptive rates move).
    pub fn allowed_rate(&self) -> f64 {
        self.limit.rate(self.configured_rate)
    }

    /// The right to make one call of the lowest priority (a recheck of an
    /// old conflict): only when no caller has had to wait for budget for
    /// `quiet`, so that live events and erasures always go first; otherwise
    /// the caller is told to come back later.
    pub async fn acquire_spare(&self, quiet: Duration) -> Result<(), GateRefusal> {
        match self.spare_in(quiet) {
            Duration::ZERO => self.acquire().await,
            wait => Err(GateRefusal::Backoff(wait)),
        }
    }

    /// How long until work of the lowest priority may go (see
    /// [`Self::acquire_spare`]); zero when it may now. Takes no budget.
    pub fn spare_in(&self, quiet: Duration) -> Duration {
        if self.operator_paused() || self.auth_paused() || !self.pause_remaining().is_zero() {
            return quiet;
        }
        let contended = *self.contended_at.lock().unwrap_or_else(|e| e.into_inner());
        contended.map_or(Duration::ZERO, |at| quiet.saturating_sub(at.elapsed()))
    }

    fn note_contention(&self) {
        *self.contended_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether an operator paused the deployment.
    pub fn operator_paused(&self) -> bool {
        self.operator_paused.load(Ordering::Relaxed)
    }

    /// Follows the deployment's pause (read from the database by every
    /// process): while paused, every call is refused.
    pub fn set_operator_paused(&self, paused: bool) {
        let was = self.operator_paused.swap(paused, Ordering::Relaxed);
        if was != paused {
            metrics::gauge!("user_sync_paused").set(if paused { 1.0 } else { 0.0 });
            match paused {
                true => tracing::warn!("paused by an operator: no API call until resumed"),
                false => tracing::info!("resumed by an operator"),
            }
        }
    }

    /// Waits for the right to make one call, or says why not now.
    pub async fn acquire(&self) -> Result<(), GateRefusal> {
        if self.operator_paused() {
            return Err(GateRefusal::Paused);
        }
        if self.auth_paused() {
            return Err(GateRefusal::AuthPaused);
        }
        let pause = self.pause_remaining();
        if pause > MAX_INLINE_WAIT {
            self.note_contention();
            return Err(GateRefusal::Backoff(pause));
        }
        if !pause.is_zero() {
            self.note_contention();
            tokio::time::sleep(pause).await;
        }
        let deadline = Instant::now() + MAX_INLINE_WAIT;
        loop {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            match self.limit.reserve(max_wait).await {
                Slot::After(wait) => {
                    if !wait.is_zero() {
                        self.note_contention();
                        metrics::counter!("user_sync_rate_limit_waits_total").increment(1);
                        tokio::time::sleep(wait).await;
                    }
                    if self.adaptive {
                        metrics::gauge!("user_sync_rate_limit_allowed_rps")
                            .set(self.allowed_rate());
                    }
                    self.granted.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Slot::Retry(wait) => {
                    self.note_contention();
                    metrics::counter!("user_sync_rate_limit_waits_total").increment(1);
                    if wait > max_wait {
                        return Err(GateRefusal::Backoff(wait));
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Learns from an answer: a `429` slows (adaptive) or pauses every task,
    /// of every process in global scope; a `401`/`403` pauses all calls
    /// until the key works again.
    pub fn observe(&self, error: &ApiError) {
        match error {
            ApiError::RateLimited { retry_after } => self.throttled(*retry_after),
            ApiError::Unauthorized { status } => self.pause_auth(*status),
            _ => {}
        }
    }

    fn throttled(&self, retry_after: Option<Duration>) {
        metrics::counter!("user_sync_api_rate_limited_total").increment(1);
        let scheduled = !matches!(self.limit, Limit::Fixed(_));
        let pause = match retry_after {
            Some(wait) if scheduled && wait <= SHORT_RETRY_AFTER => Duration::ZERO,
            Some(wait) => wait,
            None if scheduled => Duration::ZERO,
            None => DEFAULT_429_PAUSE,
        };
        if !pause.is_zero() {
            self.pause_for(pause);
        }
        match &self.limit {
            Limit::Fixed(_) => {}
            Limit::Adaptive(pacer) => pacer.on_throttle(),
            Limit::Shared { shared, .. } => {
                let shared = shared.clone();
                tokio::spawn(async move { shared.on_throttle(pause).await });
            }
        }
    }

    fn pause_auth(&self, status: u16) {
        if !self.auth_paused.swap(true, Ordering::SeqCst) {
            metrics::gauge!("user_sync_api_auth_paused").set(1.0);
            tracing::error!(
                alert = "embedded_api_key_refused",
                status,
                "the Embedded API refused the API key: all calls are paused until it is accepted again"
            );
        }
    }

    pub fn auth_paused(&self) -> bool {
        self.auth_paused.load(Ordering::SeqCst)
    }

    /// Resumes calls after a successful auth probe.
    pub fn resume_auth(&self) {
        if self.auth_paused.swap(false, Ordering::SeqCst) {
            metrics::gauge!("user_sync_api_auth_paused").set(0.0);
            tracing::warn!("the Embedded API accepts the API key again: calls resume");
        }
    }

    fn pause_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    fn pause_remaining(&self) -> Duration {
        let paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
        paused
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rps: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            requests_per_second: rps,
            burst,
            scope: crate::config::RateLimitScope::Process,
            adaptive: false,
            max_requests_per_second: 1000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_caller() {
        let gate = ApiGate::new(&settings(1000, 1000));
        gate.observe(&ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        });
        assert_eq!(
            gate.acquire().await,
            Err(GateRefusal::Backoff(Duration::from_secs(30)))
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        let started = Instant::now();
        assert_eq!(gate.acquire().await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(999));
    }

    #[tokio::test]
    async fn auth_failure_pauses_until_resumed() {
        let gate = ApiGate::new(&settings(10, 10));
        gate.observe(&ApiError::Unauthorized { status: 401 });
        assert_eq!(gate.acquire().await, Err(GateRefusal::AuthPaused));
        gate.resume_auth();
        assert_eq!(gate.acquire().await, Ok(()));
    }

    #[tokio::test]
    async fn a_short_rate_limit_wait_is_waited_inline() {
        let gate = ApiGate::new(&settings(1, 1));
        assert_eq!(gate.acquire().await, Ok(()));
        // The next slot is a second away, under MAX_INLINE_WAIT: waited.
        let started = std::time::Instant::now();
        assert_eq!(gate.acquire().await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(900));
    }

    #[tokio::test]
    async fn spare_budget_goes_only_when_nobody_waited_lately() {
        let gate = ApiGate::new(&settings(50, 1));
        assert_eq!(gate.acquire_spare(Duration::from_secs(60)).await, Ok(()));
        // The next call waits for budget: the gate is contended.
        assert_eq!(gate.acquire().await, Ok(()));
        match gate.acquire_spare(Duration::from_secs(60)).await {
            Err(GateRefusal::Backoff(wait)) => assert!(wait <= Duration::from_secs(60)),
            other => panic!("a contended gate gave spare budget: {other:?}"),
        }
        // Quiet long enough (here: no quiet asked for), it goes again.
        assert_eq!(gate.acquire_spare(Duration::ZERO).await, Ok(()));
    }
}

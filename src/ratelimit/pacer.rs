//! An in-process GCRA whose rate can change: the adaptive limit of one
//! process, and the stand-in for the shared limit while Redis is away.
//!
//! governor guards fixed limits; its quota cannot change after it is built,
//! hence this small pacer for the rates that do.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// After a decrease, no other one for this long: the API's window needs
/// time to show the effect of a cut.
pub const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);
/// Requests per second gained each saturated second after the first 429.
pub const ADDITIVE_INCREASE: f64 = 2.0;
/// The cut on a 429 after slow start.
pub const DECREASE_FACTOR: f64 = 0.8;

/// Additive increase, multiplicative decrease of a rate, the way TCP finds
/// a link's capacity: slow start doubles the rate each saturated second
/// until the first 429 halves it; then each second adds
/// [`ADDITIVE_INCREASE`] and each 429 multiplies by [`DECREASE_FACTOR`].
#[derive(Debug, Clone)]
pub struct Aimd {
    rate: f64,
    floor: f64,
    ceiling: f64,
    slow_start: bool,
    last_decrease: Option<Instant>,
}

impl Aimd {
    pub fn new(start: f64, floor: f64, ceiling: f64) -> Self {
        Self {
            rate: start.clamp(floor, ceiling),
            floor,
            ceiling,
            slow_start: true,
            last_decrease: None,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// One request admitted: at saturation, `rate` of these make a second.
    pub fn on_admit(&mut self) {
        let gain = if self.slow_start {
            1.0
        } else {
            ADDITIVE_INCREASE / self.rate
        };
        self.rate = (self.rate + gain).min(self.ceiling);
    }

    /// The API answered 429.
    pub fn on_throttle(&mut self, now: Instant) {
        if self
            .last_decrease
            .is_some_and(|last| now.saturating_duration_since(last) < DECREASE_COOLDOWN)
        {
            return;
        }
        self.rate = if self.slow_start {
            self.slow_start = false;
            self.rate / 2.0
        } else {
            self.rate * DECREASE_FACTOR
        }
        .max(self.floor);
        self.last_decrease = Some(now);
    }
}

#[derive(Debug)]
struct State {
    /// Theoretical arrival time of the next request.
    tat: Instant,
    rate: f64,
    aimd: Option<Aimd>,
}

/// GCRA: a request may go when it is no more than `burst - 1` intervals
/// ahead of the theoretical schedule.
#[derive(Debug)]
pub struct LocalPacer {
    burst: f64,
    state: Mutex<State>,
}

impl LocalPacer {
    /// A fixed `rate` (requests per second, > 0).
    pub fn fixed(rate: f64, burst: u32) -> Self {
        Self::build(rate, burst, None)
    }

    pub fn adaptive(aimd: Aimd, burst: u32) -> Self {
        Self::build(aimd.rate(), burst, Some(aimd))
    }

    fn build(rate: f64, burst: u32, aimd: Option<Aimd>) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State {
                tat: Instant::now(),
                rate: rate.max(f64::MIN_POSITIVE),
                aimd,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot (`Duration::ZERO`) or says how long until one may be
    /// free.
    pub fn reserve(&self) -> Duration {
        let now = Instant::now();
        let mut state = self.lock();
        let rate = state.aimd.as_ref().map_or(state.rate, Aimd::rate);
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tat = state.tat.max(now);
        let allow_at = tat
            .checked_sub(interval.mul_f64(self.burst - 1.0))
            .unwrap_or(now);
        if allow_at > now {
            return allow_at - now;
        }
        state.tat = tat + interval;
        if let Some(aimd) = state.aimd.as_mut() {
            aimd.on_admit();
        }
        Duration::ZERO
    }

    pub fn on_throttle(&self) {
        let now = Instant::now();
        if let Some(aimd) = self.lock().aimd.as_mut() {
            aimd.on_throttle(now);
        }
    }

    /// The rate in force, requests per second.
    pub fn rate(&self) -> f64 {
        let state = self.lock();
        state.aimd.as_ref().map_or(state.rate, Aimd::rate)
    }

    /// Changes a fixed rate (the fallback follows the shared one).
    pub fn set_rate(&self, rate: f64) {
        let mut state = self.lock();
        if state.aimd.is_none() {
            state.rate = rate.max(f64::MIN_POSITIVE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fixed_pacer_spaces_requests_after_the_burst() {
        let pacer = LocalPacer::fixed(10.0, 3);
        for _ in 0..3 {
            assert_eq!(pacer.reserve(), Duration::ZERO);
        }
        let wait = pacer.reserve();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(wait).await;
        assert_eq!(pacer.reserve(), Duration::ZERO);
        // Over ten seconds, ten per second plus the burst at most.
        let mut admitted = 0;
        for _ in 0..1000 {
            if pacer.reserve().is_zero() {
                admitted += 1;
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((99..=103).contains(&admitted), "{admitted}");
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_halves_once_then_cuts_and_climbs_slowly() {
        let mut aimd = Aimd::new(10.0, 1.0, 1000.0);
        for _ in 0..10 {
            aimd.on_admit();
        }
        assert_eq!(
            aimd.rate(),
            20.0,
            "slow start: one more per admitted request"
        );
        aimd.on_throttle(Instant::now());
        assert_eq!(aimd.rate(), 10.0);
        // A second 429 within the cooldown changes nothing.
        aimd.on_throttle(Instant::now());
        assert_eq!(aimd.rate(), 10.0);
        tokio::time::advance(DECREASE_COOLDOWN).await;
        aimd.on_throttle(Instant::now());
        assert_eq!(aimd.rate(), 8.0);
        // One saturated second (8 admits) adds about ADDITIVE_INCREASE.
        for _ in 0..8 {
            aimd.on_admit();
        }
        assert!((aimd.rate() - 10.0).abs() < 0.3, "{}", aimd.rate());
    }

    #[test]
    fn aimd_stays_within_its_bounds() {
        let mut aimd = Aimd::new(5.0, 2.0, 6.0);
        for _ in 0..100 {
            aimd.on_admit();
        }
        assert_eq!(aimd.rate(), 6.0);
        let mut later = Instant::now();
        for _ in 0..20 {
            later += DECREASE_COOLDOWN * 2;
            aimd.on_throttle(later);
        }
        assert_eq!(aimd.rate(), 2.0);
    }
}

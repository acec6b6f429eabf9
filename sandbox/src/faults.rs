//! The faults in force and the sliding one-second window that both counts
//! requests per second and enforces the rate limit.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rand::Rng;
use rand::rngs::StdRng;

use crate::options::{
    FaultUpdate, SandboxOptions, check_api_key, check_duplicate_status, check_probability,
};

/// The width of the rate limit's sliding window, and of the per-second maxima.
const WINDOW: Duration = Duration::from_secs(1);

/// The faults in force, validated. Latency lives apart, in an atomic, so a
/// request can sleep without taking the lock.
#[derive(Clone)]
pub(crate) struct Faults {
    pub(crate) api_key: String,
    pub(crate) rate_limit: Option<u32>,
    pub(crate) retry_after: bool,
    pub(crate) fail_rate: f64,
    pub(crate) drop_rate: f64,
    pub(crate) duplicate_status: StatusCode,
    pub(crate) refuse_rename: bool,
    /// Every request is answered `429` until then.
    pub(crate) throttled_until: Option<Instant>,
    /// Accepted requests left before the key is revoked.
    pub(crate) revoke_key_after: Option<u64>,
    /// Every create is refused as taken, though no user holds its username.
    pub(crate) refuse_creates: bool,
}

impl Faults {
    pub(crate) fn from_options(options: &SandboxOptions) -> io::Result<Self> {
        check_api_key(&options.api_key)?;
        Ok(Self {
            api_key: options.api_key.clone(),
            rate_limit: options.rate_limit,
            retry_after: options.retry_after,
            fail_rate: check_probability("fail_rate", options.fail_rate)?,
            drop_rate: check_probability("drop_rate", options.drop_rate)?,
            duplicate_status: check_duplicate_status(options.duplicate_status)?,
            refuse_rename: options.refuse_rename,
            throttled_until: None,
            revoke_key_after: None,
            refuse_creates: false,
        })
    }

    /// These faults with `update` applied, or an error and no change at all.
    pub(crate) fn updated(&self, update: &FaultUpdate) -> io::Result<Self> {
        let mut next = self.clone();
        if let Some(key) = &update.api_key {
            check_api_key(key)?;
            next.api_key.clone_from(key);
        }
        if let Some(limit) = update.rate_limit {
            next.rate_limit = limit;
        }
        if let Some(retry_after) = update.retry_after {
            next.retry_after = retry_after;
        }
        if let Some(p) = update.fail_rate {
            next.fail_rate = check_probability("fail_rate", p)?;
        }
        if let Some(p) = update.drop_rate {
            next.drop_rate = check_probability("drop_rate", p)?;
        }
        if let Some(status) = update.duplicate_status {
            next.duplicate_status = check_duplicate_status(status)?;
        }
        if let Some(refuse) = update.refuse_rename {
            next.refuse_rename = refuse;
        }
        if let Some(refuse) = update.refuse_creates {
            next.refuse_creates = refuse;
        }
        if let Some(requests) = update.revoke_key_after {
            next.revoke_key_after = Some(requests);
        }
        if let Some(seconds) = update.throttle_secs {
            next.throttled_until =
                (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds));
        }
        Ok(next)
    }
}

/// Instants of the events of the last second, oldest first.
#[derive(Default)]
pub(crate) struct Window {
    instants: VecDeque<Instant>,
}

impl Window {
    /// Forgets events a full window old. `now` never goes backwards: it is
    /// read under the state lock.
    fn expire(&mut self, now: Instant) {
        while let Some(&oldest) = self.instants.front() {
            if now.duration_since(oldest) < WINDOW {
                break;
            }
            self.instants.pop_front();
        }
    }

    /// Events in the window ending at `now`.
    pub(crate) fn count(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.instants.len() as u64
    }

    /// Records an event and returns how many the window ending at it holds.
    /// The largest such count is the exact maximum over all windows, since
    /// a busiest window can always be slid to end on an event.
    pub(crate) fn record(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.instants.push_back(now);
        self.instants.len() as u64
    }

    /// Whole seconds (at least 1) until the oldest event leaves the window.
    pub(crate) fn retry_after_secs(&self, now: Instant) -> u64 {
        let wait = self
            .instants
            .front()
            .map_or(WINDOW, |&oldest| WINDOW.saturating_sub(now - oldest));
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

/// True with probability `p` (validated to lie in 0..=1); draws nothing
/// when `p` is 0.
pub(crate) fn draw(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_maximum_is_exact() {
        let start = Instant::now();
        let mut window = Window::default();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(window.record(at(0)), 1);
        assert_eq!(window.record(at(500)), 2);
        assert_eq!(window.record(at(999)), 3);
        // The event at 0 leaves as the one at 1000 comes: [500, 999, 1000].
        assert_eq!(window.record(at(1_000)), 3);
        assert_eq!(window.count(at(1_600)), 2, "999 and 1000 remain");
        assert_eq!(window.retry_after_secs(at(1_600)), 1);
    }

    #[test]
    fn fault_updates_are_all_or_nothing() {
        let faults = Faults::from_options(&SandboxOptions::default()).expect("defaults are valid");
        let bad = FaultUpdate {
            fail_rate: Some(0.5),
            drop_rate: Some(1.5),
            ..FaultUpdate::default()
        };
        assert!(faults.updated(&bad).is_err());
        let update: FaultUpdate = serde_json::from_str(r#"{"rate_limit": null}"#).expect("parses");
        assert_eq!(update.rate_limit, Some(None));
        let update: FaultUpdate = serde_json::from_str("{}").expect("parses");
        assert_eq!(update.rate_limit, None);
        assert!(serde_json::from_str::<FaultUpdate>(r#"{"failRate": 1}"#).is_err());
    }
}

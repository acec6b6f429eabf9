//! The counters of what the sandbox has seen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Version;

/// What the sandbox has seen since it started or was last reset. Admin
/// routes are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Every API request, whatever its answer.
    pub total_requests: u64,
    /// Answers by route template (see [`routes`](crate::routes)) and
    /// status, whatever the version. Status `0` counts requests whose
    /// connection was cut instead of answered.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Requests by the version they used (`2025-09`, `2024-03`, `2023-12`,
    /// `2021-12`: by the path, never by a header) and route template,
    /// whatever their answer.
    #[serde(default)]
    pub versions: BTreeMap<String, BTreeMap<String, u64>>,
    /// Users created through the API: single creates and batch entries.
    pub creates: u64,
    /// Creates (single or batch entries) refused because the username was
    /// taken, in any letter case, or repeated within the batch.
    pub duplicate_attempts: u64,
    /// Requests answered `429`.
    pub rate_limited: u64,
    /// Requests answered with an injected 5xx.
    pub failed: u64,
    /// Requests applied and then cut without an answer.
    pub dropped: u64,
    /// The most requests admitted past the rate limit within any one-second
    /// sliding window.
    pub max_admitted_per_second: u64,
    /// The most requests received (429s included) within any one-second
    /// sliding window.
    pub max_received_per_second: u64,
    /// Requests naming a user in their path (by id or username) that arrived
    /// while another request for the same user was still in flight: a
    /// client that serialises per user keeps this at 0.
    #[serde(default)]
    pub overlapping_user_requests: u64,
    /// Users deleted through the API while they still had workflow logs:
    /// the logs stay behind, out of reach. An erasure that deletes the logs
    /// first keeps this at 0.
    #[serde(default)]
    pub deleted_with_logs: u64,
}

impl SandboxStats {
    /// Requests to `route` (a [`routes`](crate::routes) template) answered `status`.
    pub fn count(&self, route: &str, status: u16) -> u64 {
        self.requests
            .get(route)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Requests to `route`, whatever their answer.
    pub fn route_total(&self, route: &str) -> u64 {
        self.requests
            .get(route)
            .map(|by_status| by_status.values().sum())
            .unwrap_or(0)
    }

    /// Requests that used `version`, to any route.
    pub fn version_total(&self, version: &str) -> u64 {
        self.versions
            .get(version)
            .map(|by_route| by_route.values().sum())
            .unwrap_or(0)
    }

    /// Requests that used `version` for `route`, whatever their answer.
    pub fn version_count(&self, version: &str, route: &str) -> u64 {
        self.versions
            .get(version)
            .and_then(|by_route| by_route.get(route))
            .copied()
            .unwrap_or(0)
    }

    /// One answer (or cut) of a request to `route` by `version`.
    pub(crate) fn record(&mut self, version: Version, route: &'static str, status: u16) {
        // The maps are keyed by `String` for serde; look up before allocating.
        match self.requests.get_mut(route) {
            Some(by_status) => *by_status.entry(status).or_default() += 1,
            None => {
                self.requests
                    .insert(route.to_owned(), BTreeMap::from([(status, 1)]));
            }
        }
        let by_route = match self.versions.get_mut(version.as_str()) {
            Some(by_route) => by_route,
            None => self
                .versions
                .entry(version.as_str().to_owned())
                .or_default(),
        };
        match by_route.get_mut(route) {
            Some(count) => *count += 1,
            None => {
                by_route.insert(route.to_owned(), 1);
            }
        }
    }
}

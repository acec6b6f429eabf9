//! `user-sync sandbox`: an in-memory simulator of the Embedded Users API
//! (version 2025-09) with faults to inject, for the tests, the benchmarks and
//! offline development.
//!
//! It answers what the contract (`embedded-api.md`) documents, and where the
//! contract is silent it lets the caller choose: the status of a taken
//! username, whether a rename is refused, whether a 429 carries `Retry-After`.
//!
//! Every API request goes through the same steps, in this order:
//!
//! 1. `latency` (a sleep);
//! 2. the rate limit: at most `rate_limit` requests admitted in any sliding
//!    one-second window, `429` beyond (with `Retry-After` unless disabled);
//! 3. `fail_rate`: a `500`, `502` or `503` before anything is done;
//! 4. `Authorization: Bearer <key>` (`401` when missing or wrong);
//! 5. `x-api-version: 2025-09` (`400` when missing or unknown);
//! 6. the route itself;
//! 7. `drop_rate`, for creates, updates and deletes only, whatever their
//!    answer: the change (if any) stays applied and the TCP connection is
//!    closed without an answer, so the client sees a cut connection, not an
//!    HTTP error.
//!
//! The cut is real because the sandbox runs its own accept loop: each
//! connection carries a [`CancellationToken`] in its requests' extensions,
//! and the connection task drops the socket when a handler triggers it.
//!
//! Routes under `/_admin/` need no key, skip every fault and are not
//! counted: `GET stats`, `GET users`, `POST users`, `PUT faults`, `POST reset`.
//!
//! Usernames and full names never appear in messages or logs: a refused
//! create says that the username is taken, not which one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use super::client::MAX_BATCH;
use crate::domain::fingerprint;

/// The only version the sandbox speaks.
const API_VERSION: &str = "2025-09";
/// The width of the rate limit's sliding window, and of the per-second maxima.
const WINDOW: Duration = Duration::from_secs(1);
/// How long in-flight requests may finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The documented lifetime of a user token.
const TOKEN_LIFETIME_SECS: u64 = 30 * 60;
/// The answer to a taken username. It never names the username.
const USERNAME_TAKEN: &str = "A user with this username already exists";

/// Route templates, as keys of [`SandboxStats::requests`]. They carry no
/// user data.
pub mod routes {
    use axum::http::Method;

    pub const CREATE: &str = "POST /users/";
    pub const LIST: &str = "GET /users";
    pub const BATCH: &str = "POST /users/batch";
    pub const GET: &str = "GET /users/{id}";
    pub const UPDATE: &str = "PUT /users/{id}";
    pub const DELETE: &str = "DELETE /users/{id}";
    pub const TOKEN: &str = "GET /users/{id}/token";
    pub const DELETE_LOGS: &str = "DELETE /users/{id}/logs";
    /// Any request that matched no API route (unknown path or method).
    pub const OTHER: &str = "other";

    /// The template of a request, from its method and matched axum path.
    pub(super) fn template(method: &Method, matched: Option<&str>) -> &'static str {
        match (method.as_str(), matched.unwrap_or("")) {
            ("POST", "/users/") => CREATE,
            ("GET", "/users") => LIST,
            ("POST", "/users/batch") => BATCH,
            ("GET", "/users/{id}") => GET,
            ("PUT", "/users/{id}") => UPDATE,
            ("DELETE", "/users/{id}") => DELETE,
            ("GET", "/users/{id}/token") => TOKEN,
            ("DELETE", "/users/{id}/logs") => DELETE_LOGS,
            _ => OTHER,
        }
    }

    /// Routes that change state, and so may be cut after applying it.
    pub(super) fn is_mutating(template: &str) -> bool {
        matches!(template, CREATE | BATCH | UPDATE | DELETE | DELETE_LOGS)
    }
}

// ---------------------------------------------------------------------------
// Options, faults and counters
// ---------------------------------------------------------------------------

/// How a sandbox behaves when it starts. See the module docs for the order
/// in which faults apply.
#[derive(Clone)]
pub struct SandboxOptions {
    /// The key clients must send as `Authorization: Bearer <key>`.
    pub api_key: String,
    /// Requests admitted in any sliding one-second window; beyond, `429`.
    /// `None`: no limit.
    pub rate_limit: Option<u32>,
    /// Whether a `429` carries `Retry-After` (whole seconds, at least 1). The
    /// API documents none, so the client must cope both ways.
    pub retry_after: bool,
    /// Probability of answering `500`, `502` or `503` before doing anything.
    pub fail_rate: f64,
    /// Probability, for creates, updates and deletes, of applying the change
    /// and then cutting the connection without answering.
    pub drop_rate: f64,
    /// A delay before each API request is handled.
    pub latency: Duration,
    /// The status of a taken username: 400, 409 or 422 (undocumented).
    pub duplicate_status: u16,
    /// Refuse (`400`) any `PUT` that changes a username, as one of the API's
    /// guides says it does.
    pub refuse_rename: bool,
    /// Seed of the fault draws and user ids; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            api_key: "sandbox-key".into(),
            rate_limit: None,
            retry_after: true,
            fail_rate: 0.0,
            drop_rate: 0.0,
            latency: Duration::ZERO,
            duplicate_status: 409,
            refuse_rename: false,
            seed: None,
        }
    }
}

impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("api_key", &"<redacted>")
            .field("rate_limit", &self.rate_limit)
            .field("retry_after", &self.retry_after)
            .field("fail_rate", &self.fail_rate)
            .field("drop_rate", &self.drop_rate)
            .field("latency", &self.latency)
            .field("duplicate_status", &self.duplicate_status)
            .field("refuse_rename", &self.refuse_rename)
            .field("seed", &self.seed)
            .finish()
    }
}

/// A change of faults at run time; `None` leaves a setting as it is.
///
/// As JSON (for `PUT /_admin/faults`) the fields keep their Rust names;
/// `"rate_limit": null` removes the limit, an absent field changes nothing.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultUpdate {
    /// A new key: rotation, or revocation of the key clients hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// `Some(None)` removes the limit.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub rate_limit: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_rename: Option<bool>,
}

impl fmt::Debug for FaultUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultUpdate")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("rate_limit", &self.rate_limit)
            .field("retry_after", &self.retry_after)
            .field("fail_rate", &self.fail_rate)
            .field("drop_rate", &self.drop_rate)
            .field("latency_ms", &self.latency_ms)
            .field("duplicate_status", &self.duplicate_status)
            .field("refuse_rename", &self.refuse_rename)
            .finish()
    }
}

/// Deserializes a field that is present (even as `null`) into `Some`, so an
/// absent field (`#[serde(default)]`, `None`) differs from `null`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// What the sandbox has seen since it started or was last reset. Admin
/// routes are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Every API request, whatever its answer.
    pub total_requests: u64,
    /// Answers by route template (see [`routes`]) and status. Status `0`
    /// counts requests whose connection was cut instead of answered.
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
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
}

impl SandboxStats {
    /// Requests to `route` (a [`routes`] template) answered `status`.
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

    fn record(&mut self, route: &'static str, status: u16) {
        // The map is keyed by `String` for serde; look up before allocating.
        match self.requests.get_mut(route) {
            Some(by_status) => *by_status.entry(status).or_default() += 1,
            None => {
                self.requests
                    .insert(route.to_owned(), BTreeMap::from([(status, 1)]));
            }
        }
    }
}

/// A user as the sandbox holds it, in the API's JSON shape.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxUser {
    #[serde(rename = "userId")]
    pub user_id: String,
    /// As given at creation; unique compared case-insensitively.
    pub username: String,
    #[serde(rename = "fullName", default)]
    pub full_name: Option<String>,
}

impl fmt::Debug for SandboxUser {
    // Personal data stays out of `Debug`, as for the domain types.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxUser")
            .field("user_id", &self.user_id)
            .field(
                "username",
                &format_args!("#{}", fingerprint(&self.username)),
            )
            .field("full_name", &self.full_name.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn invalid_input(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn check_probability(name: &str, p: f64) -> io::Result<f64> {
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(invalid_input(format!(
            "{name} must be a probability between 0 and 1, not {p}"
        )))
    }
}

fn check_duplicate_status(status: u16) -> io::Result<StatusCode> {
    match status {
        400 => Ok(StatusCode::BAD_REQUEST),
        409 => Ok(StatusCode::CONFLICT),
        422 => Ok(StatusCode::UNPROCESSABLE_ENTITY),
        other => Err(invalid_input(format!(
            "duplicate_status must be 400, 409 or 422, not {other}"
        ))),
    }
}

fn check_api_key(key: &str) -> io::Result<()> {
    if key.trim().is_empty() {
        return Err(invalid_input("api_key must not be empty".into()));
    }
    Ok(())
}

/// The faults in force, validated. Latency lives apart, in an atomic, so a
/// request can sleep without taking the lock.
#[derive(Clone)]
struct Faults {
    api_key: String,
    rate_limit: Option<u32>,
    retry_after: bool,
    fail_rate: f64,
    drop_rate: f64,
    duplicate_status: StatusCode,
    refuse_rename: bool,
}

impl Faults {
    fn from_options(options: &SandboxOptions) -> io::Result<Self> {
        check_api_key(&options.api_key)?;
        Ok(Self {
            api_key: options.api_key.clone(),
            rate_limit: options.rate_limit,
            retry_after: options.retry_after,
            fail_rate: check_probability("fail_rate", options.fail_rate)?,
            drop_rate: check_probability("drop_rate", options.drop_rate)?,
            duplicate_status: check_duplicate_status(options.duplicate_status)?,
            refuse_rename: options.refuse_rename,
        })
    }

    /// These faults with `update` applied, or an error and no change at all.
    fn updated(&self, update: &FaultUpdate) -> io::Result<Self> {
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
        Ok(next)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// Instants of the events of the last second, oldest first.
#[derive(Default)]
struct Window {
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
    fn count(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.instants.len() as u64
    }

    /// Records an event and returns how many the window ending at it holds.
    /// The largest such count is the exact maximum over all windows, since
    /// a busiest window can always be slid to end on an event.
    fn record(&mut self, now: Instant) -> u64 {
        self.expire(now);
        self.instants.push_back(now);
        self.instants.len() as u64
    }

    /// Whole seconds (at least 1) until the oldest event leaves the window.
    fn retry_after_secs(&self, now: Instant) -> u64 {
        let wait = self
            .instants
            .front()
            .map_or(WINDOW, |&oldest| WINDOW.saturating_sub(now - oldest));
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

struct Stored {
    /// Creation order, so listings are stable.
    seq: u64,
    /// When the create reached the sandbox, for latency benchmarks.
    created: Instant,
    user: SandboxUser,
}

/// The users, by id and by lower-cased username.
#[derive(Default)]
struct Directory {
    by_id: HashMap<String, Stored>,
    /// Lower-cased username to id: uniqueness and lookups ignore case.
    by_username: HashMap<String, String>,
    next_seq: u64,
}

impl Directory {
    fn id_of(&self, username: &str) -> Option<&String> {
        self.by_username.get(&username.to_lowercase())
    }

    /// By id, or else by username in any letter case.
    fn find(&self, id_or_username: &str) -> Option<&SandboxUser> {
        self.by_id
            .get(id_or_username)
            .or_else(|| {
                self.id_of(id_or_username)
                    .and_then(|id| self.by_id.get(id.as_str()))
            })
            .map(|stored| &stored.user)
    }

    /// Inserts a user whose username the caller checked is free.
    fn insert(&mut self, user_id: String, username: &str, full_name: Option<String>) {
        self.by_username
            .insert(username.to_lowercase(), user_id.clone());
        self.by_id.insert(
            user_id.clone(),
            Stored {
                seq: self.next_seq,
                created: Instant::now(),
                user: SandboxUser {
                    user_id,
                    username: username.to_owned(),
                    full_name,
                },
            },
        );
        self.next_seq += 1;
    }

    fn remove(&mut self, user_id: &str) -> bool {
        match self.by_id.remove(user_id) {
            Some(stored) => {
                self.by_username
                    .remove(&stored.user.username.to_lowercase());
                true
            }
            None => false,
        }
    }

    /// Every user, in creation order.
    fn ordered(&self) -> Vec<&SandboxUser> {
        let mut stored: Vec<&Stored> = self.by_id.values().collect();
        stored.sort_unstable_by_key(|s| s.seq);
        stored.into_iter().map(|s| &s.user).collect()
    }
}

/// Why a request was answered before reaching its route.
enum Refusal {
    RateLimited { retry_after: Option<u64> },
    ServerError(StatusCode),
    Unauthorized,
    MissingVersion,
    UnknownVersion,
}

/// What a request presented, read from its headers before taking the lock.
struct Credentials<'a> {
    bearer: Option<&'a str>,
    version: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .and_then(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let version = headers.get("x-api-version").map(|v| v.as_bytes());
        Self { bearer, version }
    }
}

/// Why an update was refused.
enum UpdateRefusal {
    NotFound,
    BlankUsername,
    RenameRefused,
    Taken,
}

/// A username already held by another user.
struct Taken;

struct SandboxState {
    faults: Faults,
    /// Draws of 5xx and drops: seeded, so a run can be replayed.
    fault_rng: StdRng,
    /// User ids and token signatures, apart from the fault draws so that
    /// creating users does not shift the fault sequence.
    id_rng: StdRng,
    users: Directory,
    /// Every user created through the API, as created, deleted ones too:
    /// lets a test prove that no user was ever created twice.
    created: Vec<SandboxUser>,
    stats: SandboxStats,
    received: Window,
    /// Doubles as the rate limiter: a request is admitted while this window
    /// holds fewer than `rate_limit` instants.
    admitted: Window,
    /// Requests in flight per user named in the path (lower-cased).
    in_flight: HashMap<String, u32>,
}

impl SandboxState {
    fn new(faults: Faults, seed: Option<u64>) -> Self {
        let (fault_rng, id_rng) = match seed {
            Some(seed) => (
                StdRng::seed_from_u64(seed),
                StdRng::seed_from_u64(seed ^ 0x05ee_d1d5_u64),
            ),
            None => (StdRng::from_os_rng(), StdRng::from_os_rng()),
        };
        Self {
            faults,
            fault_rng,
            id_rng,
            users: Directory::default(),
            created: Vec::new(),
            stats: SandboxStats::default(),
            received: Window::default(),
            admitted: Window::default(),
            in_flight: HashMap::new(),
        }
    }

    /// Steps 2 to 5 of the module docs, with their counting.
    fn admit(&mut self, route: &'static str, credentials: &Credentials<'_>) -> Result<(), Refusal> {
        let now = Instant::now();
        self.stats.total_requests += 1;
        let received = self.received.record(now);
        self.stats.max_received_per_second = self.stats.max_received_per_second.max(received);
        if let Some(limit) = self.faults.rate_limit
            && self.admitted.count(now) >= u64::from(limit)
        {
            self.stats.rate_limited += 1;
            self.stats.record(route, 429);
            let retry_after = self
                .faults
                .retry_after
                .then(|| self.admitted.retry_after_secs(now));
            return Err(Refusal::RateLimited { retry_after });
        }
        let admitted = self.admitted.record(now);
        self.stats.max_admitted_per_second = self.stats.max_admitted_per_second.max(admitted);

        if draw(&mut self.fault_rng, self.faults.fail_rate) {
            const STATUSES: [StatusCode; 3] = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ];
            let status = STATUSES[self.fault_rng.random_range(0..STATUSES.len())];
            self.stats.failed += 1;
            self.stats.record(route, status.as_u16());
            return Err(Refusal::ServerError(status));
        }
        if credentials.bearer != Some(self.faults.api_key.as_str()) {
            self.stats.record(route, 401);
            return Err(Refusal::Unauthorized);
        }
        match credentials.version {
            Some(v) if v.trim_ascii() == API_VERSION.as_bytes() => Ok(()),
            version => {
                self.stats.record(route, 400);
                Err(match version {
                    None => Refusal::MissingVersion,
                    Some(_) => Refusal::UnknownVersion,
                })
            }
        }
    }

    /// Counts a handled request's answer, and decides whether to cut it
    /// instead of sending it (step 7).
    fn finish(&mut self, route: &'static str, status: u16, can_cut: bool) -> bool {
        let cut = can_cut
            && routes::is_mutating(route)
            && draw(&mut self.fault_rng, self.faults.drop_rate);
        if cut {
            self.stats.dropped += 1;
            self.stats.record(route, 0);
        } else {
            self.stats.record(route, status);
        }
        cut
    }

    fn new_user_id(&mut self) -> String {
        loop {
            let id = uuid_like(&mut self.id_rng);
            if !self.users.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// An API create: counted, and refused when the username is taken.
    fn create(&mut self, username: &str, full_name: Option<String>) -> Result<String, Taken> {
        if self.users.id_of(username).is_some() {
            self.stats.duplicate_attempts += 1;
            return Err(Taken);
        }
        let id = self.new_user_id();
        self.created.push(SandboxUser {
            user_id: id.clone(),
            username: username.to_owned(),
            full_name: full_name.clone(),
        });
        self.users.insert(id.clone(), username, full_name);
        self.stats.creates += 1;
        Ok(id)
    }

    /// A seeded user: not counted; a taken username returns the holder's id.
    fn seed_user(&mut self, username: &str, full_name: Option<String>) -> String {
        if let Some(id) = self.users.id_of(username) {
            return id.clone();
        }
        let id = self.new_user_id();
        self.users.insert(id.clone(), username, full_name);
        id
    }

    fn update(&mut self, user_id: &str, update: WireUpdate) -> Result<&SandboxUser, UpdateRefusal> {
        let Some(current) = self.users.by_id.get(user_id) else {
            return Err(UpdateRefusal::NotFound);
        };
        let username = match update.username {
            None => None,
            Some(Some(username)) if !username.trim().is_empty() => Some(username),
            Some(_) => return Err(UpdateRefusal::BlankUsername),
        };
        if let Some(username) = &username {
            let old_key = current.user.username.to_lowercase();
            let new_key = username.to_lowercase();
            // A change of letter case only is no rename: the name stays the
            // same for uniqueness, and only its spelling changes.
            if new_key != old_key {
                if self.faults.refuse_rename {
                    return Err(UpdateRefusal::RenameRefused);
                }
                if self.users.by_username.contains_key(&new_key) {
                    return Err(UpdateRefusal::Taken);
                }
                self.users.by_username.remove(&old_key);
                self.users.by_username.insert(new_key, user_id.to_owned());
            }
        }
        let Some(stored) = self.users.by_id.get_mut(user_id) else {
            return Err(UpdateRefusal::NotFound);
        };
        if let Some(username) = username {
            stored.user.username = username;
        }
        if let Some(full_name) = update.full_name {
            stored.user.full_name = full_name;
        }
        Ok(&stored.user)
    }

    fn reset_stats(&mut self) {
        self.stats = SandboxStats::default();
        self.received = Window::default();
        self.admitted = Window::default();
    }
}

/// True with probability `p` (validated to lie in 0..=1); draws nothing
/// when `p` is 0.
fn draw(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

/// A random version-4 UUID, as text.
fn uuid_like(rng: &mut StdRng) -> String {
    let bits: u128 = rng.random();
    let bits = (bits & !(0xf << 76)) | (0x4 << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

/// Base64url without padding, for JWT-shaped tokens.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token shaped like the API's (a JWT naming the user, valid 30 minutes),
/// with a random signature: nothing verifies it.
fn user_token(rng: &mut StdRng, user_id: &str) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
        iss: &'static str,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub: user_id,
        iat: now,
        exp: now + TOKEN_LIFETIME_SECS,
        iss: "user-sync-sandbox",
    };
    let signature: [u8; 32] = rng.random();
    format!(
        "{}.{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(&serde_json::to_vec(&claims).unwrap_or_default()),
        base64url(&signature)
    )
}

/// State shared by the handle and the server.
struct Shared {
    state: Mutex<SandboxState>,
    /// `latency`, in nanoseconds.
    latency: AtomicU64,
}

impl Shared {
    /// The state. A handler that panicked cannot have left it half-changed
    /// in a way that matters to a simulator, so poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_update_faults(&self, update: &FaultUpdate) -> io::Result<()> {
        let mut state = self.lock();
        state.faults = state.faults.updated(update)?;
        if let Some(ms) = update.latency_ms {
            self.latency
                .store(nanos(Duration::from_millis(ms)), Ordering::Relaxed);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------

/// A running sandbox. Dropping it stops the server as [`Sandbox::shutdown`]
/// does, without waiting.
pub struct Sandbox {
    addr: SocketAddr,
    /// `addr` as a client reaches it (loopback for a wildcard bind).
    base_url: Url,
    shared: Arc<Shared>,
    /// Stops the accept loop and asks every connection to finish.
    shutdown: CancellationToken,
    /// The accept loop and every connection, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Binds `bind` (port 0 picks a free port) and serves in the background.
    /// Invalid options are an `InvalidInput` error.
    pub async fn start(bind: SocketAddr, options: SandboxOptions) -> io::Result<Sandbox> {
        let faults = Faults::from_options(&options)?;
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        // A wildcard address is reached through the loopback of its family.
        let reachable = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
            }
            _ => addr,
        };
        let base_url = Url::parse(&format!("http://{reachable}"))
            .map_err(|e| io::Error::other(format!("no base URL for {reachable}: {e}")))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(SandboxState::new(faults, options.seed)),
            latency: AtomicU64::new(nanos(options.latency)),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            app(shared.clone()),
            shutdown.clone(),
            tasks.clone(),
        ));
        Ok(Sandbox {
            addr,
            base_url,
            shared,
            shutdown,
            tasks,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/`: the base URL of the API (and of `/_admin/`).
    pub fn base_url(&self) -> Url {
        self.base_url.clone()
    }

    pub fn stats(&self) -> SandboxStats {
        self.shared.lock().stats.clone()
    }

    /// Every user, in creation order.
    pub fn users(&self) -> Vec<SandboxUser> {
        self.shared
            .lock()
            .users
            .ordered()
            .into_iter()
            .cloned()
            .collect()
    }

    /// Every user ever created through the API (single and batch creates,
    /// not seeded users), in creation order and as created: users deleted
    /// or renamed since are included.
    pub fn created(&self) -> Vec<SandboxUser> {
        self.shared.lock().created.clone()
    }

    /// When each current user was created, by username: lets a benchmark
    /// measure from its own clock to the moment a create arrived.
    pub fn creation_times(&self) -> Vec<(String, Instant)> {
        let state = self.shared.lock();
        state
            .users
            .by_id
            .values()
            .map(|stored| (stored.user.username.clone(), stored.created))
            .collect()
    }

    /// Seeds a user that exists in Embedded before the test, and returns its
    /// id. Not counted as a create. If the username is taken (in any letter
    /// case) nothing changes and the holder's id is returned.
    pub fn insert_user(&self, username: &str, full_name: Option<&str>) -> String {
        self.shared
            .lock()
            .seed_user(username, full_name.map(str::to_owned))
    }

    /// Changes faults at run time, such as rotating or revoking the key.
    ///
    /// # Panics
    ///
    /// On an invalid value (see [`Sandbox::start`]): the caller is a test or
    /// a demo passing a constant. Use [`Sandbox::try_update_faults`] for
    /// values from outside.
    pub fn update_faults(&self, update: FaultUpdate) {
        if let Err(e) = self.try_update_faults(update) {
            panic!("invalid fault update: {e}");
        }
    }

    /// Changes faults at run time; an invalid value changes nothing and is
    /// an `InvalidInput` error.
    pub fn try_update_faults(&self, update: FaultUpdate) -> io::Result<()> {
        self.shared.try_update_faults(&update)
    }

    /// Forgets the counters and the per-second windows (the rate limiter's
    /// included); users stay.
    pub fn reset_stats(&self) {
        self.shared.lock().reset_stats();
    }

    /// Stops accepting, lets in-flight requests finish (for at most a few
    /// seconds), and returns once every connection is closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------
// HTTP: routes, the fault gate, handlers
// ---------------------------------------------------------------------------

/// Inserted into every request's extensions: cancelling it makes the
/// connection task drop the socket without writing an answer.
#[derive(Clone)]
struct ConnectionCut(CancellationToken);

fn app(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/users/", post(create_user))
        .route("/users", get(list_users))
        .route("/users/batch", post(create_batch))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/users/{id}/token", get(user_token_route))
        .route("/users/{id}/logs", axum::routing::delete(delete_logs))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(shared.clone(), gate));
    let admin = Router::new()
        .route("/_admin/stats", get(admin_stats))
        .route("/_admin/users", get(admin_users).post(admin_insert_user))
        .route("/_admin/faults", put(admin_faults))
        .route("/_admin/reset", post(admin_reset));
    admin.merge(api).with_state(shared)
}

/// Applies latency, the rate limit, injected 5xx, auth, the version check,
/// and after the route, the drop fault.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let route = routes::template(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let _in_flight = InFlight::enter(&shared, request.uri().path());
    let latency = shared.latency.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_nanos(latency)).await;
    }
    let admitted = shared
        .lock()
        .admit(route, &Credentials::of(request.headers()));
    if let Err(refusal) = admitted {
        return refusal_response(refusal);
    }
    let cut = request.extensions().get::<ConnectionCut>().cloned();
    let response = next.run(request).await;
    let drop_it = shared
        .lock()
        .finish(route, response.status().as_u16(), cut.is_some());
    if let (true, Some(ConnectionCut(token))) = (drop_it, cut) {
        token.cancel();
        // The connection task drops this future with the socket.
        return std::future::pending().await;
    }
    response
}

/// Marks a request for one user as in flight until it is answered or its
/// connection is cut (the future is dropped either way).
struct InFlight {
    shared: Arc<Shared>,
    user: Option<String>,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, path: &str) -> Self {
        let user = path
            .strip_prefix("/users/")
            .and_then(|rest| rest.split('/').next())
            .filter(|user| !user.is_empty() && *user != "batch")
            .map(str::to_ascii_lowercase);
        if let Some(user) = &user {
            let mut state = shared.lock();
            let count = state.in_flight.entry(user.clone()).or_default();
            *count += 1;
            if *count > 1 {
                state.stats.overlapping_user_requests += 1;
            }
        }
        Self {
            shared: shared.clone(),
            user,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(user) = self.user.take() {
            let mut state = self.shared.lock();
            if let Some(count) = state.in_flight.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    state.in_flight.remove(&user);
                }
            }
        }
    }
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(Message { message: text })).into_response()
}

fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "User not found")
}

fn bad_body() -> Response {
    message(
        StatusCode::BAD_REQUEST,
        "The request body is not the JSON this route expects",
    )
}

fn refusal_response(refusal: Refusal) -> Response {
    match refusal {
        Refusal::RateLimited { retry_after } => {
            let mut response = message(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        // What a proxy in front of the API would answer.
        Refusal::ServerError(StatusCode::BAD_GATEWAY) => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        Refusal::ServerError(status) => message(status, "Internal server error"),
        Refusal::Unauthorized => message(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Refusal::MissingVersion => message(
            StatusCode::BAD_REQUEST,
            "Missing x-api-version header: this API speaks version 2025-09",
        ),
        Refusal::UnknownVersion => message(
            StatusCode::BAD_REQUEST,
            "Unsupported x-api-version: this API speaks version 2025-09",
        ),
    }
}

#[derive(Deserialize)]
struct WireNewUser {
    #[serde(default)]
    username: Option<String>,
    #[serde(rename = "fullName", default)]
    full_name: Option<String>,
}

impl WireNewUser {
    /// The username, unless missing or blank.
    fn username(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.trim().is_empty())
    }
}

#[derive(Deserialize)]
struct WireUpdate {
    /// `Some(None)`: `null` was sent.
    #[serde(default, deserialize_with = "present")]
    username: Option<Option<String>>,
    /// `Some(None)` clears the name.
    #[serde(rename = "fullName", default, deserialize_with = "present")]
    full_name: Option<Option<String>>,
}

#[derive(Serialize)]
struct WireCreated<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireSuccess {
    success: bool,
}

async fn create_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(mut user) = serde_json::from_slice::<WireNewUser>(&body) else {
        return bad_body();
    };
    let full_name = user.full_name.take();
    let Some(username) = user.username() else {
        return message(StatusCode::BAD_REQUEST, "username is required");
    };
    let mut state = shared.lock();
    match state.create(username, full_name) {
        Ok(id) => Json(WireCreated { user_id: &id }).into_response(),
        Err(Taken) => message(state.faults.duplicate_status, USERNAME_TAKEN),
    }
}

async fn list_users(State(shared): State<Arc<Shared>>) -> Response {
    #[derive(Serialize)]
    struct List<'a> {
        data: Vec<&'a SandboxUser>,
    }
    let state = shared.lock();
    Json(List {
        data: state.users.ordered(),
    })
    .into_response()
}

async fn create_batch(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Batch {
        users: Vec<WireNewUser>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Invalid {
        Named {
            username: String,
        },
        Unnamed {
            #[serde(rename = "fullName")]
            full_name: &'static str,
        },
    }
    #[derive(Serialize)]
    struct Answer {
        message: &'static str,
        #[serde(rename = "invalidUsers")]
        invalid_users: Vec<Invalid>,
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
        return bad_body();
    };
    if batch.users.is_empty() || batch.users.len() > MAX_BATCH {
        return message(StatusCode::BAD_REQUEST, "A batch holds 1 to 1000 users");
    }
    let mut invalid_users = Vec::new();
    let mut created = 0usize;
    let mut state = shared.lock();
    for mut user in batch.users {
        let full_name = user.full_name.take();
        let Some(username) = user.username() else {
            // The documented shape: the reason where the name would be.
            invalid_users.push(Invalid::Unnamed {
                full_name: "Missing Username",
            });
            continue;
        };
        // Earlier entries are created first, so a name repeated within the
        // batch is taken by the time its second entry comes.
        match state.create(username, full_name) {
            Ok(_) => created += 1,
            Err(Taken) => invalid_users.push(Invalid::Named {
                username: username.to_owned(),
            }),
        }
    }
    drop(state);
    if created == 0 {
        return message(StatusCode::BAD_REQUEST, "No valid users provided");
    }
    Json(Answer {
        message: "success",
        invalid_users,
    })
    .into_response()
}

async fn get_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let state = shared.lock();
    match state.users.find(&id) {
        Some(user) => Json(user).into_response(),
        None => not_found(),
    }
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(update) = serde_json::from_slice::<WireUpdate>(&body) else {
        return bad_body();
    };
    let mut state = shared.lock();
    let duplicate_status = state.faults.duplicate_status;
    match state.update(&id, update) {
        Ok(user) => Json(user).into_response(),
        Err(UpdateRefusal::NotFound) => not_found(),
        Err(UpdateRefusal::BlankUsername) => {
            message(StatusCode::BAD_REQUEST, "username cannot be blank")
        }
        Err(UpdateRefusal::RenameRefused) => message(
            StatusCode::BAD_REQUEST,
            "username cannot be changed after creation",
        ),
        Err(UpdateRefusal::Taken) => message(duplicate_status, USERNAME_TAKEN),
    }
}

async fn delete_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if shared.lock().users.remove(&id) {
        Json(WireSuccess { success: true }).into_response()
    } else {
        not_found()
    }
}

async fn user_token_route(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    #[derive(Serialize)]
    struct Token {
        token: String,
    }
    let mut state = shared.lock();
    if !state.users.by_id.contains_key(&id) {
        return not_found();
    }
    let token = user_token(&mut state.id_rng, &id);
    Json(Token { token }).into_response()
}

async fn delete_logs(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    // The sandbox runs no workflows, so there are no logs to delete.
    if shared.lock().users.by_id.contains_key(&id) {
        Json(WireSuccess { success: true }).into_response()
    } else {
        not_found()
    }
}

async fn unknown_route() -> Response {
    message(StatusCode::NOT_FOUND, "No such route")
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(&shared.lock().stats).into_response()
}

async fn admin_users(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().users.ordered()).into_response()
}

async fn admin_insert_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Seed {
        username: String,
        #[serde(rename = "fullName", default)]
        full_name: Option<String>,
    }
    let Ok(seed) = serde_json::from_slice::<Seed>(&body) else {
        return message(
            StatusCode::BAD_REQUEST,
            r#"expected {"username": "...", "fullName": "..."}"#,
        );
    };
    let id = shared.lock().seed_user(&seed.username, seed.full_name);
    Json(WireCreated { user_id: &id }).into_response()
}

async fn admin_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let update = match serde_json::from_slice::<FaultUpdate>(&body) {
        Ok(update) => update,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("invalid fault update: {e}"),
            );
        }
    };
    match shared.try_update_faults(&update) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn admin_reset(State(shared): State<Arc<Shared>>) -> Response {
    let mut state = shared.lock();
    state.users = Directory::default();
    state.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------
// Serving connections
// ---------------------------------------------------------------------------

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tasks.spawn(serve_connection(stream, app.clone(), shutdown.clone()));
            }
            Err(e) => {
                // Usually out of file descriptors: wait for some to free up.
                tracing::warn!(error = %e, "sandbox: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, app: Router, shutdown: CancellationToken) {
    let cut = CancellationToken::new();
    let service = {
        let cut = ConnectionCut(cut.clone());
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(cut.clone());
            tower::Service::call(&mut app.clone(), request)
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sandbox: connection ended with an error");
            }
            return;
        }
        // Returning drops the connection, and the socket, unanswered.
        () = cut.cancelled() => return,
        () = shutdown.cancelled() => {}
    }
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        _ = connection => {}
        () = cut.cancelled() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {}
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// Options of `user-sync sandbox`.
#[derive(Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub bind: SocketAddr,

    /// API key clients must send as `Authorization: Bearer <KEY>`.
    #[arg(
        long,
        value_name = "KEY",
        env = "SANDBOX_API_KEY",
        hide_env_values = true,
        default_value = "sandbox-key"
    )]
    pub api_key: String,

    /// Admit at most N requests in any sliding one-second window and answer
    /// 429 beyond. No limit when absent.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Answer 429 without a Retry-After header (the API documents none).
    #[arg(long)]
    pub no_retry_after: bool,

    /// Probability (0 to 1) of answering a request 500, 502 or 503 before
    /// doing anything.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fail_rate: f64,

    /// Probability (0 to 1) that a create, update or delete is applied and
    /// its connection then cut without an answer.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub drop_rate: f64,

    /// Delay before each API request is handled, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Status answered for a taken username (the API documents none).
    #[arg(
        long,
        value_name = "CODE",
        default_value = "409",
        value_parser = PossibleValuesParser::new(["400", "409", "422"]).try_map(|s| s.parse::<u16>())
    )]
    pub duplicate_status: u16,

    /// Refuse (400) any update that changes a username, as one of the API's
    /// guides says it does.
    #[arg(long)]
    pub refuse_rename: bool,

    /// Seed for fault draws and user ids, to replay a run.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

impl fmt::Debug for SandboxArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxArgs")
            .field("bind", &self.bind)
            .field("options", &self.options())
            .finish()
    }
}

fn parse_probability(raw: &str) -> Result<f64, String> {
    let p: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("expected a probability between 0 and 1".into())
    }
}

impl SandboxArgs {
    pub fn options(&self) -> SandboxOptions {
        SandboxOptions {
            api_key: self.api_key.clone(),
            rate_limit: self.rate_limit,
            retry_after: !self.no_retry_after,
            fail_rate: self.fail_rate,
            drop_rate: self.drop_rate,
            latency: Duration::from_millis(self.latency_ms),
            duplicate_status: self.duplicate_status,
            refuse_rename: self.refuse_rename,
            seed: self.seed,
        }
    }
}

/// Runs `user-sync sandbox` until Ctrl-C or SIGTERM.
pub async fn serve(args: SandboxArgs) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(args.bind, args.options())
        .await
        .with_context(|| format!("starting the sandbox on {}", args.bind))?;
    tracing::info!(
        addr = %sandbox.addr(),
        base_url = %sandbox.base_url(),
        rate_limit = ?args.rate_limit,
        retry_after = !args.no_retry_after,
        fail_rate = args.fail_rate,
        drop_rate = args.drop_rate,
        latency_ms = args.latency_ms,
        duplicate_status = args.duplicate_status,
        refuse_rename = args.refuse_rename,
        "sandbox listening"
    );
    let signal = stop_signal().await;
    tracing::info!("sandbox stopping");
    sandbox.shutdown().await;
    signal
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("listening for Ctrl-C")
    }
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
    fn base64url_matches_known_values() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(
            base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        );
    }

    #[test]
    fn ids_look_like_uuids() {
        let mut rng = StdRng::seed_from_u64(7);
        let id = uuid_like(&mut rng);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
        assert!(
            matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
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

//! The sandbox's state behind one lock: faults, users, counters, windows,
//! and the steps every API request goes through before and after its route.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::WireUpdate;
use crate::directory::Directory;
use crate::faults::{Faults, Window, draw};
use crate::ids::{IdFormat, IdMint, now_secs};
use crate::options::FaultUpdate;
use crate::routes;
use crate::{SandboxStats, SandboxUser, Version};

/// Workflow log entries a create makes.
const LOG_ENTRIES_PER_CREATE: u32 = 3;

/// Why a request was answered before reaching its route.
pub(crate) enum Refusal {
    RateLimited {
        retry_after: Option<u64>,
    },
    ServerError(StatusCode),
    Unauthorized,
    /// 2025-09 without `x-api-version`.
    MissingVersion,
    /// 2025-09 with another version in `x-api-version`.
    UnknownVersion,
    /// A version in the path, with an `x-api-version` it does not take.
    UnexpectedHeader(Version),
}

/// What a request presented, read from its headers before taking the lock.
pub(crate) struct Credentials<'a> {
    bearer: Option<&'a str>,
    version: Option<&'a [u8]>,
}

impl<'a> Credentials<'a> {
    pub(crate) fn of(headers: &'a HeaderMap) -> Self {
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
pub(crate) enum UpdateRefusal {
    NotFound,
    BlankUsername,
    RenameRefused,
    Taken,
}

/// A username already held by another user.
pub(crate) struct Taken;

pub(crate) struct SandboxState {
    pub(crate) faults: Faults,
    /// Draws of 5xx and drops: seeded, so a run can be replayed.
    fault_rng: StdRng,
    /// User ids and token signatures, apart from the fault draws so that
    /// creating users does not shift the fault sequence.
    pub(crate) id_rng: StdRng,
    ids: IdMint,
    pub(crate) users: Directory,
    /// Every user created through the API, as created, deleted ones too:
    /// lets a test prove that no user was ever created twice.
    pub(crate) created: Vec<SandboxUser>,
    /// Creates refused because the username was taken, per username: lets
    /// a test trace a conflict back to the create that met the holder.
    pub(crate) refused_creates: HashMap<String, u64>,
    pub(crate) stats: SandboxStats,
    /// Workflow log entries per user id: a few are made on every create,
    /// as the product logs a new user's first runs. They outlive their user
    /// (`DELETE /users/{id}` leaves them, as the real API does) and go only
    /// with `DELETE /users/{id}/logs`, while the user still exists.
    pub(crate) workflow_logs: HashMap<String, u32>,
    received: Window,
    /// Doubles as the rate limiter: a request is admitted while this window
    /// holds fewer than `rate_limit` instants.
    admitted: Window,
    /// Requests in flight per user named in the path (lower-cased).
    pub(crate) in_flight: HashMap<String, u32>,
}

/// The key in force once `revoke_key_after` has run out: no client has it.
const REVOKED_KEY: &str = "revoked-by-the-sandbox";

impl SandboxState {
    pub(crate) fn new(faults: Faults, seed: Option<u64>, id_format: IdFormat) -> Self {
        let (fault_rng, mut id_rng) = match seed {
            Some(seed) => (
                StdRng::seed_from_u64(seed),
                StdRng::seed_from_u64(seed ^ 0x05ee_d1d5_u64),
            ),
            None => (StdRng::from_os_rng(), StdRng::from_os_rng()),
        };
        let ids = IdMint::new(id_format, &mut id_rng);
        Self {
            faults,
            fault_rng,
            id_rng,
            ids,
            users: Directory::default(),
            created: Vec::new(),
            refused_creates: HashMap::new(),
            stats: SandboxStats::default(),
            workflow_logs: HashMap::new(),
            received: Window::default(),
            admitted: Window::default(),
            in_flight: HashMap::new(),
        }
    }

    /// Steps 2 to 5 of the crate docs, with their counting, for a request
    /// to `route` of `version`.
    pub(crate) fn admit(
        &mut self,
        version: Version,
        route: &'static str,
        credentials: &Credentials<'_>,
    ) -> Result<(), Refusal> {
        let now = Instant::now();
        self.stats.total_requests += 1;
        let received = self.received.record(now);
        self.stats.max_received_per_second = self.stats.max_received_per_second.max(received);
        if let Some(until) = self.faults.throttled_until.filter(|until| *until > now) {
            self.stats.rate_limited += 1;
            self.stats.record(version, route, 429);
            let left = until - now;
            let retry_after = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(Refusal::RateLimited {
                retry_after: Some(retry_after),
            });
        }
        if let Some(limit) = self.faults.rate_limit
            && self.admitted.count(now) >= u64::from(limit)
        {
            self.stats.rate_limited += 1;
            self.stats.record(version, route, 429);
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
            self.stats.record(version, route, status.as_u16());
            return Err(Refusal::ServerError(status));
        }
        if credentials.bearer != Some(self.faults.api_key.as_str()) {
            self.stats.record(version, route, 401);
            return Err(Refusal::Unauthorized);
        }
        let refusal = match (version.wants_header(), credentials.version) {
            (true, Some(v)) if v.trim_ascii() == version.as_str().as_bytes() => None,
            (true, None) => Some(Refusal::MissingVersion),
            (true, Some(_)) => Some(Refusal::UnknownVersion),
            (false, None) => None,
            (false, Some(_)) => Some(Refusal::UnexpectedHeader(version)),
        };
        match refusal {
            None => {
                if let Some(left) = self.faults.revoke_key_after.as_mut() {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.faults.revoke_key_after = None;
                        self.faults.api_key = REVOKED_KEY.to_owned();
                    }
                }
                Ok(())
            }
            Some(refusal) => {
                self.stats.record(version, route, 400);
                Err(refusal)
            }
        }
    }

    /// Counts a handled request's answer, and decides whether to cut it
    /// instead of sending it (step 7).
    pub(crate) fn finish(
        &mut self,
        version: Version,
        route: &'static str,
        status: u16,
        can_cut: bool,
    ) -> bool {
        let cut = can_cut
            && routes::is_mutating(route)
            && draw(&mut self.fault_rng, self.faults.drop_rate);
        if cut {
            self.stats.dropped += 1;
            self.stats.record(version, route, 0);
        } else {
            self.stats.record(version, route, status);
        }
        cut
    }

    /// A new id for a user created at `created` (seconds since the epoch).
    fn new_user_id(&mut self, created: u64) -> String {
        loop {
            let id = self.ids.mint(&mut self.id_rng, created);
            if !self.users.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// An API create: counted, and refused when the username is taken.
    pub(crate) fn create(
        &mut self,
        username: &str,
        full_name: Option<String>,
    ) -> Result<String, Taken> {
        if self.faults.refuse_creates {
            *self.refused_creates.entry(username.to_owned()).or_default() += 1;
            return Err(Taken);
        }
        if self.users.id_of(username).is_some() {
            self.stats.duplicate_attempts += 1;
            *self.refused_creates.entry(username.to_owned()).or_default() += 1;
            return Err(Taken);
        }
        let id = self.new_user_id(now_secs());
        self.created.push(SandboxUser {
            user_id: id.clone(),
            username: username.to_owned(),
            full_name: full_name.clone(),
        });
        self.users.insert(id.clone(), username, full_name);
        self.workflow_logs
            .insert(id.clone(), LOG_ENTRIES_PER_CREATE);
        self.stats.creates += 1;
        Ok(id)
    }

    /// An API delete of a user: its workflow logs stay behind, counted
    /// when there are any. `false` when there is no such user.
    pub(crate) fn delete(&mut self, user_id: &str) -> bool {
        if !self.users.remove(user_id) {
            return false;
        }
        if self.workflow_logs.get(user_id).is_some_and(|n| *n > 0) {
            self.stats.deleted_with_logs += 1;
        }
        true
    }

    /// An API delete of a user's workflow logs (by id or username): only
    /// an existing user reaches them. `false` when there is no such user.
    pub(crate) fn delete_logs(&mut self, id_or_username: &str) -> bool {
        let Some(user_id) = self.users.find(id_or_username).map(|u| u.user_id.clone()) else {
            return false;
        };
        self.workflow_logs.remove(&user_id);
        true
    }

    /// A seeded user, made `created` (seconds since the epoch; now when
    /// `None`): not counted; a taken username returns the holder's id.
    pub(crate) fn seed_user(
        &mut self,
        username: &str,
        full_name: Option<String>,
        created: Option<u64>,
    ) -> String {
        if let Some(id) = self.users.id_of(username) {
            return id.clone();
        }
        let id = self.new_user_id(created.unwrap_or_else(now_secs));
        self.users.insert(id.clone(), username, full_name);
        id
    }

    pub(crate) fn update(
        &mut self,
        user_id: &str,
        update: WireUpdate,
    ) -> Result<&SandboxUser, UpdateRefusal> {
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

    pub(crate) fn reset_stats(&mut self) {
        self.stats = SandboxStats::default();
        self.received = Window::default();
        self.admitted = Window::default();
    }
}

/// State shared by the handle and the server.
pub(crate) struct Shared {
    pub(crate) state: Mutex<SandboxState>,
    /// `latency`, in nanoseconds.
    pub(crate) latency: AtomicU64,
}

impl Shared {
    /// The state. A handler that panicked cannot have left it half-changed
    /// in a way that matters to a simulator, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SandboxState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn try_update_faults(&self, update: &FaultUpdate) -> io::Result<()> {
        let mut state = self.lock();
        state.faults = state.faults.updated(update)?;
        if let Some(ms) = update.latency_ms {
            self.latency
                .store(nanos(Duration::from_millis(ms)), Ordering::Relaxed);
        }
        Ok(())
    }
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

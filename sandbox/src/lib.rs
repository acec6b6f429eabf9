//! `user-sync sandbox`: an in-memory simulator of the Embedded Users API
//! with faults to inject, for the tests, the benchmarks and offline
//! development.
//!
//! It serves every documented version at once, over one set of users:
//! 2025-09 at the root (`/users...`, `x-api-version: 2025-09` required),
//! 2024-03 and 2023-12 under `/2024-03/` and `/2023-12/` (the same shapes,
//! no header), and Forge under `/forge/2021-12/` (`/user`, `{_id, email,
//! fullName}`, a create with `{name, email}`, a `PATCH` of both fields; no
//! lookup by email, no batch, no logs call). A Forge user's `email` is the
//! other versions' `username`. Each version refuses what its documentation
//! says it needs (see `forge.rs` for Forge's).
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
//! 5. the version: for 2025-09 `x-api-version: 2025-09` (`400` when
//!    missing or another), for the versions in the path no such header
//!    (`400` when sent);
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
//! Faults, the rate limit's one window, the key and the counters are the
//! same for every version; the counters key each request by its call as
//! 2025-09 spells it ([`routes`]) and by the version it used
//! ([`SandboxStats::versions`]).
//!
//! Routes under `/_admin/` need no key, skip every fault and are not
//! counted: `GET stats`, `GET users`, `POST users`, `PUT faults`, `POST reset`.
//! Their writes take `Content-Type: application/json` only (`415`
//! otherwise), so that no web page can post to them across origins; with
//! `admin_token` set (`--admin-token`, `SANDBOX_ADMIN_TOKEN`) every admin
//! route asks for it as a bearer token.
//!
//! Usernames and full names never appear in messages or logs: a refused
//! create says that the username is taken, not which one.
//!
//! # Layout
//!
//! - `lib.rs`: [`Sandbox`], the handle of a running sandbox: start it,
//!   read its users and counters, change its faults, shut it down.
//! - `options.rs`: [`SandboxOptions`] and [`FaultUpdate`], and the checks
//!   of their values.
//! - `faults.rs`: the faults in force, and the sliding one-second window
//!   behind the rate limit and the per-second maxima.
//! - `state.rs`: all that sits behind the one lock, and steps 2 to 5 and 7.
//! - `directory.rs`: the stored users ([`SandboxUser`]).
//! - `stats.rs`: the counters ([`SandboxStats`]).
//! - `ids.rs`: user ids and tokens shaped like the API's.
//! - `gate.rs`: the middleware that takes every API request through the
//!   steps, and the answers to the requests it refuses.
//! - `version.rs`: [`Version`], the versions served and where.
//! - `api.rs`: the axum router, the handlers of 2025-09 and of the versions
//!   in the path, and their JSON shapes.
//! - `forge.rs`: Forge's routes, handlers and shapes.
//! - `routes.rs`: the route templates that key the counters ([`routes`]).
//! - `accept.rs`: the accept loop that can cut a connection.
//! - `cli.rs`: `user-sync sandbox`: [`SandboxArgs`] and [`serve`].

mod accept;
mod api;
mod cli;
mod directory;
mod faults;
mod forge;
mod gate;
mod ids;
mod options;
pub mod routes;
mod state;
mod stats;
mod version;

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

pub use cli::{SandboxArgs, serve};
pub use directory::SandboxUser;
pub use ids::IdFormat;
pub use options::{FaultUpdate, SandboxOptions};
pub use stats::SandboxStats;
pub use version::Version;

use crate::accept::accept_loop;
use crate::api::app;
use crate::faults::Faults;
use crate::state::{SandboxState, Shared, nanos};

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
            state: Mutex::new(SandboxState::new(faults, options.seed, options.id_format)),
            latency: AtomicU64::new(nanos(options.latency)),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(
            listener,
            app(shared.clone(), options.admin_token.clone()),
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

    /// The workflow log entries the sandbox holds for user `user_id`,
    /// whether the user still exists or not.
    pub fn workflow_logs(&self, user_id: &str) -> u32 {
        self.shared
            .lock()
            .workflow_logs
            .get(user_id)
            .copied()
            .unwrap_or(0)
    }

    /// How many creates were refused for a taken username, by username.
    pub fn refused_creates(&self) -> std::collections::HashMap<String, u64> {
        self.shared.lock().refused_creates.clone()
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
            .seed_user(username, full_name.map(str::to_owned), None)
    }

    /// [`Sandbox::insert_user`] for a user made `age` ago: its id (an
    /// ObjectId) carries that creation time, as the API's would.
    pub fn insert_user_made(
        &self,
        username: &str,
        full_name: Option<&str>,
        age: std::time::Duration,
    ) -> String {
        let created = ids::now_secs().saturating_sub(age.as_secs());
        self.shared
            .lock()
            .seed_user(username, full_name.map(str::to_owned), Some(created))
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

//! `user-sync run`: one worker process, assembled.
//!
//! A process runs the dispatcher, the sweeper, sync jobs (at most
//! `worker.concurrency` API calls in flight among them), the auth probe,
//! the deliverer of webhooks (when `webhooks.url` is set), retention's
//! passes and the ops HTTP server (on a database pool of its own), until its
//! shutdown token is cancelled (SIGTERM or
//! Ctrl-C from the command line). Shutdown stops taking work first, then
//! gives the running jobs `worker.shutdown_timeout` to finish. Any number of
//! processes may share one PostgreSQL database and one Redis; on SQLite
//! (queue in the same file, no Redis) one process works on a file, and a
//! second refuses to start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConsoleMode, DatabaseKind, RateLimitScope, Settings};
use crate::domain::EmbeddedUserId;
use crate::embedded::{ApiError, EmbeddedClient, UserRef};
use crate::ops::{self, OpsState};
use crate::outbox::{self, Dispatcher};
use crate::queue::{self, RedisQueue, SqliteQueue, WorkerQueue};
use crate::ratelimit::{self, ApiGate, SharedLimit};
use crate::storage::{
    Database, Deliveries, ErasureRequests, PgStore, ProcessLock, Retention, SqliteStore, Store,
    SyncStore,
};
use crate::sync::SyncContext;
use crate::webhooks::Deliverer;

/// A started worker process.
pub struct Worker {
    /// Where the ops server listens (useful when `http.bind` asked for port 0).
    pub ops_addr: SocketAddr,
    /// The name the process's queue worker registered under.
    pub name: String,
    tasks: JoinSet<()>,
    /// Why the process stopped when a part of it stopped for good.
    failure: Failure,
    /// On SQLite, this process's exclusive right to the file, held until
    /// every part has stopped.
    _file_lock: Option<ProcessLock>,
}

impl Worker {
    /// Connects to everything and starts every part; fails fast, with the
    /// key to fix, when a setting or a connection is wrong.
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let _ = ops::recorder();
        // Settings first: a missing key fails before any connection.
        let api = EmbeddedClient::new(&settings.embedded)?;
        settings.console.token_for(settings.http.bind)?;
        // On SQLite, one process per file (the per-user locks live in it):
        // the file is ours before anything else touches it.
        let file_lock = match settings.database.kind()? {
            DatabaseKind::Sqlite => Some(ProcessLock::acquire(&settings.database)?),
            DatabaseKind::Postgres => None,
        };
        let database = Database::connect(&settings.database, pool_size(settings)).await?;
        // First: behind a pooler in transaction mode, the statements after
        // this one could fail in ways that do not say why.
        database.check_sessions().await?;
        database.check_current().await?;
        database
            .key_fingerprints(settings.fingerprint_key.as_ref())
            .await?;
        // The ops server's routes read through a pool of their own: however
        // many scrapes arrive, the pipeline's connections stay its own.
        let ops_database = Database::connect_apart(
            &settings.database,
            settings.http.database_connections,
            OPS_ACQUIRE_TIMEOUT,
        )
        .await?;
        let mut parts = Parts {
            settings,
            api,
            name: queue::worker_name(),
            tasks: JoinSet::new(),
            failure: Failure::default(),
            shutdown,
            ops_store: ops_database.into_store(),
        };
        // The backend, chosen once: its storage and its queue, then every
        // part is started generically over them.
        let ops_addr = match database {
            Database::Postgres(pool) => {
                let redis = RedisQueue::connect(&settings.redis).await?;
                let gate = parts.gate_beside_redis(&redis).await?;
                parts
                    .start(
                        PgStore::new(pool).with_lease(settings.sweeper.redispatch_after),
                        redis,
                        gate,
                    )
                    .await?
            }
            Database::Sqlite(pool) => {
                anyhow::ensure!(
                    settings.rate_limit.scope == RateLimitScope::Process,
                    "rate_limit.scope = \"global\" shares the limit through Redis, which a SQLite \
                     database does not use: set rate_limit.scope = \"process\" (one process per \
                     SQLite file has the whole limit)"
                );
                let queue = SqliteQueue::connect(&settings.database)?;
                let gate = ApiGate::new(&settings.rate_limit);
                parts.start(SqliteStore::new(pool), queue, gate).await?
            }
        };
        let Parts {
            name,
            tasks,
            failure,
            ..
        } = parts;
        tracing::info!(%ops_addr, worker = %name, concurrency = jobs_in_flight(settings), api_version = %settings.embedded.api_version, "user-sync is running");
        Ok(Self {
            ops_addr,
            name,
            tasks,
            failure,
            _file_lock: file_lock,
        })
    }

    /// Waits until every part has stopped: after the shutdown token, or
    /// after a part stopped for good, which stops the others and is the
    /// `Err` (one line naming the part and why).
    pub async fn stopped(mut self) -> Result<(), String> {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                tracing::error!(%error, "a worker task panicked");
            }
        }
        tracing::info!(worker = %self.name, "user-sync stopped");
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

/// The first part that stopped for good, and why.
type Failure = Arc<std::sync::Mutex<Option<String>>>;

/// What every part of the process is started with, whatever the backend.
struct Parts<'a> {
    settings: &'a Settings,
    api: EmbeddedClient,
    /// The name the process's queue worker registers under.
    name: String,
    tasks: JoinSet<()>,
    failure: Failure,
    shutdown: CancellationToken,
    /// The storage the ops server's routes read (and the console's API
    /// writes) through: a pool apart (`http.database_connections`).
    ops_store: Arc<dyn Store>,
}

impl Parts<'_> {
    /// Runs `part` for the life of the process. A part that ends before
    /// shutdown was asked for (an error it cannot get past, a panic, or an
    /// end) has stopped for good: that is logged with its name and why, and
    /// the whole process stops, so that `run` exits non-zero instead of
    /// running on without it. Transient errors never reach here: each part
    /// retries them itself.
    fn spawn_part<F>(&mut self, part: &'static str, work: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        use futures::FutureExt;
        let shutdown = self.shutdown.clone();
        let failure = self.failure.clone();
        self.tasks.spawn(async move {
            let ended = std::panic::AssertUnwindSafe(work).catch_unwind().await;
            if shutdown.is_cancelled() {
                return;
            }
            let why = match ended {
                Ok(Ok(())) => "it ended".to_owned(),
                Ok(Err(error)) => format!("{error:#}"),
                Err(_) => "it panicked".to_owned(),
            };
            tracing::error!(alert = "part_stopped", part, error = %why, "a part of the worker stopped for good: the process stops");
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| format!("the {part} stopped: {why}"));
            shutdown.cancel();
        });
    }

    /// The gate of a process beside Redis: its own limit, or one limit
    /// shared through Redis by every process (`rate_limit.scope`).
    async fn gate_beside_redis(&mut self, redis: &RedisQueue) -> anyhow::Result<ApiGate> {
        let settings = self.settings;
        Ok(match settings.rate_limit.scope {
            RateLimitScope::Process => ApiGate::new(&settings.rate_limit),
            RateLimitScope::Global => {
                let shared = SharedLimit::new(
                    redis.dedicated_connection(ratelimit::REDIS_TIMEOUT).await?,
                    &settings.redis.namespace,
                    self.name.clone(),
                    ApiGate::shared_params(&settings.rate_limit),
                );
                self.tasks
                    .spawn(shared.clone().keep_membership(self.shutdown.clone()));
                ApiGate::shared(&settings.rate_limit, shared)
            }
        })
    }

    /// Starts the ops server, the dispatcher, the sweeper, the auth probe,
    /// the conflicts' rechecks and the queue's workers on `store` and `queue`; returns where the
    /// ops server listens. The jobs are generic over the store; the rest
    /// of the process reaches it through one trait object.
    async fn start<S, Q>(&mut self, store: S, queue: Q, gate: ApiGate) -> anyhow::Result<SocketAddr>
    where
        S: SyncStore + Store + Deliveries + ErasureRequests + Retention,
        Q: WorkerQueue,
    {
        let settings = self.settings;
        let store = Arc::new(store);
        self.start_webhooks(store.clone()).await?;
        let shutdown = &self.shutdown.clone();
        let gate = Arc::new(gate);
        let handler = queue::Handler::new(SyncContext::new(
            store.clone(),
            self.api.clone(),
            gate.clone(),
            settings.worker.clone(),
            settings.sync.clone(),
        ));
        // The console resolves conflicts with this process's store (on
        // SQLite, the holder of the per-user locks), client and gate.
        let reconciler =
            ops::Reconciler::sharing(store.clone(), self.api.clone(), gate.clone(), settings);
        self.spawn_part(
            "erasure watch",
            unit(ops::watch_erasures(
                store.clone(),
                settings.gdpr,
                shutdown.clone(),
            )),
        );
        self.spawn_part(
            "retention",
            ops::run_retention(
                store.clone(),
                settings.retention,
                self.name.clone(),
                shutdown.clone(),
            ),
        );
        let store: Arc<dyn Store> = store;
        let job_queue = queue::shared(queue.clone());

        let console = match settings.console.token_for(settings.http.bind)? {
            Some(token) => {
                tracing::info!("the operator API and console are served at /api/v1 and /console");
                Some(Arc::new(ops::Console::new(
                    token,
                    self.ops_store.clone(),
                    job_queue.clone(),
                    gate.clone(),
                    Arc::new(reconciler),
                )))
            }
            None => {
                if settings.console.enabled == ConsoleMode::On {
                    tracing::warn!(
                        "console.enabled = \"on\" but no token is set (USER_SYNC_CONSOLE_TOKEN): \
                         the console stays off"
                    );
                }
                None
            }
        };
        let listener = ops::bind(&settings.http).await?;
        let ops_addr = listener.local_addr()?;
        let ops_state = OpsState {
            store: self.ops_store.clone(),
            queue: job_queue.clone(),
            api: Arc::new(ops::ApiCheck::new(
                self.api.clone(),
                gate.clone(),
                settings.http.api_check_interval,
            )),
            console,
        };
        self.spawn_part(
            "ops server",
            ops::serve(listener, ops_state, settings.http.clone(), shutdown.clone()),
        );

        // Work stops being taken at once on shutdown; running jobs get the
        // grace period.
        self.spawn_part(
            "pause follower",
            unit(follow_pause(store.clone(), gate.clone(), shutdown.clone())),
        );
        // Jobs lost while no process ran go again before anything new is
        // pushed.
        outbox::sweep_and_report(store.as_ref(), job_queue.as_ref(), &settings.sweeper).await;
        let dispatcher = Dispatcher::new(
            store.clone(),
            job_queue.clone(),
            settings.dispatcher.clone(),
        )
        .holding_while_paused(gate.clone());
        self.spawn_part("dispatcher", dispatcher.run(shutdown.clone()));
        self.spawn_part(
            "sweeper",
            unit(outbox::run_sweeper(
                store.clone(),
                job_queue.clone(),
                settings.sweeper.clone(),
                shutdown.clone(),
            )),
        );
        self.spawn_part(
            "auth probe",
            unit(probe_auth(
                self.api.clone(),
                gate.clone(),
                settings.worker.auth_retry_interval,
                shutdown.clone(),
            )),
        );
        self.spawn_part(
            "conflict rechecks",
            unit(ops::recheck_conflicts(
                store.clone(),
                self.api.clone(),
                gate.clone(),
                settings.conflicts.recheck_interval,
                shutdown.clone(),
            )),
        );
        let workers = queue::Workers {
            name: self.name.clone(),
            handler,
            concurrency: jobs_in_flight(settings),
            shutdown: shutdown.clone(),
            grace: settings.worker.shutdown_timeout,
        };
        self.spawn_part(
            "queue workers",
            unit(async move { queue.run_workers(&workers).await }),
        );
        Ok(ops_addr)
    }
}

impl Parts<'_> {
    /// Records the deployment's webhook types (none when webhooks are off)
    /// and, when they are on, starts the deliverer.
    async fn start_webhooks(&mut self, deliveries: Arc<dyn Deliveries>) -> anyhow::Result<()> {
        let settings = &self.settings.webhooks;
        deliveries.subscribe(settings.subscribed()).await?;
        let Some(deliverer) = Deliverer::new(deliveries, settings)? else {
            tracing::info!("webhooks are off (webhooks.url is empty)");
            return Ok(());
        };
        let types: Vec<&str> = settings.events.iter().map(|k| k.as_str()).collect();
        tracing::info!(types = %types.join(","), "webhooks are on");
        let shutdown = self.shutdown.clone();
        self.spawn_part("webhook deliverer", unit(deliverer.run(shutdown)));
        Ok(())
    }
}

/// A part that ends without an error of its own.
async fn unit(work: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    work.await;
    Ok(())
}

/// Jobs run at once: 16 users in flight per API call allowed in flight, as
/// a job's users spend most of their time waiting for their statements'
/// round, not on the API (4 jobs of 64 users for 16 calls: 10% more
/// signups/s than 2 in the pipeline bench, 8 no more than 4). At least 2,
/// and never more than `worker.concurrency`, which the pool is sized for.
fn jobs_in_flight(settings: &Settings) -> usize {
    let concurrency = settings.worker.concurrency.max(1);
    (16 * concurrency)
        .div_ceil(settings.dispatcher.users_per_job.max(1))
        .min(concurrency)
        .max(2)
}

/// Connections: one per job slot (never more slots than
/// `worker.concurrency`), plus the dispatcher, its listener, the sweeper and
/// the console's resolutions of conflicts (which need the process's own
/// store). The ops server's routes have a pool of their own.
fn pool_size(settings: &Settings) -> u32 {
    u32::try_from(settings.worker.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(4)
}

/// How long a request of the ops server waits for one of its database
/// connections before it is answered without the figures that needed one.
const OPS_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a process reads the deployment's pause: a pause stops every
/// process's API calls within this (plus a call already under way).
const PAUSE_POLL: Duration = Duration::from_millis(250);

/// Follows the deployment's pause (`user-sync pause`/`resume`, kept in the
/// database) into the gate, which refuses every call while it holds; a
/// database that does not answer leaves the last state as it was.
async fn follow_pause(store: Arc<dyn Store>, gate: Arc<ApiGate>, shutdown: CancellationToken) {
    metrics::gauge!("user_sync_paused").set(0.0);
    loop {
        match store.pause_state().await {
            Ok(pause) => gate.set_operator_paused(pause.is_some()),
            Err(error) => tracing::debug!(%error, "reading the pause failed; it is read again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PAUSE_POLL) => {}
        }
    }
}

/// While the API refuses the key, asks again every `interval` with a
/// harmless read; calls resume when the key is accepted.
async fn probe_auth(
    api: EmbeddedClient,
    gate: Arc<ApiGate>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    // An id no user has: a `404` proves the key is accepted.
    let probe = EmbeddedUserId::parse("user-sync-auth-probe").expect("a non-empty id");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if !gate.auth_paused() {
            continue;
        }
        match api.get_user(UserRef::Id(&probe)).await {
            Ok(_) | Err(ApiError::NotFound) => gate.resume_auth(),
            Err(ApiError::Unauthorized { status }) => {
                tracing::error!(
                    alert = "embedded_api_key_refused",
                    status,
                    "the Embedded API still refuses the API key"
                );
            }
            Err(error) => tracing::warn!(%error, "auth probe inconclusive; it tries again"),
        }
    }
}

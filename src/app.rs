//! `user-sync run`: one worker process, assembled.
//!
//! A process runs the dispatcher, the sweeper, sync jobs (at most
//! `worker.concurrency` API calls in flight among them), the auth probe and
//! the ops HTTP server, until its shutdown token is cancelled (SIGTERM or
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

use crate::config::{DatabaseKind, RateLimitScope, Settings};
use crate::domain::EmbeddedUserId;
use crate::embedded::{ApiError, EmbeddedClient, UserRef};
use crate::ops::http::{self, OpsState};
use crate::outbox::dispatcher::Dispatcher;
use crate::outbox::sweeper;
use crate::queue::{self, JobQueue, RedisQueue, SqliteQueue};
use crate::ratelimit::ApiGate;
use crate::ratelimit::shared::SharedLimit;
use crate::storage::pg::PgStore;
use crate::storage::sqlite::{ProcessLock, SqliteStore};
use crate::storage::{Database, Store, SyncStore};
use crate::sync::job::SyncContext;

/// A started worker process.
pub struct Worker {
    /// Where the ops server listens (useful when `http.bind` asked for port 0).
    pub ops_addr: SocketAddr,
    /// The name the process's queue worker registered under.
    pub name: String,
    tasks: JoinSet<()>,
    /// On SQLite, this process's exclusive right to the file, held until
    /// every part has stopped.
    _file_lock: Option<ProcessLock>,
}

/// The queue the process's jobs come from.
enum Queue {
    Redis(RedisQueue),
    Sqlite(SqliteQueue),
}

impl Worker {
    /// Connects to everything and starts every part; fails fast, with the
    /// key to fix, when a setting or a connection is wrong.
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let _ = crate::ops::metrics::recorder();
        // Settings first: a missing key fails before any connection.
        let api = EmbeddedClient::new(&settings.embedded)?;
        // On SQLite, one process per file (the per-user locks live in it):
        // the file is ours before anything else touches it.
        let file_lock = match settings.database.kind()? {
            DatabaseKind::Sqlite => Some(ProcessLock::acquire(&settings.database)?),
            DatabaseKind::Postgres => None,
        };
        let database = Database::connect(&settings.database, pool_size(settings)).await?;
        database.check_current().await?;
        let name = queue::worker_name();
        let mut tasks = JoinSet::new();
        let (queue, gate) = match &database {
            Database::Postgres(_) => {
                let redis = RedisQueue::connect(&settings.redis).await?;
                let gate = match settings.rate_limit.scope {
                    RateLimitScope::Process => ApiGate::new(&settings.rate_limit),
                    RateLimitScope::Global => {
                        let shared = SharedLimit::new(
                            redis
                                .dedicated_connection(crate::ratelimit::shared::REDIS_TIMEOUT)
                                .await?,
                            &settings.redis.namespace,
                            name.clone(),
                            ApiGate::shared_params(&settings.rate_limit),
                        );
                        tasks.spawn(shared.clone().keep_membership(shutdown.clone()));
                        ApiGate::shared(&settings.rate_limit, shared)
                    }
                };
                (Queue::Redis(redis), gate)
            }
            Database::Sqlite(_) => {
                anyhow::ensure!(
                    settings.rate_limit.scope == RateLimitScope::Process,
                    "rate_limit.scope = \"global\" shares the limit through Redis, which a SQLite \
                     database does not use: set rate_limit.scope = \"process\" (one process per \
                     SQLite file has the whole limit)"
                );
                let queue = SqliteQueue::connect(&settings.database)?;
                (Queue::Sqlite(queue), ApiGate::new(&settings.rate_limit))
            }
        };
        let gate = Arc::new(gate);
        // The backend, chosen once: the jobs are generic over it, the rest
        // of the process reaches it through one trait object.
        let (store, handler) = match database {
            Database::Postgres(pool) => {
                assemble(Arc::new(PgStore::new(pool)), &api, &gate, settings)
            }
            Database::Sqlite(pool) => {
                assemble(Arc::new(SqliteStore::new(pool)), &api, &gate, settings)
            }
        };
        let job_queue: Arc<dyn JobQueue> = match &queue {
            Queue::Redis(redis) => queue::shared(redis.clone()),
            Queue::Sqlite(sqlite) => queue::shared(sqlite.clone()),
        };

        let ops_addr = http::serve(
            settings.http.bind,
            OpsState {
                store: store.clone(),
                queue: job_queue.clone(),
                gate: gate.clone(),
            },
            shutdown.clone(),
        )
        .await?;

        // Work stops being taken at once on shutdown; running jobs get the
        // grace period.
        let dispatcher = Dispatcher::new(
            store.clone(),
            job_queue.clone(),
            settings.dispatcher.clone(),
        );
        let stop = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = dispatcher.run(stop).await {
                tracing::error!(error = %format!("{error:#}"), "the dispatcher stopped");
            }
        });
        tasks.spawn(sweeper::run(
            store.clone(),
            job_queue.clone(),
            settings.sweeper.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(probe_auth(
            api.clone(),
            gate.clone(),
            settings.worker.auth_retry_interval,
            shutdown.clone(),
        ));
        let concurrency = jobs_in_flight(settings);
        let grace = settings.worker.shutdown_timeout;
        let worker_name = name.clone();
        tasks.spawn(async move {
            match queue {
                Queue::Redis(redis) => {
                    redis
                        .run_workers(worker_name, handler, concurrency, shutdown, grace)
                        .await;
                }
                Queue::Sqlite(sqlite) => {
                    sqlite
                        .run_workers(worker_name, handler, concurrency, shutdown, grace)
                        .await;
                }
            }
        });
        tracing::info!(%ops_addr, worker = %name, concurrency, "user-sync is running");
        Ok(Self {
            ops_addr,
            name,
            tasks,
            _file_lock: file_lock,
        })
    }

    /// Waits until every part has stopped (after the shutdown token).
    pub async fn stopped(mut self) {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(error) = joined
                && error.is_panic()
            {
                tracing::error!(%error, "a worker task panicked");
            }
        }
        tracing::info!(worker = %self.name, "user-sync stopped");
    }
}

/// The pipeline's storage as the dispatcher, the sweeper and the ops server
/// reach it, and the queue's handler of sync jobs on it.
fn assemble<S: SyncStore + Store>(
    store: Arc<S>,
    api: &EmbeddedClient,
    gate: &Arc<ApiGate>,
    settings: &Settings,
) -> (Arc<dyn Store>, queue::Handler) {
    let handler = queue::Handler::new(SyncContext::new(
        store.clone(),
        api.clone(),
        gate.clone(),
        settings.worker.clone(),
        settings.sync.clone(),
    ));
    (store, handler)
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
/// the ops server.
fn pool_size(settings: &Settings) -> u32 {
    u32::try_from(settings.worker.concurrency)
        .unwrap_or(u32::MAX)
        .saturating_add(4)
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

//! The job queue between the dispatcher and the sync workers: apalis on
//! Redis.
//!
//! The queue only carries work; PostgreSQL holds the truth. A job is a
//! [`SyncJob`] (ids only), so a flushed or restarted Redis loses nothing the
//! sweeper cannot dispatch again. Workers are woken by the Redis pub/sub
//! message apalis-redis publishes on every push, with the worker heartbeat as
//! the safety net, so an idle worker does not poll.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::{
    BackendFactory, BoxDynError, Data, TaskSink, WorkerBuilder, WorkerBuilderExt, WorkerError,
};
use apalis_core::backend::Vacuum;
use apalis_redis::RedisStorage;
use apalis_redis::factory::RedisStorageFactory;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::config::RedisSettings;
use crate::sync::job::{self, SyncContext, SyncJob};

/// How often a worker proves it is alive; a worker silent for
/// `HEARTBEAT * MISSED_HEARTBEATS` has its jobs handed to the others.
const HEARTBEAT: Duration = Duration::from_secs(5);
const MISSED_HEARTBEATS: usize = 3;

/// Where the dispatcher puts jobs. Behind a trait so the pipeline does not
/// care which queue carries them.
pub trait JobQueue: Send + Sync {
    /// Enqueues all `jobs`, or none on an error.
    fn push(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Whether the queue answers.
    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Jobs waiting to be taken.
    fn depth(&self) -> BoxFuture<'_, anyhow::Result<u64>>;
    /// Drops what finished jobs left behind; returns how many jobs.
    fn vacuum(&self) -> BoxFuture<'_, anyhow::Result<usize>>;
}

/// The Redis queue of one namespace.
#[derive(Clone)]
pub struct RedisQueue {
    client: redis::Client,
    conn: ConnectionManager,
    config: apalis_redis::Config,
}

impl RedisQueue {
    /// Connects; the connection reconnects by itself after a Redis restart.
    pub async fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        use redis::IntoConnectionInfo;
        let info = settings
            .url()
            .expose_secret()
            .into_connection_info()
            .context("redis.url is not a valid Redis URL")?;
        // Workers are woken by pub/sub pushes, which need RESP3.
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(resp3))
            .context("redis.url is not a valid Redis URL")?;
        let conn = ConnectionManager::new(client.clone())
            .await
            .context("cannot connect to Redis (redis.url)")?;
        Ok(Self {
            client,
            conn,
            config: queue_config(&settings.namespace),
        })
    }

    /// A connection of its own to the queue's Redis, for what must not wait
    /// behind the queue's bulk commands (the shared rate limit): answers on
    /// one connection come in order, and a push of 500 jobs or a vacuum
    /// would otherwise hold up every call queued after it.
    pub async fn dedicated_connection(
        &self,
        response_timeout: Duration,
    ) -> anyhow::Result<ConnectionManager> {
        let config =
            redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(response_timeout));
        ConnectionManager::new_with_config(self.client.clone(), config)
            .await
            .context("cannot connect to Redis (redis.url)")
    }

    /// The queue's key prefix in Redis.
    pub fn name(&self) -> &str {
        self.config.queue.as_ref()
    }

    fn storage(&self) -> RedisStorage<SyncJob, ConnectionManager> {
        RedisStorage::new(self.conn.clone()).with_config(self.config.clone())
    }

    /// Runs `concurrency` sync jobs at a time until `shutdown`, then lets the
    /// running ones finish for at most `grace`. A lost Redis connection
    /// restarts the worker (same name, so its own unfinished jobs come back
    /// to it) after a short pause.
    pub async fn run_workers(
        &self,
        name: String,
        ctx: SyncContext,
        concurrency: usize,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let config = self.config.clone().batch_size(concurrency.max(1));
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let factory = match RedisStorageFactory::new(self.client.clone()).await {
                Ok(factory) => factory,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "cannot reach Redis; the worker retries");
                    if pause(&shutdown, failures).await {
                        return;
                    }
                    continue;
                }
            };
            let mut factory = factory;
            let backend =
                match BackendFactory::<SyncJob>::create_with_config(&mut factory, config.clone()) {
                    Ok(backend) => backend,
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, "cannot open the Redis queue; the worker retries");
                        if pause(&shutdown, failures).await {
                            return;
                        }
                        continue;
                    }
                };
            let worker = WorkerBuilder::new(name.as_str())
                .backend(backend)
                .concurrency(concurrency.max(1))
                .data(ctx.clone())
                .build(handle);
            let stop = shutdown.clone();
            let run = worker.run_until(async move {
                stop.cancelled().await;
                Ok::<(), WorkerError>(())
            });
            tokio::pin!(run);
            let outcome = tokio::select! {
                outcome = &mut run => Some(outcome),
                () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => None,
            };
            match outcome {
                None => {
                    tracing::warn!(
                        grace_ms = grace.as_millis() as u64,
                        "jobs still running at the end of the shutdown timeout; their events stay pending and are dispatched again"
                    );
                    return;
                }
                Some(Ok(())) if shutdown.is_cancelled() => return,
                Some(Ok(())) => failures = 0,
                Some(Err(error)) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(%error, "the queue worker stopped; it restarts");
                }
            }
            if pause(&shutdown, failures).await {
                return;
            }
        }
    }
}

impl JobQueue for RedisQueue {
    fn push(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if jobs.is_empty() {
                return Ok(());
            }
            let count = jobs.len();
            let mut storage = self.storage();
            storage
                .push_bulk(jobs)
                .await
                .map_err(|e| anyhow::anyhow!("cannot push jobs to Redis: {e}"))?;
            // apalis-redis 1.0 files every pushed job as scheduled (due now),
            // which wakes no worker; announce them on the channel its
            // workers listen to. A lost message costs one heartbeat of delay.
            let mut conn = self.conn.clone();
            let _: i64 = redis::cmd("PUBLISH")
                .arg(format!(
                    "tasks:{}:available",
                    self.config.active_jobs_list()
                ))
                .arg(count)
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            Ok(())
        })
    }

    fn depth(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (active, scheduled): (u64, u64) = redis::pipe()
                .llen(self.config.active_jobs_list())
                .zcard(self.config.scheduled_jobs_set())
                .query_async(&mut conn)
                .await?;
            Ok(active + scheduled)
        })
    }

    fn vacuum(&self) -> BoxFuture<'_, anyhow::Result<usize>> {
        Box::pin(async move {
            let mut storage = self.storage();
            let removed = storage.vacuum().await?;
            // Only ids of finished jobs remain in the done set: drop them too.
            let mut conn = self.conn.clone();
            let _: () = redis::cmd("DEL")
                .arg(self.config.done_jobs_set())
                .query_async(&mut conn)
                .await?;
            Ok(removed)
        })
    }
}

/// The apalis queue settings for `namespace`.
fn queue_config(namespace: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{namespace}.sync"))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

/// A worker name unique to this process, readable in `CLIENT LIST` and logs.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let nonce: u32 = rand::random();
    format!("user-sync-{host}-{}-{nonce:08x}", std::process::id())
}

/// Waits before a restart; `true` when shutdown came first.
async fn pause(shutdown: &CancellationToken, failures: u32) -> bool {
    let wait = Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)));
    tokio::select! {
        () = shutdown.cancelled() => true,
        () = tokio::time::sleep(wait) => false,
    }
}

/// One job. The job records every outcome in the database itself; an `Err`
/// here means the database failed, and apalis schedules the job again (the
/// sweeper is the backstop). The error text is generic: a database message
/// could quote a value, and job results are stored in Redis.
async fn handle(job: SyncJob, ctx: Data<SyncContext>) -> Result<(), BoxDynError> {
    // apalis polls every job of a worker on one task; a task of its own
    // lets jobs use every runtime thread.
    let ctx: SyncContext = (*ctx).clone();
    let event_id = job.event_id;
    let ran = tokio::spawn(async move { job::run(&ctx, &job).await }).await;
    match ran.unwrap_or_else(|join| Err(anyhow::anyhow!("the job panicked: {join}"))) {
        Ok(()) => Ok(()),
        Err(error) => {
            tracing::warn!(event_id, error = %format!("{error:#}"), "job failed; the event stays pending");
            Err("the job could not reach the database; the event stays pending".into())
        }
    }
}

/// Shares one queue between the dispatcher, the ops server and the workers.
pub fn shared(queue: RedisQueue) -> Arc<dyn JobQueue> {
    Arc::new(queue)
}

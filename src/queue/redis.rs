//! The job queue on Redis (apalis-redis), beside PostgreSQL.
//!
//! Workers are woken by the Redis pub/sub message apalis-redis publishes on
//! every push, with the worker heartbeat as the safety net, so an idle
//! worker does not poll.

use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::{BackendFactory, TaskSink};
use apalis_core::backend::Vacuum;
use apalis_redis::RedisStorage;
use apalis_redis::factory::RedisStorageFactory;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use super::{
    Ended, HEARTBEAT, JobQueue, MISSED_HEARTBEATS, SyncJob, WorkerQueue, Workers, run_sync_worker,
};
use crate::config::RedisSettings;

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
}

impl WorkerQueue for RedisQueue {
    /// A lost Redis connection restarts the worker (same name, so its own
    /// unfinished jobs come back to it) after a short pause.
    async fn run_workers(&self, workers: &Workers) {
        let config = &self.config.clone().batch_size(workers.concurrency.max(1));
        let client = &self.client;
        workers
            .keep_running(move || async move {
                let mut factory = match RedisStorageFactory::new(client.clone()).await {
                    Ok(factory) => factory,
                    Err(error) => return Ended::not_started("cannot reach Redis", error),
                };
                let backend = match BackendFactory::<SyncJob>::create_with_config(
                    &mut factory,
                    config.clone(),
                ) {
                    Ok(backend) => backend,
                    Err(error) => return Ended::not_started("cannot open the Redis queue", error),
                };
                run_sync_worker!(backend, workers)
            })
            .await;
    }
}

impl JobQueue for RedisQueue {
    fn push_some(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
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

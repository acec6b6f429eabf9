//! The job queue on Redis (apalis-redis), beside PostgreSQL.
//!
//! Workers are woken by the Redis pub/sub message apalis-redis publishes on
//! every push, with the worker heartbeat as the safety net, so an idle
//! worker does not poll.

use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::{BackendFactory, TaskSink};
use apalis_redis::RedisStorage;
use apalis_redis::factory::RedisStorageFactory;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use super::{
    Ended, HEARTBEAT, JobQueue, MISSED_HEARTBEATS, QueueLoss, SyncJob, WorkerQueue, Workers,
    run_sync_worker,
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

    /// The key that says which Redis server holds this queue's jobs (its
    /// `run_id`): gone after a flush, another value after a restart or a
    /// failover.
    fn marker_key(&self) -> String {
        format!("{}:server", self.name())
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
            // Not apalis-redis's own vacuum: it drops every job marked
            // `Failed`, and a job that could not reach the database is
            // marked so while it waits to run again. Its id left without
            // its data stops every worker that fetches it.
            let mut conn = self.conn.clone();
            let removed: usize = redis::Script::new(VACUUM)
                .key(self.config.job_data_hash())
                .key(self.config.job_meta_hash())
                .key(self.config.dead_jobs_set())
                .key(self.config.done_jobs_set())
                .invoke_async(&mut conn)
                .await?;
            Ok(removed)
        })
    }

    fn jobs_lost(&self) -> BoxFuture<'_, anyhow::Result<QueueLoss>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            // A server that refuses INFO (some managed ones rename it) is
            // still watched for a flush: its marker is a constant.
            let info: redis::RedisResult<redis::InfoDict> = redis::cmd("INFO")
                .arg("server")
                .query_async(&mut conn)
                .await;
            let server = info
                .ok()
                .and_then(|info| info.get::<String>("run_id"))
                .unwrap_or_else(|| "unknown".to_owned());
            let found: i64 = redis::Script::new(MARK_SERVER)
                .key(self.marker_key())
                .arg(server)
                .invoke_async(&mut conn)
                .await?;
            Ok(match found {
                0 => QueueLoss::None,
                1 => QueueLoss::Emptied,
                _ => QueueLoss::ServerChanged,
            })
        })
    }

    fn holds_no_jobs(&self) -> BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let empty: i64 = redis::Script::new(HOLDS_NO_JOBS)
                .key(self.config.active_jobs_list())
                .key(self.config.scheduled_jobs_set())
                .key(self.config.workers_set())
                .arg(self.config.inflight_jobs_set())
                .invoke_async(&mut conn)
                .await?;
            Ok(empty == 1)
        })
    }
}

/// Drops the data and metadata (KEYS[1], KEYS[2]:<id>) of finished jobs:
/// done, killed, or given up for good (in the dead set, KEYS[3]); then the
/// done set (KEYS[4]), which holds only their ids. A job marked `Failed`
/// that is scheduled to run again stays.
const VACUUM: &str = r"
local removed = 0
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  local meta = KEYS[2] .. ':' .. id
  local status = redis.call('HGET', meta, 'status')
  if status == 'Done' or status == 'Killed' or redis.call('SISMEMBER', KEYS[3], id) == 1 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2] .. ':result', id)
    redis.call('DEL', meta)
    redis.call('SREM', KEYS[3], id)
    removed = removed + 1
  end
end
redis.call('DEL', KEYS[4])
return removed
";

/// Records the server (ARGV[1]) in the marker (KEYS[1]): 0 when it was
/// there already, 1 when the marker was missing, 2 when another server
/// was recorded. Atomic, so one process of many hears of each loss.
const MARK_SERVER: &str = r"
local seen = redis.call('GET', KEYS[1])
if seen == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if seen then return 2 end
return 1
";

/// 1 when apalis-redis holds no job of the queue: none in the active list
/// (KEYS[1]), none scheduled (KEYS[2]) and none in flight with any worker
/// of the workers set (KEYS[3]; their sets are ARGV[1]:<worker>). Atomic:
/// a job moving from one to another is seen in one of them.
const HOLDS_NO_JOBS: &str = r"
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
for _, worker in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  if redis.call('SCARD', ARGV[1] .. ':' .. worker) > 0 then return 0 end
end
return 1
";

/// The apalis queue settings for `namespace`.
fn queue_config(namespace: &str) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(format!("{namespace}.sync"))
        .heartbeat_interval(HEARTBEAT)
        .missed_heartbeats(MISSED_HEARTBEATS)
}

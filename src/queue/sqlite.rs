//! The job queue in the SQLite file of the worker's tables
//! (apalis-sqlite), for single-binary deployments: no Redis.
//!
//! Its tables (`Jobs`, `Workers`) are apalis-sqlite's; their migration
//! bookkeeping is `user_sync_queue_migrations`. Pushes go through a pool
//! whose connections carry SQLite's update hook, so a push wakes the
//! workers of this process at once; the worker heartbeat is the safety net.

use anyhow::Context as _;
use apalis_core::task::builder::TaskBuilder;
use apalis_sqlite::SqliteStorage;
use apalis_sqlite::callback::HookCallbackListener;
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::SqlitePool;

use super::{
    HEARTBEAT, JobQueue, MISSED_HEARTBEATS, SyncJob, WorkerQueue, Workers, run_sync_worker,
};
use crate::config::DatabaseSettings;

/// The queue's name in the `Jobs` table.
const QUEUE: &str = "user_sync.sync";

/// The apalis-sqlite queue of one SQLite file.
#[derive(Clone)]
pub struct SqliteQueue {
    /// Connections with the update hook that wakes this process's workers.
    pool: SqlitePool,
    listener: HookCallbackListener,
    config: apalis_sqlite::Config,
}

impl SqliteQueue {
    /// Opens the queue of the (migrated) file `settings` name.
    pub fn connect(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let (pool, listener) =
            SqliteStorage::connect_with_callback(settings.url()?.expose_secret())
                .context("cannot open the SQLite queue (database.url)")?;
        Ok(Self {
            pool,
            listener,
            config: apalis_sqlite::Config::default()
                .queue(QUEUE)
                .heartbeat_interval(HEARTBEAT)
                .missed_heartbeats(MISSED_HEARTBEATS),
        })
    }
}

impl WorkerQueue for SqliteQueue {
    async fn run_workers(&self, workers: &Workers) {
        let config = &self.config.clone().batch_size(workers.concurrency.max(1));
        workers
            .keep_running(move || async move {
                let backend = SqliteStorage::<SyncJob>::new(&self.pool)
                    .with_config(config.clone())
                    .with_callback(self.listener.clone());
                run_sync_worker!(backend, workers)
            })
            .await;
    }
}

impl JobQueue for SqliteQueue {
    fn push_some(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let tasks = jobs
                .iter()
                .map(|job| Ok(TaskBuilder::new(serde_json::to_vec(job)?).build()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut tx = self.pool.begin().await?;
            apalis_sqlite::queries::push_tasks(&mut *tx, QUEUE, &tasks)
                .await
                .map_err(|e| anyhow::anyhow!("cannot push jobs to the SQLite queue: {e}"))?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn depth(&self) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            let depth: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM Jobs WHERE job_type = ?1 AND status = 'Pending'",
            )
            .bind(QUEUE)
            .fetch_one(&self.pool)
            .await?;
            Ok(u64::try_from(depth).unwrap_or(0))
        })
    }

    fn vacuum(&self) -> BoxFuture<'_, anyhow::Result<usize>> {
        Box::pin(async move {
            // Not apalis-sqlite's own vacuum: it ends with `VACUUM`, which
            // rewrites the whole file, the host's tables included.
            let removed = sqlx::query(
                "DELETE FROM Jobs WHERE job_type = ?1
                   AND (status IN ('Done', 'Killed')
                        OR (status = 'Failed' AND attempts >= max_attempts))",
            )
            .bind(QUEUE)
            .execute(&self.pool)
            .await?
            .rows_affected();
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
    }

    fn holds_no_jobs(&self) -> BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            // What `vacuum` would delete is finished; anything else is
            // waiting, running, or failed with attempts left.
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM Jobs WHERE job_type = ?1
                   AND status NOT IN ('Done', 'Killed')
                   AND NOT (status = 'Failed' AND attempts >= max_attempts))",
            )
            .bind(QUEUE)
            .fetch_one(&self.pool)
            .await?;
            Ok(!held)
        })
    }
}

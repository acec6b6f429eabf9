//! Moves due outbox events into the queue.
//!
//! Claims a batch with `FOR UPDATE SKIP LOCKED` inside a transaction, pushes
//! one job per event, and commits only then: a crash in between leaves the
//! events to dispatch again, and several dispatchers never claim the same
//! event at once. A duplicate push (commit lost after the push) is harmless:
//! the job serialises on the user and finds nothing left to do.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::config::DispatcherSettings;
use crate::queue::JobQueue;
use crate::store::events;
use crate::sync::job::SyncJob;

/// The channel the outbox trigger notifies.
pub const CHANNEL: &str = "user_sync_events";

pub struct Dispatcher {
    pool: PgPool,
    queue: Arc<dyn JobQueue>,
    settings: DispatcherSettings,
}

impl Dispatcher {
    pub fn new(pool: PgPool, queue: Arc<dyn JobQueue>, settings: DispatcherSettings) -> Self {
        Self {
            pool,
            queue,
            settings,
        }
    }

    /// Dispatches one batch; returns how many events went to the queue.
    pub async fn dispatch_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let claimed = events::claim_due(&mut tx, self.settings.batch_size).await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let jobs: Vec<SyncJob> = claimed
            .into_iter()
            .map(|c| SyncJob {
                event_id: c.id,
                host_user_id: c.host_user_id,
            })
            .collect();
        let count = jobs.len();
        // On a push failure the transaction rolls back: nothing is marked.
        self.queue.push(jobs).await?;
        tx.commit().await?;
        metrics::counter!("user_sync_events_dispatched_total").increment(count as u64);
        Ok(count)
    }

    /// Dispatches until `shutdown`: at once on a NOTIFY, when a snoozed
    /// event falls due, and every `poll_interval` as a safety net.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            match self.dispatch_once().await {
                Ok(n) if n == self.settings.batch_size as usize => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %format!("{error:#}"), "dispatch failed; retrying");
                    let wait = Duration::from_millis(200u64.saturating_mul(1 << failures.min(6)));
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            }
            let wait = match events::next_due_in(&self.pool).await {
                Ok(Some(due)) => due.min(self.settings.poll_interval),
                _ => self.settings.poll_interval,
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                notified = listener.recv() => {
                    if let Err(error) = notified {
                        tracing::warn!(%error, "outbox listener interrupted; it reconnects");
                    }
                    // Drain the notifications already there: one batch serves all.
                    while listener.next_buffered().is_some() {}
                }
                () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
    }
}

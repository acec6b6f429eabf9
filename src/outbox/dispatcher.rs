//! Moves due outbox events into the queue.
//!
//! The storage claims a batch; the dispatcher packs it into jobs, pushes
//! them to the queue, and only then confirms the claim: a crash in between
//! leaves the events to dispatch again, a failed push hands them back, and
//! several dispatchers never claim the same event at once. A duplicate
//! push (commit lost after the push) is harmless: the job serialises on the
//! user and finds nothing left to do.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::DispatcherSettings;
use crate::queue::{JobEvent, JobQueue, SyncJob};
use crate::ratelimit::ApiGate;
use crate::storage::{Outbox, pause_after_failure};

/// How often a paused dispatcher looks whether the pause is over.
const PAUSED_POLL: Duration = Duration::from_millis(100);

pub struct Dispatcher {
    outbox: Arc<dyn Outbox>,
    queue: Arc<dyn JobQueue>,
    settings: DispatcherSettings,
    /// While an operator's pause holds this gate, nothing is dispatched:
    /// events stay pending in the outbox.
    gate: Option<Arc<ApiGate>>,
}

impl Dispatcher {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        queue: Arc<dyn JobQueue>,
        settings: DispatcherSettings,
    ) -> Self {
        Self {
            outbox,
            queue,
            settings,
            gate: None,
        }
    }

    /// Holds dispatching back while an operator has paused `gate`.
    pub fn holding_while_paused(mut self, gate: Arc<ApiGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn paused(&self) -> bool {
        self.gate
            .as_ref()
            .is_some_and(|gate| gate.operator_paused())
    }

    /// Dispatches one batch; returns how many events went to the queue.
    pub async fn dispatch_once(&self) -> anyhow::Result<usize> {
        Ok(self.dispatch_round().await?.0)
    }

    /// Dispatches one batch; returns how many events went to the queue,
    /// and whether more may be due at once (the claim was full).
    async fn dispatch_round(&self) -> anyhow::Result<(usize, bool)> {
        let claim = self.outbox.claim_due(self.settings.batch_size).await?;
        let count = claim.events().len();
        let more = count == self.settings.batch_size as usize || claim.stopped_at_limit();
        if count == 0 {
            claim.confirm().await?;
            return Ok((0, more));
        }
        let events = claim
            .events()
            .iter()
            .map(|c| JobEvent {
                event_id: c.id,
                host_user_id: c.host_user_id.clone(),
            })
            .collect();
        let jobs = SyncJob::pack(events, self.settings.users_per_job);
        if let Err(error) = self.queue.push(jobs).await {
            if let Err(abandon) = claim.abandon().await {
                // Left claimed: the sweeper hands the events back later.
                tracing::warn!(error = %abandon, "could not hand back a batch the queue refused");
            }
            return Err(error);
        }
        claim.confirm().await?;
        metrics::counter!("user_sync_events_dispatched_total").increment(count as u64);
        Ok((count, more))
    }

    /// Dispatches until `shutdown`: at once on a wake-up from the store
    /// (NOTIFY on PostgreSQL), when a snoozed event falls due, and every
    /// `poll_interval` as a safety net.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut wake_ups = self.outbox.wake_ups().await?;
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if self.paused() {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(PAUSED_POLL) => continue,
                }
            }
            match self.dispatch_round().await {
                Ok((_, true)) => {
                    failures = 0;
                    continue;
                }
                Ok(_) => failures = 0,
                Err(error) => {
                    let what = "dispatch failed; retrying";
                    if pause_after_failure(error, &mut failures, &shutdown, what).await? {
                        return Ok(());
                    }
                    continue;
                }
            }
            let wait = match self.outbox.next_due_in().await {
                Ok(Some(due)) => due.min(self.settings.poll_interval),
                _ => self.settings.poll_interval,
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = wake_ups.next() => {}
                () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
    }
}

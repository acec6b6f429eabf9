//! `--mode single`: each user to create becomes a `signup` outbox event,
//! carried out by the pipeline's own job ([`crate::sync::SyncContext`]) in
//! this process: the same claim, create, lost-answer confirmation and
//! conflict handling as a signup.
//!
//! The events are written as already dispatched, so the dispatcher of a
//! `user-sync run` beside leaves them to the backfill; if the backfill dies
//! before finishing one, the sweeper dispatches it again to `run` later
//! (after `sweeper.redispatch_after_ms`).

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;

use crate::domain::HostUserId;
use crate::queue::{JobEvent, SyncJob};
use crate::storage::BackfillTables;

use super::Run;
use super::db::BackfillDb;

/// Passes over snoozed events before giving up on them.
const MAX_RETRY_PASSES: usize = 200;
/// The longest wait for a snoozed event to come due.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

impl<D: BackfillDb> Run<D> {
    /// Runs the jobs of `events`, `worker.concurrency` at a time, and counts
    /// how each ended. Snoozed ones are kept for [`Self::retry_snoozed`].
    pub(super) async fn run_jobs(&mut self, events: Vec<(i64, HostUserId)>) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let jobs = &self.jobs;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(events.iter())
            .map(|(id, host)| async move {
                let job = SyncJob {
                    events: vec![JobEvent {
                        event_id: *id,
                        host_user_id: Some(host.as_str().to_owned()),
                    }],
                };
                jobs.run(job).await
            })
            .buffer_unordered(self.api.worker.concurrency.max(1))
            .collect()
            .await;
        for result in results {
            result?;
        }
        self.count_outcomes(events).await
    }

    async fn count_outcomes(&mut self, events: Vec<(i64, HostUserId)>) -> anyhow::Result<()> {
        let ids: Vec<i64> = events.iter().map(|(id, _)| *id).collect();
        let states = self.db.tables().event_states(&ids).await?;
        for (id, state, _) in states {
            match state.as_str() {
                "applied" => self.summary.created += 1,
                "superseded" => self.summary.in_sync += 1,
                "conflict" => self.summary.conflicts += 1,
                "pending" => {
                    if let Some((_, host)) = events.iter().find(|(e, _)| *e == id) {
                        self.snoozed.push((id, host.clone()));
                    }
                }
                _ => {
                    self.summary.failed += 1;
                    tracing::warn!(event_id = id, state, "backfill create failed");
                }
            }
        }
        self.progress.update(&self.summary, "creating");
        Ok(())
    }

    /// Runs snoozed jobs again as they come due, until none is left.
    pub(super) async fn retry_snoozed(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_RETRY_PASSES {
            if self.snoozed.is_empty() || self.cancel.is_cancelled() {
                break;
            }
            let snoozed = std::mem::take(&mut self.snoozed);
            let ids: Vec<i64> = snoozed.iter().map(|(id, _)| *id).collect();
            let states = self.db.tables().event_states(&ids).await?;
            let now = Utc::now();
            let due_at = states
                .iter()
                .filter(|(_, state, _)| state == "pending")
                .map(|(_, _, at)| *at)
                .min()
                .unwrap_or(now);
            let wait = (due_at - now)
                .to_std()
                .unwrap_or_default()
                .min(MAX_RETRY_WAIT);
            tokio::time::sleep(wait).await;
            self.run_jobs(snoozed).await?;
        }
        self.summary.unresolved += self.snoozed.len() as u64;
        Ok(())
    }
}

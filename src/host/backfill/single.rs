//! `--mode single`: each user to create becomes a `signup` outbox event,
//! carried out by the pipeline's own job ([`crate::sync::job::run`]) in
//! this process: the same claim, create, lost-answer confirmation and
//! conflict handling as a signup.
//!
//! The events are written as already dispatched, so the dispatcher of a
//! `user-sync run` beside leaves them to the backfill; if the backfill dies
//! before finishing one, the sweeper dispatches it again to `run` later
//! (after `sweeper.redispatch_after_ms`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::PgConnection;

use crate::domain::{FullName, HostUserId, Profile};
use crate::queue::{JobEvent, SyncJob};

use super::Run;

/// Passes over snoozed events before giving up on them.
const MAX_RETRY_PASSES: usize = 200;
/// The longest wait for a snoozed event to come due.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Writes one `signup` event per user to create, as the host app would,
/// but already marked dispatched. Returns (event id, host user).
pub(super) async fn record_signups(
    conn: &mut PgConnection,
    creates: &[(&HostUserId, &Profile, bool)],
) -> sqlx::Result<Vec<(i64, HostUserId)>> {
    if creates.is_empty() {
        return Ok(Vec::new());
    }
    let hosts: Vec<&str> = creates.iter().map(|c| c.0.as_str()).collect();
    let emails: Vec<&str> = creates.iter().map(|c| c.1.username.as_str()).collect();
    let names: Vec<Option<&str>> = creates
        .iter()
        .map(|c| c.1.full_name.as_ref().map(FullName::as_str))
        .collect();
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name, dispatched_at)
         SELECT h, 'signup', e, n, now() FROM unnest($1::text[], $2::text[], $3::text[])
             AS t(h, e, n)
         RETURNING id, host_user_id",
    )
    .bind(&hosts)
    .bind(&emails)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, host)| Some((id, HostUserId::parse(&host).ok()?)))
        .collect())
}

/// The state of some events, and when a pending one comes due.
pub(super) async fn states(
    conn: &mut PgConnection,
    ids: &[i64],
) -> sqlx::Result<Vec<(i64, String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT id, state, available_at FROM user_sync.events WHERE id = ANY($1::bigint[])",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

impl Run {
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
        let states = self.db.event_states(&ids).await?;
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
            let states = self.db.event_states(&ids).await?;
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

//! Retention's passes (`[retention]`): every process of `user-sync run`
//! looks now and then whether the deployment's pass is due and, when it
//! claims it, deletes what has aged past its period, a small batch at a
//! time, with a pause between batches. One process runs each pass (a lease
//! in the database, renewed by each batch); should two ever overlap, they
//! only skip each other's rows.
//!
//! The events' sweep starts where the last pass ended (every event that
//! finished before was looked at), and from the oldest event once a day:
//! a row kept then (a user's newest event, an open conflict's) may go once
//! a newer event or a resolution came.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionSettings;
use crate::domain::EventState;
use crate::storage::{Cursor, PassEnd, Retention, Sweep, pause_after_failure};

/// Rows looked at per batch.
pub const BATCH: u32 = 500;
/// The pause between two batches: the database serves everyone else in
/// between (on SQLite, the host's writers take the file's one write lock).
const PAUSE: Duration = Duration::from_millis(50);
/// How long a claimed pass is this process's without a batch renewing it.
const LEASE: Duration = Duration::from_secs(300);
/// The longest wait between two looks whether a pass is due.
const LOOK_EVERY: Duration = Duration::from_secs(60);
/// Delivered webhooks are kept this long (to answer "was it sent?").
const KEEP_DELIVERED: TimeDelta = TimeDelta::days(7);
/// Abandoned webhooks are kept this long, for `webhooks --redeliver`.
const KEEP_ABANDONED: TimeDelta = TimeDelta::days(30);

/// What one pass removed, table by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub events: u64,
    pub conflicts: u64,
    pub erasures: u64,
    pub webhooks: u64,
}

/// How a pass went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// None was due, or another process holds it.
    NotDue,
    /// Done; the next one is due after `retention.interval_ms`.
    Done(Removed),
    /// Cut short (shutdown, or the lease was lost): the rest is left to the
    /// next pass, from where this one started.
    CutShort(Removed),
}

/// Runs the deployment's retention passes as they fall due, until
/// `shutdown`. Transient errors (the database away) are retried with
/// backoff; the worker's tables gone stops it for good.
pub async fn run_retention(
    store: Arc<dyn Retention>,
    settings: RetentionSettings,
    holder: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let look_every = settings.interval.min(LOOK_EVERY);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(look_every) => {}
        }
        match run_pass(store.as_ref(), &settings, &holder, &shutdown).await {
            Ok(_) => failures = 0,
            Err(error) => {
                let what = "a retention pass failed; it is tried again";
                if pause_after_failure(error, &mut failures, &shutdown, what).await? {
                    return Ok(());
                }
            }
        }
    }
}

/// Runs the deployment's pass if it is due and no other process holds it.
pub async fn run_pass(
    store: &dyn Retention,
    settings: &RetentionSettings,
    holder: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<PassOutcome> {
    let Some(pass) = store.claim_pass(holder, LEASE).await? else {
        return Ok(PassOutcome::NotDue);
    };
    let ago = |period: Duration| {
        TimeDelta::from_std(period)
            .ok()
            .and_then(|period| pass.now.checked_sub_signed(period))
            .unwrap_or(DateTime::UNIX_EPOCH)
    };
    let mut sweeper = Sweeper {
        store,
        holder,
        shutdown,
        removed: Removed::default(),
    };
    let events_before = settings.events.map(ago);
    let mut sweeps = Vec::new();
    if let Some(before) = events_before {
        let from = pass.floor.map_or_else(Cursor::start, Cursor::from);
        sweeps.extend(
            EventState::ALL
                .into_iter()
                .map(|state| (Sweep::Events { state, before }, from)),
        );
    }
    if let Some(before) = settings.conflicts.map(ago) {
        sweeps.push((Sweep::Conflicts { before }, Cursor::start()));
    }
    if let Some(before) = settings.erasures.map(ago) {
        sweeps.push((Sweep::Erasures { before }, Cursor::start()));
    }
    sweeps.push((
        Sweep::Deliveries {
            delivered: pass.now - KEEP_DELIVERED,
            abandoned: pass.now - KEEP_ABANDONED,
        },
        Cursor::start(),
    ));
    for (sweep, from) in sweeps {
        if !sweeper.sweep(sweep, from).await? {
            log_removed(sweeper.removed, "a retention pass was cut short");
            return Ok(PassOutcome::CutShort(sweeper.removed));
        }
    }
    store
        .end_pass(
            holder,
            PassEnd {
                floor: events_before,
                full_from: pass.floor.is_none().then_some(pass.now),
                next_in: settings.interval,
            },
        )
        .await?;
    log_removed(sweeper.removed, "a retention pass ended");
    Ok(PassOutcome::Done(sweeper.removed))
}

fn log_removed(removed: Removed, message: &'static str) {
    if removed == Removed::default() {
        tracing::debug!(message);
    } else {
        tracing::info!(
            events = removed.events,
            conflicts = removed.conflicts,
            erasures = removed.erasures,
            webhooks = removed.webhooks,
            message
        );
    }
}

/// One pass's batches.
struct Sweeper<'a> {
    store: &'a dyn Retention,
    holder: &'a str,
    shutdown: &'a CancellationToken,
    removed: Removed,
}

impl Sweeper<'_> {
    /// Sweeps one table from `from` to its end, a batch at a time; `false`
    /// when the pass must stop (shutdown, or another process took it).
    async fn sweep(&mut self, sweep: Sweep, from: Cursor) -> anyhow::Result<bool> {
        let mut after = from;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(false);
            }
            let swept = self
                .store
                .sweep(self.holder, LEASE, sweep, after, BATCH)
                .await?;
            self.count(sweep, swept.removed);
            if !swept.lease_held {
                tracing::warn!("the retention pass's lease ran out and another process took it");
                return Ok(false);
            }
            if swept.looked < BATCH as usize {
                return Ok(true);
            }
            after = swept.next;
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(PAUSE) => {}
            }
        }
    }

    fn count(&mut self, sweep: Sweep, removed: u64) {
        let (table, total) = match sweep {
            Sweep::Events { .. } => ("events", &mut self.removed.events),
            Sweep::Conflicts { .. } => ("conflicts", &mut self.removed.conflicts),
            Sweep::Erasures { .. } => ("erasures", &mut self.removed.erasures),
            Sweep::Deliveries { .. } => ("webhooks", &mut self.removed.webhooks),
        };
        *total += removed;
        if removed > 0 {
            metrics::counter!("user_sync_retention_removed_total", "table" => table)
                .increment(removed);
        }
    }
}

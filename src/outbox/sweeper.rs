//! Re-dispatches events whose job was lost.
//!
//! The database is the truth and the queue only carries work: when Redis
//! is flushed, restarts empty or fails over, or a job vanishes some other
//! way, the event is still pending in the outbox with its `dispatched_at`.
//! The sweeper clears that mark, and the dispatcher pushes the event again.
//! A job that a killed worker held is not the sweeper's: the queue hands it
//! to another worker once the dead one misses its heartbeats.
//!
//! Every `sweeper.interval` (5 s by default) each process looks, cheaply:
//! - whether the queue lost its jobs since any process last looked (a
//!   marker in Redis naming its server): then every pending event
//!   dispatched before now goes again, at once;
//! - whether the queue holds no job at all: then an event dispatched more
//!   than [`UNQUEUED_AFTER`] ago and still pending has no job anywhere, and
//!   goes again;
//! - and, as the last net, events dispatched more than
//!   `sweeper.redispatch_after` ago (5 min) go again whatever the queue says.
//!
//! An event dispatched twice is harmless: its second job serialises on the
//! user and finds nothing left to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::SweeperSettings;
use crate::queue::{JobQueue, QueueLoss};
use crate::storage::Outbox;

/// How long an event dispatched while the queue held no job at all may
/// have been on its way into the queue (the claim's time is taken before
/// its push).
pub const UNQUEUED_AFTER: Duration = Duration::from_secs(10);

/// How often finished jobs are cleared out of the queue.
const VACUUM_EVERY: Duration = Duration::from_secs(60);

/// Why a sweep sent events again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swept {
    /// Nothing was due again.
    Nothing,
    /// The queue lost its jobs: every dispatched event went again.
    QueueLost(QueueLoss, u64),
    /// The queue held no job while events waited on one.
    NotQueued(u64),
    /// Dispatched longer ago than `sweeper.redispatch_after`.
    TimedOut(u64),
}

/// Every `sweeper.interval`: re-dispatches lost events; every minute,
/// clears finished jobs out of the queue. The process sweeps once before
/// it starts dispatching ([`sweep_and_report`]), so this starts with a wait.
pub async fn run(
    outbox: Arc<dyn Outbox>,
    queue: Arc<dyn JobQueue>,
    settings: SweeperSettings,
    shutdown: CancellationToken,
) {
    let mut vacuumed = Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
        sweep_and_report(outbox.as_ref(), queue.as_ref(), &settings).await;
        if vacuumed.elapsed() >= VACUUM_EVERY {
            vacuumed = Instant::now();
            if let Err(error) = queue.vacuum().await {
                tracing::warn!(error = %format!("{error:#}"), "queue clean-up failed; next sweep retries");
            }
        }
    }
}

/// One sweep, logged. Before its dispatcher starts, a process sweeps once
/// this way: jobs lost while no process ran (Redis restarted empty, say)
/// go again at once, and what the new dispatcher pushes is not taken for
/// lost by its own first sweep.
pub async fn sweep_and_report(
    outbox: &dyn Outbox,
    queue: &dyn JobQueue,
    settings: &SweeperSettings,
) {
    match sweep_once(outbox, queue, settings.redispatch_after).await {
        Ok(Swept::Nothing) => {}
        Ok(Swept::QueueLost(loss, count)) => tracing::warn!(
            count,
            cause = ?loss,
            "the queue lost its jobs (Redis flushed, restarted or failed over); re-dispatching every event in flight"
        ),
        Ok(Swept::NotQueued(count)) => tracing::warn!(
            count,
            "re-dispatching events whose job is nowhere in the queue"
        ),
        Ok(Swept::TimedOut(count)) => tracing::warn!(
            count,
            redispatch_after_ms = settings.redispatch_after.as_millis() as u64,
            "re-dispatching events dispatched long ago and still pending"
        ),
        Err(error) => {
            tracing::warn!(error = %format!("{error:#}"), "sweep failed; next sweep retries")
        }
    }
}

/// One sweep (see the module's doc). A queue that does not answer leaves
/// only the last net.
pub async fn sweep_once(
    outbox: &dyn Outbox,
    queue: &dyn JobQueue,
    redispatch_after: Duration,
) -> anyhow::Result<Swept> {
    let loss = queue.jobs_lost().await.unwrap_or_else(|error| {
        tracing::debug!(error = %format!("{error:#}"), "cannot ask the queue whether it lost its jobs");
        QueueLoss::None
    });
    if loss != QueueLoss::None {
        // A first look at a new queue finds no marker either, and nothing
        // in flight: that is no loss.
        let count = redispatch(outbox, Duration::ZERO, "queue_lost").await?;
        return Ok(if count == 0 {
            Swept::Nothing
        } else {
            Swept::QueueLost(loss, count)
        });
    }
    // Read before the outbox: an event dispatched before this look and
    // still pending after it had no job in the queue at the look.
    if queue.holds_no_jobs().await.unwrap_or(false) {
        let after = UNQUEUED_AFTER.min(redispatch_after);
        let count = redispatch(outbox, after, "not_queued").await?;
        return Ok(if count == 0 {
            Swept::Nothing
        } else {
            Swept::NotQueued(count)
        });
    }
    let count = redispatch(outbox, redispatch_after, "timed_out").await?;
    Ok(if count == 0 {
        Swept::Nothing
    } else {
        Swept::TimedOut(count)
    })
}

async fn redispatch(outbox: &dyn Outbox, after: Duration, why: &'static str) -> sqlx::Result<u64> {
    let count = outbox.sweep_stale(after).await?;
    metrics::counter!("user_sync_events_redispatched_total", "why" => why).increment(count);
    Ok(count)
}

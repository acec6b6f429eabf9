//! Re-dispatches events whose job was lost.
//!
//! The database is the truth and the queue only carries work: when Redis
//! restarts or is flushed, or a job vanishes with its worker, the event is
//! still pending in the outbox with an old `dispatched_at`. The sweeper
//! clears it, and the dispatcher pushes the event again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::SweeperSettings;
use crate::queue::JobQueue;
use crate::storage::Outbox;

/// Every `sweeper.interval`: re-dispatches lost events and clears finished
/// jobs out of the queue.
pub async fn run(
    outbox: Arc<dyn Outbox>,
    queue: Arc<dyn JobQueue>,
    settings: SweeperSettings,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.interval) => {}
        }
        match sweep_once(outbox.as_ref(), settings.redispatch_after).await {
            Ok(0) => {}
            Ok(count) => tracing::warn!(count, "re-dispatching events whose job was lost"),
            Err(error) => tracing::warn!(%error, "sweep failed; next sweep retries"),
        }
        if let Err(error) = queue.vacuum().await {
            tracing::warn!(error = %format!("{error:#}"), "queue clean-up failed; next sweep retries");
        }
    }
}

pub async fn sweep_once(outbox: &dyn Outbox, redispatch_after: Duration) -> sqlx::Result<u64> {
    let count = outbox.sweep_stale(redispatch_after).await?;
    metrics::counter!("user_sync_events_redispatched_total").increment(count);
    Ok(count)
}

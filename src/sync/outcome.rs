//! How a job's step ends for its event, and the one place that records it.
//!
//! Every step of the job returns an [`Outcome`]; [`record`] writes its row
//! state, counts it and logs it. A step whose own write already ended the
//! event (a user synced with its event applied, an erasure recorded, in one
//! statement each) says so with `ended`, and `record` only counts and logs.

use std::time::Duration;

use crate::domain::{ConflictReason, EventKind, EventState, HostUserId};
use crate::storage::{Ending, OutboxEvent, Snooze, UserSession};

/// How a step of a job ended for its event. Each has one row state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out, or nothing needed doing. `ended` when the step's own
    /// write already ended the event `applied`.
    Applied { ended: bool },
    /// A newer event of the user was acted on: every pending event of the
    /// user older than `by` (this one among them) ends `superseded`.
    Superseded { by: i64 },
    /// Ended in a conflict, reported by the step.
    Conflict(ConflictReason),
    /// Given up for good: the API refused it, or it ran out of attempts.
    Failed(String),
    /// Refused before any call: the event itself is unusable.
    Invalid(String),
    /// Back to the outbox, to be dispatched again after `after`;
    /// `counts_attempt` when it used up one of `worker.max_attempts`.
    Snoozed {
        after: Duration,
        counts_attempt: bool,
        reason: String,
    },
}

/// Records `outcome` for `event` of `host`: its row state, its metrics and
/// its log line.
pub async fn record(
    session: &mut impl UserSession,
    host: &HostUserId,
    event: &OutboxEvent,
    outcome: &Outcome,
) -> sqlx::Result<()> {
    let kind = kind_label(event);
    match outcome {
        Outcome::Applied { ended } => {
            if !ended {
                session
                    .finish(ending(event, EventState::Applied, None))
                    .await?;
            }
            count(kind, EventState::Applied);
        }
        Outcome::Superseded { by } => supersede_older(session, *by).await?,
        Outcome::Conflict(reason) => {
            let reason = Some(reason.as_str());
            session
                .finish(ending(event, EventState::Conflict, reason))
                .await?;
            count(kind, EventState::Conflict);
        }
        Outcome::Failed(reason) => {
            session
                .finish(ending(event, EventState::Failed, Some(reason)))
                .await?;
            count(kind, EventState::Failed);
            tracing::warn!(event_id = event.id, host_user_id = %host, reason, "event failed");
        }
        Outcome::Invalid(reason) => {
            session
                .finish(ending(event, EventState::Invalid, Some(reason)))
                .await?;
            count(kind, EventState::Invalid);
            tracing::warn!(event_id = event.id, host_user_id = %host, %reason, "invalid event");
        }
        Outcome::Snoozed {
            after,
            counts_attempt,
            reason,
        } => {
            let snooze = Snooze {
                id: event.id,
                delay: *after,
                failed: *counts_attempt,
                reason: Some(reason),
            };
            session.snooze(snooze).await?;
            metrics::counter!("user_sync_events_snoozed_total").increment(1);
            tracing::debug!(event_id = event.id, delay_ms = after.as_millis() as u64, %reason, "event snoozed");
        }
    }
    Ok(())
}

/// Ends every pending event of the session's user older than `by`,
/// counted.
pub async fn supersede_older(session: &mut impl UserSession, by: i64) -> sqlx::Result<()> {
    let count = session.supersede_older(by).await?;
    if count > 0 {
        metrics::counter!("user_sync_events_total", "kind" => "any", "outcome" => "superseded")
            .increment(count);
    }
    Ok(())
}

/// `event` ends in `state`, for `reason` when it did not apply.
fn ending<'a>(event: &OutboxEvent, state: EventState, reason: Option<&'a str>) -> Ending<'a> {
    Ending {
        id: event.id,
        state,
        reason,
    }
}

/// Counts an event that could not even name its host user.
pub fn count_invalid_without_host() {
    count("unknown", EventState::Invalid);
}

fn count(kind: &'static str, state: EventState) {
    metrics::counter!("user_sync_events_total", "kind" => kind, "outcome" => state.as_str())
        .increment(1);
}

fn kind_label(event: &OutboxEvent) -> &'static str {
    event
        .kind
        .as_deref()
        .and_then(EventKind::parse)
        .map_or("unknown", EventKind::as_str)
}

//! A username the job cannot have for its user: the conflict is reported
//! once (counted and logged with ids and a fingerprint only), and the event
//! ends in it.

use crate::domain::{ConflictReason, EmbeddedUserId, HostUserId, UserState, Username};
use crate::embedded::EmbeddedUser;
use crate::storage::{NewConflict, OutboxEvent, UserSession};
use crate::sync::Outcome;

/// `username` belongs to an Embedded user the worker did not create for
/// `host`: release the claim and report the conflict. When another host
/// user has claimed it since this job looked (users of one job work at
/// once), that user holds it: the conflict is with them.
pub(super) async fn taken_in_embedded(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    holder: &EmbeddedUser,
    event: &OutboxEvent,
) -> anyhow::Result<Outcome> {
    if let Some(holder) = session.holder_of(username).await? {
        return taken_by_host_user(session, host, username, &holder, event).await;
    }
    session
        .mark_without_user(UserState::Conflict, event.id)
        .await?;
    let conflict = NewConflict {
        host,
        username,
        reason: ConflictReason::TakenInEmbedded,
        holder_host_user_id: None,
        holder_embedded_user_id: Some(&holder.user_id),
        event_id: Some(event.id),
    };
    in_conflict(session, &conflict).await
}

pub(super) async fn taken_by_host_user(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    holder: &HostUserId,
    event: &OutboxEvent,
) -> anyhow::Result<Outcome> {
    let conflict = NewConflict {
        host,
        username,
        reason: ConflictReason::TakenByHostUser,
        holder_host_user_id: Some(holder),
        holder_embedded_user_id: None,
        event_id: Some(event.id),
    };
    in_conflict(session, &conflict).await
}

/// Reports `conflict` (once); the event ends in it.
pub(super) async fn in_conflict(
    session: &mut impl UserSession,
    conflict: &NewConflict<'_>,
) -> anyhow::Result<Outcome> {
    if session.report_conflict(conflict).await? {
        reported(conflict);
    }
    Ok(Outcome::Conflict(conflict.reason))
}

/// Counts and logs a newly reported conflict (ids and a fingerprint of the
/// username only). The backfill reports through here too.
pub(crate) fn reported(conflict: &NewConflict<'_>) {
    metrics::counter!("user_sync_conflicts_total", "reason" => conflict.reason.as_str())
        .increment(1);
    tracing::warn!(
        host_user_id = %conflict.host,
        username_fingerprint = %conflict.username.fingerprint(),
        reason = conflict.reason.as_str(),
        holder_host_user_id = conflict.holder_host_user_id.map(HostUserId::as_str),
        holder_embedded_user_id = conflict.holder_embedded_user_id.map(EmbeddedUserId::as_str),
        "username conflict reported"
    );
}

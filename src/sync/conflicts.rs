//! A username the job cannot have for its user: the conflict is reported
//! once (counted and logged with ids and a fingerprint only), and the event
//! ends in it.

use std::time::Duration;

use crate::domain::{ConflictReason, EmbeddedUserId, HostUserId, Provenance, UserState, Username};
use crate::embedded::EmbeddedUser;
use crate::storage::{HolderClaim, NewConflict, OutboxEvent, UserSession};
use crate::sync::Outcome;

/// `username` belongs to an Embedded user the worker did not create for
/// `host`: release the claim and report the conflict. When another host
/// user has claimed it since this job looked (users of one job work at
/// once) and holds it, the conflict is with them; a claim of theirs still
/// in flight will meet the same Embedded user, so it is not. When that
/// Embedded user is mapped to another host user, the conflict is with them
/// too: one Embedded user is never offered to two host users.
pub(super) async fn taken_in_embedded(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    holder: &EmbeddedUser,
    event: &OutboxEvent,
) -> anyhow::Result<Outcome> {
    if let Some(holder) = session.holder_of(username).await?
        && session.holder_claim(&holder, username).await? == HolderClaim::Held
    {
        return taken_by_host_user(session, host, username, &holder, event).await;
    }
    // The Embedded user is another host user's, under another username in
    // its row (renamed outside the worker, or by a rename whose outcome
    // was lost): the conflict is with that host user.
    if let Some(other) = session.mapped_elsewhere(&holder.user_id).await? {
        session
            .mark_without_user(UserState::Conflict, event.id)
            .await?;
        let conflict = NewConflict {
            host,
            username,
            reason: ConflictReason::TakenByHostUser,
            holder_host_user_id: Some(&other),
            holder_embedded_user_id: Some(&holder.user_id),
            event_id: Some(event.id),
        };
        return in_conflict(session, &conflict).await;
    }
    let reason = ConflictReason::TakenInEmbedded;
    held_in_embedded(session, host, username, &holder.user_id, event, reason).await
}

/// A user found under the username of a create whose answer was lost, and
/// not proven to be that create's: the claim goes, and an operator decides
/// (`unconfirmed_create`). Never adopted, so never deleted on closure.
pub(super) async fn unconfirmed_create(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    found: &EmbeddedUser,
    event: &OutboxEvent,
    provenance: Provenance,
) -> anyhow::Result<Outcome> {
    tracing::warn!(event_id = event.id, host_user_id = %host, embedded_user_id = %found.user_id, provenance = provenance.as_str(), "the user found after a lost create answer is not proven the worker's own");
    let reason = ConflictReason::UnconfirmedCreate;
    held_in_embedded(session, host, username, &found.user_id, event, reason).await
}

/// Releases the claim of `host` and reports `username` held in Embedded by
/// `holder`, for `reason`.
async fn held_in_embedded(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    holder: &EmbeddedUserId,
    event: &OutboxEvent,
    reason: ConflictReason,
) -> anyhow::Result<Outcome> {
    session
        .mark_without_user(UserState::Conflict, event.id)
        .await?;
    let conflict = NewConflict {
        host,
        username,
        reason,
        holder_host_user_id: None,
        holder_embedded_user_id: Some(holder),
        event_id: Some(event.id),
    };
    in_conflict(session, &conflict).await
}

/// How soon an event whose username another host user is creating comes
/// back: that create's outcome is usually known within a round trip.
const CLAIM_SETTLING: Duration = Duration::from_millis(200);

/// `username` is claimed or held by `holder`, another host user: a conflict
/// with them, if they still hold it. A create of theirs still in flight may
/// yet be refused (the username taken in Embedded) and the name not theirs;
/// a holder read with the event may have let go since. Either way the
/// event comes back shortly, without using an attempt, and looks again.
pub(super) async fn held_by_host_user(
    session: &mut impl UserSession,
    host: &HostUserId,
    username: &Username,
    holder: &HostUserId,
    event: &OutboxEvent,
) -> anyhow::Result<Outcome> {
    let after = match session.holder_claim(holder, username).await? {
        HolderClaim::Held => {
            return taken_by_host_user(session, host, username, holder, event).await;
        }
        HolderClaim::Gone => CLAIM_SETTLING,
        // Back once that create's event has had its turn.
        HolderClaim::InFlight(due) => {
            (due - chrono::Utc::now()).to_std().unwrap_or_default() + CLAIM_SETTLING
        }
    };
    Ok(Outcome::Snoozed {
        after,
        counts_attempt: false,
        reason: format!("waiting for host user {holder}'s hold on this username to settle"),
    })
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

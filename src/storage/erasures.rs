//! `user_sync.erasures` and `user_sync.erasure_steps`: the proof of
//! deletion, and the steps of an erasure under way. The SQL is each
//! backend's (`pg/erasures.rs`, `sqlite/erasures.rs`).
//!
//! An erasure deletes the user's workflow logs, then the user. Before each
//! call its intent is recorded, durably, in the steps row of the host user;
//! the answer is recorded after. So a retry knows what was sent before it:
//! logs already deleted are not deleted again (a crash between the calls
//! resumes at the second), and a `404` to a user delete the worker had
//! already sent is the worker's own delete, recorded `deleted`, not
//! `already_absent`.

use chrono::{DateTime, Utc};

/// What an erasure under way has done to one Embedded user so far. Steps
/// taken on another Embedded user (one deleted outside and created again
/// since) do not count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErasureSteps {
    /// The logs delete was answered (200 or 404).
    pub logs_deleted: bool,
    /// A user delete was sent, and may have gone through.
    pub user_delete_sent: bool,
}

/// One step of an erasure, recorded before or after its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureStep {
    /// About to send `DELETE /users/{id}/logs`.
    SendingLogsDelete,
    /// The logs delete was answered 200 or 404.
    LogsDeleted,
    /// About to send `DELETE /users/{id}`.
    SendingUserDelete,
    /// The user delete recorded by [`Self::SendingUserDelete`] was not sent
    /// after all, or was refused before anything was done (the gate, 429,
    /// 401): the intent is taken back, so that a later `404` is not read as
    /// the worker's own delete.
    UserDeleteNotSent,
}

impl ErasureStep {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendingLogsDelete => "sending_logs_delete",
            Self::LogsDeleted => "logs_deleted",
            Self::SendingUserDelete => "sending_user_delete",
            Self::UserDeleteNotSent => "user_delete_not_sent",
        }
    }
}

/// An erasure request not complete yet: a closure not applied (pending, or
/// failed for good and owed still), with no newer event of its user that
/// would replace it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct PendingErasure {
    pub host_user_id: String,
    /// The closure event.
    pub event_id: i64,
    /// `pending` or `failed`.
    pub state: String,
    /// The closure's `occurred_at`.
    pub requested_at: DateTime<Utc>,
    /// The Embedded user the worker maps the host user to, if any.
    pub embedded_user_id: Option<String>,
    pub logs_deleted_at: Option<DateTime<Utc>>,
    /// Why its last attempt did not complete, if it was told.
    pub reason: Option<String>,
}

impl PendingErasure {
    /// How long it has waited, at `now`.
    pub fn age(&self, now: DateTime<Utc>) -> std::time::Duration {
        (now - self.requested_at).to_std().unwrap_or_default()
    }
}

/// Which erasures a listing shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasureFilter {
    /// Records completed, or requests made, at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// One host user's only.
    pub host_user_id: Option<String>,
}

/// What filing an erasure request for one host user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filed {
    /// A closure was written to the outbox: this event.
    New(i64),
    /// A closure of the user was pending already (from the host, or filed
    /// before): that event carries this request too, and its time stands.
    Pending(i64),
    /// The user was erased already and nothing happened since: the closure
    /// that erased it (its record is the proof).
    AlreadyErased(i64),
}

impl Filed {
    /// The closure event that answers the request.
    pub fn event_id(self) -> i64 {
        match self {
            Self::New(id) | Self::Pending(id) | Self::AlreadyErased(id) => id,
        }
    }

    /// Decides, from the newest event of the user (kind, state, id) and its
    /// row's state, whether a closure must be written (`None`) or one
    /// already answers the request.
    pub fn from_newest(
        newest: Option<(&str, &str, i64)>,
        user_state: Option<&str>,
    ) -> Option<Self> {
        match (newest, user_state) {
            (Some(("account_closure", "pending", id)), _) => Some(Self::Pending(id)),
            (Some(("account_closure", "applied", id)), Some("erased")) => {
                Some(Self::AlreadyErased(id))
            }
            _ => None,
        }
    }
}

/// The newest event of a host user, and its row's state: what decides
/// whether an erasure request needs a closure of its own.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Newest {
    pub kind: Option<String>,
    pub state: String,
    pub id: i64,
    pub user_state: Option<String>,
}

impl Newest {
    /// The closure that answers the request already, if one does (a user
    /// with no event at all needs a closure).
    pub(crate) fn answer(&self) -> Option<Filed> {
        let newest = (
            self.kind.as_deref().unwrap_or(""),
            self.state.as_str(),
            self.id,
        );
        Filed::from_newest(Some(newest), self.user_state.as_deref())
    }
}

/// Erasure requests and their proof: `user-sync erase`, `user-sync
/// erasures`, and the deadline's watch.
pub trait ErasureRequests: Send + Sync {
    /// Files an erasure request for each of `hosts`, as the host app would
    /// (an `account_closure` in the outbox), unless one answers it already
    /// (see [`Filed`]). One result per host, in order.
    fn request_erasures<'a>(
        &'a self,
        hosts: &'a [crate::domain::HostUserId],
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Vec<Filed>>>;
    /// The proof: completed erasures as `filter` says, oldest completion
    /// first.
    fn erasure_records<'a>(
        &'a self,
        filter: &'a ErasureFilter,
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Vec<crate::domain::ErasureRow>>>;
    /// The requests not complete yet, as `filter` says, oldest first.
    fn pending_erasures<'a>(
        &'a self,
        filter: &'a ErasureFilter,
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Vec<PendingErasure>>>;
    /// The pending requests older than `after` not alerted within `every`,
    /// each marked alerted now: every process shares one schedule, so each
    /// request is alerted once per `every`.
    fn claim_overdue<'a>(
        &'a self,
        after: std::time::Duration,
        every: std::time::Duration,
    ) -> futures::future::BoxFuture<'a, sqlx::Result<Vec<PendingErasure>>>;
}

/// How many requests are pending, and the age of the oldest in seconds:
/// what `status` and `/metrics` show.
pub(super) async fn pending_summary(store: &dyn ErasureRequests) -> sqlx::Result<(i64, f64)> {
    let pending = store.pending_erasures(&ErasureFilter::default()).await?;
    let now = Utc::now();
    let oldest = pending
        .iter()
        .map(|p| p.age(now).as_secs_f64())
        .fold(0.0, f64::max);
    Ok((i64::try_from(pending.len()).unwrap_or(i64::MAX), oldest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reuses_a_pending_closure_and_proves_a_past_erasure() {
        assert_eq!(
            Filed::from_newest(Some(("account_closure", "pending", 7)), Some("synced")),
            Some(Filed::Pending(7))
        );
        assert_eq!(
            Filed::from_newest(Some(("account_closure", "applied", 7)), Some("erased")),
            Some(Filed::AlreadyErased(7))
        );
        for (newest, state) in [
            (None, None),
            (Some(("signup", "applied", 7)), Some("synced")),
            (Some(("signup", "pending", 7)), Some("erased")),
            (Some(("account_closure", "failed", 7)), Some("synced")),
            (Some(("account_closure", "superseded", 7)), Some("erased")),
        ] {
            assert_eq!(Filed::from_newest(newest, state), None, "{newest:?}");
        }
    }
}

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

//! The states rows move through, as the tables spell them: an event's kind
//! and end, a user row's state, a conflict's reason, an erasure's outcome.
//! Each is an enum here and a string only at the table's edge.

/// The kinds of the outbox contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Signup,
    ProfileChange,
    AccountClosure,
}

impl EventKind {
    /// Every kind, in the contract's order.
    pub const ALL: [Self; 3] = [Self::Signup, Self::ProfileChange, Self::AccountClosure];

    /// The kind an outbox row names (surrounding blanks ignored), if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text.trim())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::ProfileChange => "profile_change",
            Self::AccountClosure => "account_closure",
        }
    }

    /// `signup, profile_change, account_closure`, for messages.
    pub fn list() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// How an event ended. Each has one row state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// Carried out (or nothing needed doing).
    Applied,
    /// A newer event of the same user was applied instead.
    Superseded,
    /// Ended in a reported conflict.
    Conflict,
    /// Refused by the API as invalid, or out of attempts.
    Failed,
    /// Refused before any call: bad kind, id, email or name.
    Invalid,
}

impl EventState {
    /// Every state an event can end in.
    pub const ALL: [Self; 5] = [
        Self::Applied,
        Self::Superseded,
        Self::Conflict,
        Self::Failed,
        Self::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Superseded => "superseded",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
            Self::Invalid => "invalid",
        }
    }
}

/// The state of a `user_sync.users` row: what the worker knows of the host
/// user's Embedded user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    /// A create was claimed (the username is held) and its answer is not
    /// known yet.
    Creating,
    /// The Embedded user exists, as the row says.
    Synced,
    /// No Embedded user: the last attempt failed.
    Failed,
    /// No Embedded user: the username is someone else's.
    Conflict,
    /// No Embedded user: a create was claimed and is known never to have
    /// been made.
    NotCreated,
    /// The user was erased; the row keeps ids only.
    Erased,
}

impl UserState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Synced => "synced",
            Self::Failed => "failed",
            Self::Conflict => "conflict",
            Self::NotCreated => "not_created",
            Self::Erased => "erased",
        }
    }

    /// The state a row names, if the worker knows it.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Creating,
            Self::Synced,
            Self::Failed,
            Self::Conflict,
            Self::NotCreated,
            Self::Erased,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// Why a username could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// Another host user holds the username.
    TakenByHostUser,
    /// An Embedded user the worker did not create holds it.
    TakenInEmbedded,
    /// The API refused to change the username.
    RenameRefused,
    /// A create's answer was lost, and the user then found under the
    /// username cannot be proven to be that create's (see `Provenance`):
    /// an operator decides whether to adopt it.
    UnconfirmedCreate,
}

impl ConflictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TakenByHostUser => "taken_by_host_user",
            Self::TakenInEmbedded => "taken_in_embedded",
            Self::RenameRefused => "rename_refused",
            Self::UnconfirmedCreate => "unconfirmed_create",
        }
    }

    pub const ALL: [Self; 4] = [
        Self::TakenByHostUser,
        Self::TakenInEmbedded,
        Self::RenameRefused,
        Self::UnconfirmedCreate,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether an Embedded user outside the worker's mappings holds the
    /// username: the worker looks it up again now and then
    /// (`conflicts.recheck_interval_ms`), and an operator may adopt that
    /// user for a host user that has none.
    pub fn held_in_embedded(self) -> bool {
        !matches!(self, Self::TakenByHostUser)
    }
}

/// How a conflict was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// An operator linked the host user to the Embedded user holding the
    /// username.
    Adopted,
    /// An operator freed the username or fixed the host's data, and the
    /// retried event synced the user.
    Retried,
    /// An operator chose to leave the host user without an Embedded user
    /// under this username.
    Ignored,
    /// Its cause went away (the holder let the username go, or the user's
    /// email changed) and the user synced.
    Moot,
}

impl Resolution {
    pub const ALL: [Self; 4] = [Self::Adopted, Self::Retried, Self::Ignored, Self::Moot];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adopted => "adopted",
            Self::Retried => "retried",
            Self::Ignored => "ignored",
            Self::Moot => "moot",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// What `resolved_by` says when the worker resolved a conflict itself.
pub const RESOLVED_BY_WORKER: &str = "worker";

/// A kind of webhook the worker sends the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookKind {
    ConflictOpened,
    ConflictResolved,
    ErasureCompleted,
    EventFailed,
}

impl WebhookKind {
    pub const ALL: [Self; 4] = [
        Self::ConflictOpened,
        Self::ConflictResolved,
        Self::ErasureCompleted,
        Self::EventFailed,
    ];

    /// The `type` of its body, and what `webhooks.events` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConflictOpened => "conflict.opened",
            Self::ConflictResolved => "conflict.resolved",
            Self::ErasureCompleted => "erasure.completed",
            Self::EventFailed => "event.failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// How an erasure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureOutcome {
    Deleted,
    /// The API answered 404: someone deleted it already.
    AlreadyAbsent,
    /// No Embedded user was ever created (closure before the first sync).
    NeverCreated,
}

impl ErasureOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::AlreadyAbsent => "already_absent",
            Self::NeverCreated => "never_created",
        }
    }
}

/// Why an erasure of an Embedded user left its workflow logs undeleted:
/// recorded with the erasure, so that the proof says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogsSkipped {
    /// `gdpr.delete_workflow_logs` is off.
    Disabled,
    /// The API version the worker speaks has no workflow-logs call
    /// (2021-12): the logs stay in Embedded.
    NoLogsCall,
}

impl LogsSkipped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::NoLogsCall => "no_logs_call",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_user_states_read_back_what_they_write() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(
            EventKind::parse(" signup\t"),
            Some(EventKind::Signup),
            "blanks around a kind are ignored, as before"
        );
        assert_eq!(EventKind::parse("Signup"), None);
        assert_eq!(EventKind::list(), "signup, profile_change, account_closure");
        for state in [
            "creating",
            "synced",
            "failed",
            "conflict",
            "not_created",
            "erased",
        ] {
            assert_eq!(UserState::parse(state).map(UserState::as_str), Some(state));
        }
        assert_eq!(UserState::parse("pending"), None);
    }
}

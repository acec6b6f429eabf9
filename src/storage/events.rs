//! The outbox, `user_sync.events`: the rows the host writes, and what the
//! job reads of them. The SQL is each backend's (`pg/events.rs`,
//! `sqlite/events.rs`).

use chrono::{DateTime, Utc};

use crate::domain::{Desired, EventKind, FullName, HostUserId, Profile, Synced, Username};
use crate::storage::users;

/// An event as the host wrote it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEvent {
    pub id: i64,
    pub host_user_id: Option<String>,
    pub kind: Option<String>,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub attempts: i32,
    pub available_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// What the event asks for, or why it cannot be applied (a reason that
    /// never repeats the offending value).
    pub fn desired(&self) -> Result<Desired, String> {
        let Some(kind) = self.kind.as_deref() else {
            return Err("kind is missing".into());
        };
        match EventKind::parse(kind) {
            Some(EventKind::AccountClosure) => Ok(Desired::Absent),
            Some(EventKind::Signup | EventKind::ProfileChange) => {
                let username = Username::from_email(self.email.as_deref().unwrap_or(""))
                    .map_err(|e| e.to_string())?;
                let full_name = FullName::parse_optional(self.full_name.as_deref())
                    .map_err(|e| e.to_string())?;
                Ok(Desired::Present(Profile {
                    username,
                    full_name,
                }))
            }
            None => Err(format!(
                "unknown kind: expected one of {}",
                EventKind::list()
            )),
        }
    }
}

/// An event claimed for dispatch.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    pub host_user_id: Option<String>,
}

/// The newest pending event of a user, with what the job must know around
/// it, read in one round trip.
#[derive(Debug, Clone)]
pub struct NextEvent {
    pub event: OutboxEvent,
    /// Pending events of the user older than `event`.
    pub older_pending: i64,
    /// The newest event the worker has acted on for the user.
    pub last_acted_on: Option<i64>,
    /// That event never finished (pending, or superseded while pending): an
    /// update sent for it may have been applied without the worker knowing.
    pub last_acted_unfinished: bool,
    /// What the worker last knew of the user's Embedded user.
    pub synced: Synced,
    /// Who else held the event's username when it was read, if the read
    /// could tell (see [`HolderProbe`]).
    pub holder_probe: Option<HolderProbe>,
}

/// The other host user holding or claiming a username, looked up in the
/// same statement as the event, so that a create needs no statement of its
/// own to check it. The database derives the username from the email
/// itself (`lower(btrim(email))`); the probe answers only for `username`,
/// and a caller whose own normalisation differs asks again.
#[derive(Debug, Clone)]
pub struct HolderProbe {
    pub username: String,
    pub holder: Option<String>,
}

impl HolderProbe {
    /// The holder of `username` as read, if the probe was for it.
    pub fn answer(&self, username: &Username) -> Option<Option<HostUserId>> {
        (self.username == username.as_str()).then(|| {
            self.holder
                .as_deref()
                .and_then(|h| HostUserId::parse(h).ok())
        })
    }
}

/// The row [`newest_pending_many`] reads, on either backend.
#[derive(sqlx::FromRow)]
pub(super) struct NextEventRow {
    #[sqlx(flatten)]
    pub(super) event: OutboxEvent,
    pub(super) older_pending: i64,
    pub(super) last_acted_on: Option<i64>,
    pub(super) last_acted_unfinished: bool,
    pub(super) user_state: Option<String>,
    pub(super) user_embedded_id: Option<String>,
    pub(super) user_username: Option<String>,
    pub(super) user_full_name: Option<String>,
    pub(super) user_updated_at: Option<DateTime<Utc>>,
    pub(super) user_seen_free: Option<bool>,
    #[sqlx(default)]
    pub(super) probe_username: Option<String>,
    #[sqlx(default)]
    pub(super) probe_holder: Option<String>,
}

impl NextEventRow {
    pub(super) fn into_next(self) -> NextEvent {
        let synced = match self.user_state.as_deref() {
            Some(state) => users::synced_from(
                state,
                self.user_embedded_id.as_deref(),
                self.user_username.as_deref(),
                self.user_full_name.as_deref(),
                users::intent_of(self.user_updated_at, self.user_seen_free),
            ),
            None => Synced::Nothing,
        };
        NextEvent {
            event: self.event,
            older_pending: self.older_pending,
            last_acted_on: self.last_acted_on,
            last_acted_unfinished: self.last_acted_unfinished,
            synced,
            holder_probe: self.probe_username.map(|username| HolderProbe {
                username,
                holder: self.probe_holder,
            }),
        }
    }
}

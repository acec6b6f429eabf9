//! The outbox, `user_sync.events`: the rows the host writes, and what the
//! job reads of them. The SQL is each backend's (`pg/events.rs`,
//! `sqlite/events.rs`).

use chrono::{DateTime, Utc};

use crate::domain::{Desired, EventKind, FullName, HostUserId, Profile, Synced, Username};
use crate::storage::users;
use crate::storage::written::{HOST_USER_ID_BOUND, KIND_BOUND, Unusable, VALUE_BOUND, Written};

/// An event as the host wrote it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub host_user_id: Option<String>,
    pub kind: Option<String>,
    pub email: Option<String>,
    pub full_name: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub attempts: i32,
    pub available_at: DateTime<Utc>,
    /// The columns that cannot be used as the host wrote them (not text,
    /// or longer than is read: see `storage::written`); each of those
    /// fields is `None`.
    pub unusable: Vec<Unusable>,
}

impl OutboxEvent {
    /// What the event asks for, or why it cannot be applied (a reason that
    /// never repeats the offending value).
    pub fn desired(&self) -> Result<Desired, String> {
        let refused = |columns: &[&str]| {
            self.unusable
                .iter()
                .find(|u| columns.contains(&u.column))
                .map(Unusable::to_string)
        };
        if let Some(reason) = refused(&["host_user_id", "kind"]) {
            return Err(reason);
        }
        let Some(kind) = self.kind.as_deref() else {
            return Err("kind is missing".into());
        };
        match EventKind::parse(kind) {
            // A closure needs nothing but its host user: whatever else the
            // host wrote in the row, the user is erased.
            Some(EventKind::AccountClosure) => Ok(Desired::Absent),
            Some(EventKind::Signup | EventKind::ProfileChange) => {
                if let Some(reason) = refused(&["email", "full_name"]) {
                    return Err(reason);
                }
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

/// The host's columns of an outbox row as a statement reads them: each
/// bounded in the SQL (`substr(…, 1, BOUND + 1)`, see `storage::written`)
/// and decoded whatever it holds. [`Self::into_event`] makes the event.
#[derive(sqlx::FromRow)]
pub(super) struct WrittenEvent {
    pub(super) id: i64,
    pub(super) host_user_id: Option<Written>,
    pub(super) kind: Option<Written>,
    pub(super) email: Option<Written>,
    pub(super) full_name: Option<Written>,
    pub(super) occurred_at: DateTime<Utc>,
    pub(super) attempts: i32,
    pub(super) available_at: DateTime<Utc>,
}

impl WrittenEvent {
    pub(super) fn into_event(self) -> OutboxEvent {
        let mut unusable = Vec::new();
        let mut text = |value, column, bound| {
            Written::text(value, column, bound).unwrap_or_else(|why| {
                unusable.push(why);
                None
            })
        };
        let host_user_id = text(self.host_user_id, "host_user_id", HOST_USER_ID_BOUND);
        let kind = text(self.kind, "kind", KIND_BOUND);
        let email = text(self.email, "email", VALUE_BOUND);
        let full_name = text(self.full_name, "full_name", VALUE_BOUND);
        OutboxEvent {
            id: self.id,
            host_user_id,
            kind,
            email,
            full_name,
            occurred_at: self.occurred_at,
            attempts: self.attempts,
            available_at: self.available_at,
            unusable,
        }
    }
}

/// An event claimed for dispatch.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub host_user_id: Option<String>,
}

/// The events of a claim's rows, `(id, host_user_id)` with the id read up
/// to its bound. An id that can be no user's (not text, too long) is left
/// out of the job: the job then reads the event's row, which says why, and
/// ends it `invalid` (see `sync::job`). A job never carries it.
pub(super) fn claimed_from(rows: Vec<(i64, Option<Written>)>) -> Vec<Claimed> {
    rows.into_iter()
        .map(|(id, host)| Claimed {
            id,
            host_user_id: Written::text(host, "host_user_id", HOST_USER_ID_BOUND)
                .ok()
                .flatten(),
        })
        .collect()
}

/// The host user of a pending event as its row holds it (see
/// [`crate::storage::SyncStore::host_of_pending`]): the id, or why the row
/// names no usable one.
pub fn host_of_written(host: Option<Written>) -> Result<HostUserId, String> {
    match Written::text(host, "host_user_id", HOST_USER_ID_BOUND) {
        // A missing id parses as blank: "host_user_id is missing".
        Ok(text) => {
            HostUserId::parse(text.as_deref().unwrap_or_default()).map_err(|e| e.to_string())
        }
        Err(why) => Err(why.to_string()),
    }
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
    pub(super) event: WrittenEvent,
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
            event: self.event.into_event(),
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

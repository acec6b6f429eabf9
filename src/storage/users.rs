//! `user_sync.users`: host id ↔ Embedded userId and the last synced
//! state, as the job and the backfill see a row. The SQL is each backend's
//! (`pg/users.rs`, `sqlite/users.rs`).

use chrono::{DateTime, Utc};

use crate::domain::{
    EmbeddedUserId, FullName, HostUserId, Intent, Profile, Synced, UserState, Username,
};

/// The plan's view of a `user_sync.users` row; `intent` is what its
/// claim recorded (see [`intent_of`]), for a row in state `creating`.
pub(crate) fn synced_from(
    state: &str,
    embedded_user_id: Option<&str>,
    username: Option<&str>,
    full_name: Option<&str>,
    intent: Intent,
) -> Synced {
    match (UserState::parse(state), embedded_user_id, username) {
        (Some(UserState::Creating), _, Some(username)) => Synced::Unconfirmed {
            username: Username::from_api(username),
            intent,
        },
        (Some(UserState::Synced), Some(id), Some(username)) => match EmbeddedUserId::parse(id) {
            Ok(id) => Synced::Present {
                id,
                profile: Profile {
                    username: Username::from_api(username),
                    full_name: full_name.map(FullName::from_api),
                },
            },
            Err(_) => Synced::Nothing,
        },
        _ => Synced::Nothing,
    }
}

/// The intent a claimed row recorded: nothing writes a row between its
/// claim and the claim's confirmation, so its `updated_at` is the time of
/// the claim; `username_seen_free` says whether the username was seen free
/// in Embedded right before.
pub(crate) fn intent_of(updated_at: Option<DateTime<Utc>>, seen_free: Option<bool>) -> Intent {
    Intent {
        at: updated_at,
        seen_free: seen_free.unwrap_or(false),
    }
}

/// What another host user's hold on a username is, asked again when it
/// stands in a job's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderClaim {
    /// It no longer holds or claims the username.
    Gone,
    /// It holds it: synced, or a claim nobody works on any more (its
    /// events ended with the create's outcome unknown).
    Held,
    /// It claims it for a create still being worked on (an event of it
    /// pending, next due at this time): the create may yet be refused.
    InFlight(DateTime<Utc>),
}

impl HolderClaim {
    /// From the holder's row, if it still holds or claims the username:
    /// its state, and when its next pending event is due.
    pub(crate) fn of(row: Option<(String, Option<DateTime<Utc>>)>) -> Self {
        match row {
            None => Self::Gone,
            Some((state, Some(due))) if state == UserState::Creating.as_str() => {
                Self::InFlight(due)
            }
            Some(_) => Self::Held,
        }
    }
}

/// Why a username claim failed.
pub enum Claim {
    Claimed,
    /// Another host user holds or is claiming the username.
    TakenBy(HostUserId),
}

/// An intent to create, recorded before the create is sent.
#[derive(Debug, Clone)]
pub struct NewClaim {
    pub host: HostUserId,
    pub profile: Profile,
    pub event_id: i64,
    /// The username was seen free in Embedded right before this claim.
    pub seen_free: bool,
}

/// What a job found Embedded to hold for a host user, for
/// [`mark_synced`](super::mark_synced).
#[derive(Debug, Clone)]
pub struct SyncedUser {
    pub host: HostUserId,
    pub id: EmbeddedUserId,
    pub profile: Profile,
    /// The event acted on, kept as the user's last event.
    pub event_id: i64,
    /// The event that ends `applied` with it, if any.
    pub applied: Option<i64>,
}

/// One intent to create, for
/// [`BackfillTables::claim_many_for_create`](super::BackfillTables::claim_many_for_create).
pub struct ClaimIntent<'a> {
    pub host: &'a HostUserId,
    pub profile: &'a Profile,
    /// Kept as it is: the backfill acts on no event.
    pub last_event_id: Option<i64>,
}

/// One Embedded user found for a host user, for
/// [`BackfillTables::mark_synced_many`](super::BackfillTables::mark_synced_many).
pub struct Found<'a> {
    pub host: &'a HostUserId,
    pub user: &'a EmbeddedUserId,
    pub profile: &'a Profile,
}

/// A claim whose create is not confirmed yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unconfirmed {
    pub host_user_id: String,
    pub username: Option<String>,
    pub full_name: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub username_seen_free: Option<bool>,
}

impl Unconfirmed {
    /// What the row's claim recorded.
    pub fn intent(&self) -> Intent {
        intent_of(self.updated_at, self.username_seen_free)
    }
}

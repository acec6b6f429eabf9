//! `user_sync.conflicts`: a username the worker could not have for a host
//! user, reported once and kept open until it is resolved. The SQL is each
//! backend's (`pg/conflicts.rs`, `sqlite/conflicts.rs`).

use sqlx::query::Query;
use sqlx::{Database, Encode, Type};

use crate::domain::{ConflictReason, EmbeddedUserId, HostUserId, Username};

/// A conflict to report.
pub struct NewConflict<'a> {
    pub host: &'a HostUserId,
    pub username: &'a Username,
    pub reason: ConflictReason,
    pub holder_host_user_id: Option<&'a HostUserId>,
    pub holder_embedded_user_id: Option<&'a EmbeddedUserId>,
    /// The event that met the conflict; `None` when the backfill found it.
    pub event_id: Option<i64>,
}

impl NewConflict<'_> {
    /// Binds the conflict's columns to `query`, in the order both backends'
    /// statements name them: host user, username, reason, holder host user,
    /// holder Embedded user, event.
    pub(crate) fn bind_to<'q, DB>(
        &self,
        query: Query<'q, DB, DB::Arguments>,
    ) -> Query<'q, DB, DB::Arguments>
    where
        DB: Database,
        for<'t> &'t str: Encode<'t, DB> + Type<DB>,
        for<'t> Option<&'t str>: Encode<'t, DB> + Type<DB>,
        for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    {
        query
            .bind(self.host.as_str())
            .bind(self.username.as_str())
            .bind(self.reason.as_str())
            .bind(self.holder_host_user_id.map(HostUserId::as_str))
            .bind(self.holder_embedded_user_id.map(EmbeddedUserId::as_str))
            .bind(self.event_id)
    }
}

/// A conflict as its webhooks tell it: ids, the reason, holders and how it
/// ended; never the username (an email), a note or an operator's name. (On
/// PostgreSQL the SQL function `user_sync.conflict_data` builds the same.)
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ConflictTold {
    pub id: i64,
    pub host_user_id: String,
    pub reason: String,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
    pub status: String,
    pub resolution: Option<String>,
}

impl ConflictTold {
    /// The `data` of its webhooks.
    pub(crate) fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "conflict_id": self.id,
            "host_user_id": self.host_user_id,
            "reason": self.reason,
            "holder_host_user_id": self.holder_host_user_id,
            "holder_embedded_user_id": self.holder_embedded_user_id,
            "status": self.status,
            "resolution": self.resolution,
        })
    }
}

/// Who acts on a conflict, and why: what `resolved_by` and `note` keep.
#[derive(Debug, Clone, Copy)]
pub struct Operator<'a> {
    pub by: &'a str,
    pub note: Option<&'a str>,
}

/// An operator's adoption of the Embedded user holding a conflict's
/// username, to record.
#[derive(Debug, Clone, Copy)]
pub struct Adoption<'a> {
    pub conflict_id: i64,
    pub host: &'a HostUserId,
    pub user: &'a EmbeddedUserId,
    /// The profile as the Embedded user holds it now.
    pub held: &'a crate::domain::Profile,
    /// The host user's newest event, kept as its last.
    pub event_id: Option<i64>,
    pub operator: Operator<'a>,
}

/// How recording an adoption went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adopted {
    Adopted,
    /// The conflict is no longer open.
    NotOpen,
    /// A job is working on the host user right now.
    Busy,
    /// The host user has an Embedded user already.
    HasUser(Option<String>),
    /// Another host user holds the username or is mapped to that user.
    HeldBy(String),
}

/// The newest event of a host user, whatever its state.
#[derive(Debug, Clone)]
pub struct LatestEvent {
    pub event: crate::storage::OutboxEvent,
    pub state: String,
    /// Why it failed, conflicted or waits (never an email or a name).
    pub reason: Option<String>,
}

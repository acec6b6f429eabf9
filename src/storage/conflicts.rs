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

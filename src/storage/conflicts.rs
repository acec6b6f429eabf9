//! `user_sync.conflicts`: a username the worker could not have for a host
//! user, reported once and kept open until it is resolved. The SQL is each
//! backend's (`pg/conflicts.rs`, `sqlite/conflicts.rs`).

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

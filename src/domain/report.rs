//! What operators read of the worker's tables: the rows behind `status`,
//! `conflicts` and `/metrics`, the same on every backend.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A snapshot of the pipeline.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// Events not applied yet (waiting, in the queue, or snoozed).
    pub pending_events: i64,
    /// Events that ended in a permanent failure (see their reason).
    pub failed_events: i64,
    /// Events refused before any call (bad kind, id, email or name).
    pub invalid_events: i64,
    /// Events that ended in a conflict.
    pub conflict_events: i64,
    /// Host users with an Embedded user.
    pub synced_users: i64,
    pub open_conflicts: i64,
    pub completed_erasures: i64,
    /// Age of the oldest pending event, in seconds (0 when none is pending).
    pub outbox_lag_seconds: f64,
}

/// One open conflict, with what an operator needs to resolve it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct ConflictRow {
    pub id: i64,
    pub host_user_id: String,
    pub username: String,
    pub reason: String,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
    pub event_id: Option<i64>,
    pub detected_at: DateTime<Utc>,
}

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
    /// Set while an operator has paused the deployment.
    pub paused: Option<Pause>,
}

/// An operator's pause of the deployment: since when, by whom, why.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct Pause {
    pub paused_at: DateTime<Utc>,
    pub paused_by: Option<String>,
    pub reason: Option<String>,
}

/// One conflict, with what an operator needs to resolve it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct ConflictRow {
    pub id: i64,
    pub host_user_id: String,
    /// In clear: for the people who resolve conflicts, never for logs.
    pub username: String,
    pub reason: String,
    /// `open` or `resolved`.
    pub status: String,
    /// `adopted`, `retried`, `ignored` or `moot`, once resolved.
    pub resolution: Option<String>,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
    /// The event that met it; `None` when the backfill found it.
    pub event_id: Option<i64>,
    pub detected_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `worker`, or the name an operator gave.
    pub resolved_by: Option<String>,
    pub note: Option<String>,
    /// How often it was met again while open (a retry, a recheck, a later
    /// event), and when last.
    pub checks: i32,
    pub checked_at: Option<DateTime<Utc>>,
}

impl ConflictRow {
    /// The columns of a conflict, in the row's order, for a `SELECT`.
    pub const COLUMNS: &'static str = "id, host_user_id, username, reason, status, resolution, \
         holder_host_user_id, holder_embedded_user_id, event_id, detected_at, resolved_at, \
         resolved_by, note, checks, checked_at";
}

/// Which conflicts a listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictStatus {
    #[default]
    Open,
    Resolved,
    All,
}

impl ConflictStatus {
    /// The `status` values it shows.
    pub fn statuses(self) -> &'static [&'static str] {
        match self {
            Self::Open => &["open"],
            Self::Resolved => &["resolved"],
            Self::All => &["open", "resolved"],
        }
    }
}

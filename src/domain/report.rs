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
    /// Erasure requests not complete yet (see `user-sync erasures --pending`).
    pub pending_erasures: i64,
    /// Age of the oldest of them, in seconds (0 when none is pending).
    pub oldest_pending_erasure_seconds: f64,
    /// Age of the oldest pending event, in seconds (0 when none is pending).
    pub outbox_lag_seconds: f64,
    /// Set while an operator has paused the deployment.
    pub paused: Option<Pause>,
    /// What retention has removed (see `[retention]`).
    pub retention: Retained,
}

/// What retention has removed since the deployment began keeping count,
/// and when it last worked: rows deleted, never their content.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow, PartialEq)]
pub struct Retained {
    pub events: i64,
    pub conflicts: i64,
    pub erasures: i64,
    /// Webhook deliveries, delivered or abandoned.
    pub webhooks: i64,
    /// When a pass last removed anything.
    pub last_removed_at: Option<DateTime<Utc>>,
    /// When the last pass ended.
    pub last_pass_at: Option<DateTime<Utc>>,
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

/// One outbox event as operators see it: ids, states and reasons, never the
/// email or the name it carries.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub host_user_id: Option<String>,
    pub kind: Option<String>,
    pub state: String,
    pub attempts: i32,
    /// Why it failed, was refused, conflicted or waits.
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
    /// When a pending event is next due.
    pub available_at: DateTime<Utc>,
    pub dispatched_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl EventRow {
    /// Its columns, for a `SELECT`.
    pub const COLUMNS: &'static str = "id, host_user_id, kind, state, attempts, reason, \
         occurred_at, available_at, dispatched_at, finished_at";
}

/// Which events a listing shows, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub state: Option<String>,
    pub host_user_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// Which users' newest events go back to pending.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryTarget {
    /// Every user whose newest event is in this state.
    State(String),
    /// These users, whatever state their newest event is in.
    Hosts(Vec<String>),
}

/// A host user's row in `user_sync.users`, as operators see it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct MappingRow {
    pub state: String,
    pub embedded_user_id: Option<String>,
    /// In clear here; masked when shown unless asked for.
    pub username: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// One proof of erasure: ids, the outcome and times.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct ErasureRow {
    pub id: i64,
    pub host_user_id: String,
    pub embedded_user_id: Option<String>,
    pub event_id: i64,
    pub outcome: String,
    /// The closure's `occurred_at`: when the host asked.
    pub requested_at: DateTime<Utc>,
    /// When `DELETE /users/{id}/logs` was answered; `None` when no user was
    /// ever created or `gdpr.delete_workflow_logs` is off.
    pub logs_deleted_at: Option<DateTime<Utc>>,
    /// When the user was known gone (its delete answered); `None` when no
    /// user was ever created.
    pub user_deleted_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    /// Why the logs of a user that existed were not deleted
    /// (`domain::LogsSkipped`): `disabled`, or `no_logs_call` on an API
    /// version without that call. `None` when they were, or no user was
    /// ever created.
    pub logs_skipped: Option<String>,
}

impl ErasureRow {
    /// Its columns, for a `SELECT`.
    pub const COLUMNS: &'static str = "id, host_user_id, embedded_user_id, event_id, outcome, \
         requested_at, logs_deleted_at, user_deleted_at, completed_at, logs_skipped";
}

/// How many events ended in `state` within one minute (by `finished_at`):
/// the console's chart of the last hour.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FinishedInMinute {
    /// The minute's start.
    pub minute: DateTime<Utc>,
    pub state: String,
    pub events: i64,
}

/// Everything about one host user: `user-sync show`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserRecord {
    pub host_user_id: String,
    pub mapping: Option<MappingRow>,
    /// Its most recent events, newest first.
    pub events: Vec<EventRow>,
    pub conflicts: Vec<ConflictRow>,
    pub erasures: Vec<ErasureRow>,
}

//! Retention: the finished rows the worker no longer needs, deleted once
//! they are old, in small batches, by one process of the deployment at a
//! time (a lease in `user_sync.retention`, which also counts what went).
//! Each backend's SQL is in `pg/retention.rs` and `sqlite/retention.rs`.
//!
//! What an event must keep to stay is said once, in [`EVENT_STAYS`]: the
//! worker compares later events against a user's newest event (latest
//! wins, a retry, a conflict's wake-up, an erasure request) and against
//! the last one it acted on (`users.last_event_id`), an open conflict
//! names its event, and a failed closure is an erasure still owed for as
//! long as no newer event but invalid ones follows it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::domain::EventState;

/// The part of a `WHERE` over the outbox row `e` that keeps it: true when
/// something still needs the event (a row goes only where it is false: an
/// unknown keeps it). The same text on both backends (table
/// names are PostgreSQL's; SQLite's replace the schema's dot).
pub(super) const EVENT_STAYS: &str = "(e.host_user_id IS NOT NULL AND (
        -- its user's newest event: latest wins, retries, wake-ups and
        -- erasure requests all start from it
        NOT EXISTS (SELECT 1 FROM user_sync.events n
                    WHERE n.host_user_id = e.host_user_id AND n.id > e.id)
        -- the last event the worker acted on for its user (read by key,
        -- one user at a time: never a scan of every user)
        OR coalesce((SELECT u.last_event_id FROM user_sync.users u
                     WHERE u.host_user_id = e.host_user_id), 0) = e.id
        -- the event of an open conflict
        OR EXISTS (SELECT 1 FROM user_sync.conflicts c
                   WHERE c.event_id = e.id AND c.status = 'open')
        -- a failed closure no event but invalid ones followed: an erasure
        -- still owed
        OR (e.kind = 'account_closure' AND e.state = 'failed'
            AND NOT EXISTS (SELECT 1 FROM user_sync.events n
                            WHERE n.host_user_id = e.host_user_id AND n.id > e.id
                              AND n.state <> 'invalid'))
        -- an event that makes an older failed closure no longer owed: it
        -- goes after the closure, never before
        OR (e.state <> 'invalid'
            AND EXISTS (SELECT 1 FROM user_sync.events f
                        WHERE f.host_user_id = e.host_user_id AND f.id < e.id
                          AND f.kind = 'account_closure' AND f.state IN ('pending', 'failed')))))";

/// What retention has removed ([`crate::domain::Retained`]), for
/// `status`; in SQLite's dialect, its table is `user_sync_retention`.
pub(super) const RETAINED: &str = "SELECT events_removed AS events,
        conflicts_removed AS conflicts, erasures_removed AS erasures,
        webhooks_removed AS webhooks, last_removed_at, last_pass_at
     FROM user_sync.retention";

/// A pass of the deployment's retention, claimed by one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// The database's clock when the pass was claimed: the ages are counted
    /// from it, as the rows' times were written by it.
    pub now: DateTime<Utc>,
    /// Where the events' sweep starts: every event that finished before it
    /// was looked at by an earlier pass. `None`: from the oldest (the first
    /// pass, and one a day, for rows kept then that may go since).
    pub floor: Option<DateTime<Utc>>,
}

/// How a pass ends: where the next one starts, and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassEnd {
    /// The new floor of the events' sweep (`None`: left as it was).
    pub floor: Option<DateTime<Utc>>,
    /// The pass started from the oldest event, at this time.
    pub full_from: Option<DateTime<Utc>>,
    pub next_in: Duration,
}

/// The rows a sweep deletes: those past their age, of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Events that ended in `state` before `before`, unless something
    /// still needs them ([`EVENT_STAYS`]); in the order they finished.
    Events {
        state: EventState,
        before: DateTime<Utc>,
    },
    /// Conflicts resolved before `before`, but ignored ones (an operator's
    /// standing decision); by id.
    Conflicts { before: DateTime<Utc> },
    /// Erasure records completed before `before`; in the order completed.
    Erasures { before: DateTime<Utc> },
    /// Webhook deliveries delivered before `delivered`, or abandoned
    /// before `abandoned`; by id.
    Deliveries {
        delivered: DateTime<Utc>,
        abandoned: DateTime<Utc>,
    },
}

impl Sweep {
    /// The counter of `user_sync.retention` its rows add to.
    pub(super) fn counter(self) -> &'static str {
        match self {
            Self::Events { .. } => "events_removed",
            Self::Conflicts { .. } => "conflicts_removed",
            Self::Erasures { .. } => "erasures_removed",
            Self::Deliveries { .. } => "webhooks_removed",
        }
    }
}

/// Where a sweep is in its table: past the row (`at`, `id`) in the
/// table's order (a sweep by id leaves `at` at the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    /// Before every row.
    pub fn start() -> Self {
        Self::from(DateTime::UNIX_EPOCH)
    }

    /// Before every row from `at` on.
    pub fn from(at: DateTime<Utc>) -> Self {
        Self { at, id: 0 }
    }
}

/// One batch of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Rows looked at (fewer than asked: the sweep is done).
    pub looked: usize,
    /// Of them, deleted.
    pub removed: u64,
    /// Where the next batch starts.
    pub next: Cursor,
    /// Whether this process still holds the pass (it renewed the lease).
    pub lease_held: bool,
}

/// What retention does to the tables.
pub trait Retention: Send + Sync {
    /// Claims the deployment's pass for `holder`, for `lease`, when one is
    /// due and no other process holds it; a floor older than a day (or
    /// none) starts it from the oldest event.
    fn claim_pass<'a>(
        &'a self,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Option<Pass>>>;
    /// Deletes what `sweep` says among the next `limit` rows after `after`,
    /// never waiting for a row another transaction holds; counts them and
    /// renews `holder`'s lease, in the same transaction.
    fn sweep<'a>(
        &'a self,
        holder: &'a str,
        lease: Duration,
        sweep: Sweep,
        after: Cursor,
        limit: u32,
    ) -> BoxFuture<'a, sqlx::Result<Swept>>;
    /// Ends `holder`'s pass.
    fn end_pass<'a>(&'a self, holder: &'a str, end: PassEnd) -> BoxFuture<'a, sqlx::Result<()>>;
}

//! The worker's tables: the outbox's worker-owned columns, users, conflicts
//! and erasures. The database is the source of truth; the queue only
//! carries ids of rows that live here.
//!
//! The pipeline reaches them through three small traits, so that one
//! dispatcher, one sweeper and one sync job serve every backend:
//! [`Outbox`] (what the dispatcher and the sweeper do to the outbox),
//! [`SyncStore`] and [`UserSession`] (what a job does to one host user's
//! rows, under that user's lock), and [`Reports`] (what `status`,
//! `conflicts` and the ops server read). [`postgres`] implements them on
//! PostgreSQL, [`sqlite`] on a SQLite file; [`Database`] picks one from
//! `database.url`.
//!
//! The row types of each table sit here ([`events`], [`users`],
//! [`conflicts`]); each backend's SQL for a table sits in a file of the same
//! name on its side ([`pg`], [`sqlite`]). [`memory`] (tests only) keeps the
//! same rows in memory, so that the job's steps are unit-tested without a
//! database.

pub mod conflicts;
pub mod events;
#[cfg(test)]
pub(crate) mod memory;
pub mod pg;
pub mod sqlite;
pub mod users;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::SqlitePool;

use crate::config::{DatabaseKind, DatabaseSettings};
use crate::domain::{
    ConflictRow, EmbeddedUserId, ErasureOutcome, EventState, HostUserId, Profile, Status,
    UserState, Username,
};
use events::NextEvent;

use crate::storage::conflicts::NewConflict;
pub use events::Claimed;
use users::Claim;

/// What the dispatcher and the sweeper do to the outbox.
pub trait Outbox: Send + Sync {
    /// Claims up to `limit` events due for dispatch, oldest due first.
    /// Several dispatchers never claim one event at once. The claim holds
    /// until [`ClaimedBatch::confirm`] (the queue took the events) or
    /// [`ClaimedBatch::abandon`]; a claim dropped, or lost in a crash, before
    /// either leaves its events to dispatch again.
    fn claim_due(&self, limit: u32) -> BoxFuture<'_, sqlx::Result<Box<dyn ClaimedBatch>>>;
    /// How long until the next snoozed event is due, if any is waiting.
    fn next_due_in(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>>;
    /// Events dispatched more than `after` ago and still pending go back to
    /// be dispatched (their job was lost). Returns how many.
    fn sweep_stale(&self, after: Duration) -> BoxFuture<'_, sqlx::Result<u64>>;
    /// What wakes the dispatcher when the host writes an event.
    fn wake_ups(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn WakeUps>>>;
}

/// Events claimed for dispatch, not yet confirmed.
pub trait ClaimedBatch: Send {
    /// The claimed events, in claim order.
    fn events(&self) -> &[Claimed];
    /// The queue took the events: they count as dispatched.
    fn confirm(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>>;
    /// The queue did not take them: they go back to be dispatched at once.
    fn abandon(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>>;
}

/// Signals that new events may be waiting in the outbox.
pub trait WakeUps: Send {
    /// Resolves at the next signal (and swallows those already there: one
    /// batch serves them all). Never resolving is allowed: the dispatcher
    /// polls as well.
    fn next(&mut self) -> BoxFuture<'_, ()>;
}

/// One session per host user asked for, in order; `None` for a busy one.
pub type Sessions<S> = Vec<Option<S>>;

/// What a sync job needs outside a user's lock. The job is generic over
/// it: the backend is chosen once, where the process is assembled, and a
/// job's many statements are plain futures, none of them boxed.
pub trait SyncStore: Send + Sync + 'static {
    /// One host user's rows under that user's lock.
    type Session: UserSession;
    /// Takes the exclusive right to act on each of `hosts` (distinct),
    /// across every process sharing the database, where nobody holds it:
    /// one session per host, in order, `None` for a busy one.
    fn lock_users<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> impl Future<Output = sqlx::Result<Sessions<Self::Session>>> + Send;
    /// The host user id the outbox row of event `id` holds, as the host
    /// wrote it (`Some(None)` when it holds none), or `None` when the event
    /// is not pending. A job only names events: what they are is read here.
    fn host_of_pending(
        &self,
        id: i64,
    ) -> impl Future<Output = sqlx::Result<Option<Option<String>>>> + Send;
    /// Ends an event that has no valid host user to lock.
    fn mark_invalid<'a>(
        &'a self,
        id: i64,
        reason: &'a str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Puts an event back to be dispatched after `delay`, without counting
    /// an attempt (its user was busy).
    fn snooze(&self, id: i64, delay: Duration) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// One host user's rows, under that user's lock. Every write commits on
/// its own: an intent recorded here is durable before the API call it
/// announces. A session dropped without [`UserSession::release`] still
/// frees its user: at once on SQLite, when the job's last session is gone on
/// PostgreSQL (whose sessions of one job share a connection).
pub trait UserSession: Send {
    /// The newest pending event of the user, with what the job must know
    /// around it, in one round trip.
    fn newest_pending(&mut self) -> impl Future<Output = sqlx::Result<Option<NextEvent>>> + Send;
    /// Ends one event.
    fn finish<'a>(
        &'a mut self,
        id: i64,
        state: EventState,
        reason: Option<&'a str>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Ends every pending event of the user older than `newest`; returns
    /// how many.
    fn supersede_older(&mut self, newest: i64) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Puts an event back to be dispatched after `delay`; `failed` counts
    /// an attempt.
    fn snooze<'a>(
        &'a mut self,
        id: i64,
        delay: Duration,
        failed: bool,
        reason: Option<&'a str>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records the intent to create `profile`, durably, before the create
    /// is sent; a username another host user holds is refused. `seen_free`:
    /// the username was seen free in Embedded right before (kept with the
    /// claim; see `domain::Intent`).
    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
        seen_free: bool,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send;
    /// The other host user holding or claiming `username`, if any.
    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send;
    /// Whether `holder` claims `username` for a create whose outcome is
    /// still being worked out (its row `creating`, an event of it still
    /// pending), and if so when that event is next due. Such a claim may
    /// yet be released (the username taken in Embedded), so who holds the
    /// name is not settled.
    fn claim_in_flight<'a>(
        &'a mut self,
        holder: &'a HostUserId,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<Option<DateTime<Utc>>>> + Send;
    /// Records that an update for `event_id` is about to be sent: until that
    /// event finishes, the row may not say what Embedded holds (see
    /// `NextEvent::last_acted_unfinished`).
    fn note_update_sent(&mut self, event_id: i64) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records what Embedded was found to hold, read back after an update of
    /// unknown outcome, as known while acting on `event_id`. Conflicts and
    /// events are left as they are.
    fn record_found<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records the user's Embedded user and profile and resolves its open
    /// conflicts; with `applied`, that event ends `applied` too.
    fn mark_synced<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
        applied: Option<i64>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Another host user already mapped to the Embedded user `id`, if any.
    fn mapped_elsewhere<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send;
    /// Makes every outcome recorded so far durable before an irreversible
    /// call that relies on it (a delete). A no-op where outcomes commit
    /// durably anyway.
    fn flush_outcomes(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
    /// Records that the user has no Embedded user (in `state`), releasing
    /// any username claim.
    fn mark_without_user(
        &mut self,
        state: UserState,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Reports a conflict once; returns whether a row was added.
    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
    /// Completes a closure in one transaction: scrubs the user's email and
    /// name from every table, records the erasure, ends the event.
    fn erase<'a>(
        &'a mut self,
        embedded_user_id: Option<&'a EmbeddedUserId>,
        closure_event_id: i64,
        outcome: ErasureOutcome,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Releases the lock.
    fn release(self) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// What operators read: `status`, `conflicts`, `/readyz`, `/metrics`.
pub trait Reports: Send + Sync {
    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>>;
    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>>;
    fn open_conflicts(&self) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>>;
}

/// What the dispatcher, the sweeper and the ops server need of a backend:
/// a handful of calls a second, through one trait object.
pub trait Store: Outbox + Reports {}

impl<T: Outbox + Reports> Store for T {}

/// The database `database.url` names, connected: PostgreSQL (beside Redis)
/// or a SQLite file (the single-file mode, queue included).
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects with at least `min_size` connections.
    pub async fn connect(settings: &DatabaseSettings, min_size: u32) -> anyhow::Result<Self> {
        Ok(match settings.kind()? {
            DatabaseKind::Postgres => Self::Postgres(pg::connect(settings, min_size).await?),
            DatabaseKind::Sqlite => Self::Sqlite(sqlite::connect(settings, min_size).await?),
        })
    }

    /// Applies the migrations not applied yet; returns how many ran.
    pub async fn migrate(&self) -> anyhow::Result<usize> {
        match self {
            Self::Postgres(pool) => pg::migrate::run(pool).await,
            Self::Sqlite(pool) => sqlite::migrate(pool).await,
        }
    }

    /// Fails, saying what to run, when a migration is missing.
    pub async fn check_current(&self) -> anyhow::Result<()> {
        match self {
            Self::Postgres(pool) => pg::migrate::check_current(pool).await,
            Self::Sqlite(pool) => sqlite::check_current(pool).await,
        }
    }

    /// The pipeline's storage on this database. One per process: on
    /// SQLite it holds the process's per-user locks.
    pub fn into_store(self) -> Arc<dyn Store> {
        match self {
            Self::Postgres(pool) => Arc::new(pg::PgStore::new(pool)),
            Self::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool)),
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

/// Whether `error` is a unique-constraint violation.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

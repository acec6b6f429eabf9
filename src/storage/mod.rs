//! The worker's tables: the outbox's worker-owned columns, users, conflicts
//! and erasures. The database is the source of truth; the queue only
//! carries ids of rows that live here.
//!
//! The pipeline reaches them through small traits, so that one
//! dispatcher, one sweeper, one sync job and one backfill serve every
//! backend: [`Outbox`] (what the dispatcher and the sweeper do to the
//! outbox), [`SyncStore`] and [`UserSession`] (what a job does to one host
//! user's rows, under that user's lock), [`BackfillTables`] (what the
//! backfill writes, many users a statement), [`Reports`] (what `status`,
//! `conflicts` and the ops server read) and [`Deliveries`] (what the
//! deliverer of webhooks and `user-sync webhooks` do to their rows). [`PgStore`] implements them on
//! PostgreSQL, [`SqliteStore`] on a SQLite file; [`Database`] picks one from
//! `database.url`.
//!
//! Every file is private, and what the layers above use is re-exported
//! here. The row types of each table sit at this level (`events`, `users`,
//! `conflicts`); each backend's SQL for a table sits in a file of the same
//! name on its side (`pg/`, `sqlite/`). The in-memory store (`memory`, tests
//! only) keeps the same rows in memory, so that the job's steps are
//! unit-tested without a database.

mod conflicts;
mod erasures;
mod events;
#[cfg(test)]
mod memory;
mod pg;
mod retention;
mod sqlite;
mod users;
mod webhooks;
mod written;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::SqlitePool;

use crate::config::{DatabaseKind, DatabaseSettings};
use crate::domain::{
    ConflictRow, ConflictStatus, EmbeddedUserId, ErasureOutcome, ErasureRow, EventFilter,
    EventState, FinishedInMinute, FullName, HostUserId, Intent, LogsSkipped, Pause, Profile,
    RetryTarget, Status, UserRecord, UserState, Username,
};

pub use conflicts::{Adopted, Adoption, LatestEvent, NewConflict, Operator};
pub(crate) use erasures::Newest;
pub use erasures::{
    ErasureFilter, ErasureRequests, ErasureStep, ErasureSteps, Filed, PendingErasure,
};
pub use events::{Claimed, HolderProbe, NextEvent, OutboxEvent};
#[cfg(test)]
pub(crate) use memory::{EventRow, MemoryStore, UserRow};
pub use written::{HOST_USER_ID_BOUND, KIND_BOUND, Problem, Unusable, VALUE_BOUND, Written};
// A job's batched statements on PostgreSQL, each for many users at once:
// public for the tests that read how they reach their rows.
pub use pg::{
    PgStore, claim_each_for_create, finish_many, holders_of, mark_synced, newest_pending_many,
    sweep_retention_in,
};
pub use retention::{Cursor, Pass, PassEnd, Retention, Sweep, Swept};
pub use sqlite::{ProcessLock, SqliteBackfill, SqliteStore, json_list};
pub(crate) use users::intent_of;
pub use users::{Claim, ClaimIntent, Found, HolderClaim, NewClaim, SyncedUser, Unconfirmed};
pub use webhooks::{Deliveries, Delivery, FailedAttempt, WaitingDelivery};

/// What the dispatcher and the sweeper do to the outbox.
pub trait Outbox: Send + Sync {
    /// Claims up to `limit` events due for dispatch, oldest due first.
    /// Several dispatchers never claim one event at once (on PostgreSQL one
    /// claims at a time, and a claim made meanwhile is empty). The claim holds
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
    /// Whether the claim stopped at its limit, so that more may be due at
    /// once, though it holds fewer events (it passed over ended ones).
    fn stopped_at_limit(&self) -> bool {
        false
    }
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
    /// The host user the outbox row of event `id` names, as the host wrote
    /// it, or why it names no usable one (none, not text, too long...);
    /// `None` when the event is not pending. A job only names events: what
    /// they are is read here.
    fn host_of_pending(
        &self,
        id: i64,
    ) -> impl Future<Output = sqlx::Result<Option<Result<HostUserId, String>>>> + Send;
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

/// How one event ends.
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    pub id: i64,
    pub state: EventState,
    /// Why, when it did not apply.
    pub reason: Option<&'a str>,
}

/// One event put back in the outbox, to be dispatched again after `delay`.
#[derive(Debug, Clone, Copy)]
pub struct Snooze<'a> {
    pub id: i64,
    pub delay: Duration,
    /// Whether it used up an attempt.
    pub failed: bool,
    /// Noted on the event, when given.
    pub reason: Option<&'a str>,
}

/// What Embedded holds for a session's user, as known while acting on
/// `event_id`.
#[derive(Debug, Clone, Copy)]
pub struct Holding<'a> {
    pub id: &'a EmbeddedUserId,
    pub profile: &'a Profile,
    /// The event acted on, kept as the user's last event.
    pub event_id: i64,
}

/// A closure carried out: the Embedded user it concerned, if any, and how
/// it ended there.
#[derive(Debug, Clone, Copy)]
pub struct Erasure<'a> {
    pub embedded_user_id: Option<&'a EmbeddedUserId>,
    pub closure_event_id: i64,
    pub outcome: ErasureOutcome,
    /// Why the user's workflow logs were not deleted, when they were not.
    pub logs_skipped: Option<LogsSkipped>,
}

/// One host user's rows, under that user's lock. Every write commits on
/// its own: an intent recorded here is durable before the API call it
/// announces. A session dropped without [`UserSession::release`] still
/// frees its user: at once on SQLite, when the job's last session is gone on
/// PostgreSQL (whose sessions of one job share a connection).
///
/// What a write takes travels in one value ([`Ending`], [`Snooze`],
/// [`Holding`], [`Erasure`]); [`Self::record_found`], [`Self::mark_synced`]
/// and [`Self::erase`] take its parts, as the job has them, and pass it on.
pub trait UserSession: Send {
    /// The newest pending event of the user, with what the job must know
    /// around it, in one round trip.
    fn newest_pending(&mut self) -> impl Future<Output = sqlx::Result<Option<NextEvent>>> + Send;
    /// Ends one event.
    fn finish<'a>(
        &'a mut self,
        ending: Ending<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Ends every pending event of the user older than `newest`; returns
    /// how many.
    fn supersede_older(&mut self, newest: i64) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Puts an event back to be dispatched later.
    fn snooze<'a>(
        &'a mut self,
        snooze: Snooze<'a>,
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
    /// What `holder`'s hold on `username` is now (see [`HolderClaim`]):
    /// asked when it stands in the way, since the holder read with the
    /// event may have let go since, or be claiming it for a create that
    /// may yet be refused.
    fn holder_claim<'a>(
        &'a mut self,
        holder: &'a HostUserId,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<HolderClaim>> + Send;
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
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.record_holding(Holding {
            id,
            profile,
            event_id,
        })
    }
    /// [`Self::record_found`], its parts in one.
    fn record_holding<'a>(
        &'a mut self,
        found: Holding<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records the user's Embedded user and profile and resolves its open
    /// conflicts; with `applied`, that event ends `applied` too.
    fn mark_synced<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
        applied: Option<i64>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let synced = Holding {
            id,
            profile,
            event_id,
        };
        self.record_synced(synced, applied)
    }
    /// [`Self::mark_synced`], the user's parts in one.
    fn record_synced<'a>(
        &'a mut self,
        synced: Holding<'a>,
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
    /// What the erasure under way of the user has done to Embedded user
    /// `id` so far (see `storage::erasures`).
    fn erasure_steps<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<ErasureSteps>> + Send;
    /// Records one step of the user's erasure on Embedded user `id`,
    /// durably, before the call it announces or after its answer.
    fn record_erasure_step<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        step: ErasureStep,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Completes a closure in one transaction: scrubs the user's email and
    /// name from every table, records the erasure with the time of each of
    /// its steps, ends the event.
    fn erase<'a>(
        &'a mut self,
        embedded_user_id: Option<&'a EmbeddedUserId>,
        closure_event_id: i64,
        outcome: ErasureOutcome,
        logs_skipped: Option<LogsSkipped>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.record_erasure(Erasure {
            embedded_user_id,
            closure_event_id,
            outcome,
            logs_skipped,
        })
    }
    /// [`Self::erase`], its parts in one.
    fn record_erasure<'a>(
        &'a mut self,
        erasure: Erasure<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Releases the lock.
    fn release(self) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// One user for the backfill to create: (host, profile, the intent of its
/// row's claim when the row was `creating`).
pub type Signup<'a> = (&'a HostUserId, &'a Profile, Option<Intent>);

/// An event's state, and when it comes due if pending: (id, state, due).
pub type EventStateDue = (i64, String, DateTime<Utc>);

/// What the backfill does to the worker's tables: many users a statement,
/// under the per-user locks its own session holds (the jobs' locks, so that
/// a job and the backfill never act on one user at once). On PostgreSQL the
/// session is a connection of its own, whose advisory locks live with it
/// ([`PgStore::backfill_session`]); on SQLite it is the pool and the
/// process's locks ([`SqliteStore::backfill_tables`]).
pub trait BackfillTables: Send {
    /// The clock the tables' times are written by.
    fn now(&mut self) -> impl Future<Output = sqlx::Result<DateTime<Utc>>> + Send;
    /// Takes the lock of each of `hosts` that is free; returns those it now
    /// holds. The others are busy.
    fn try_lock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<String>>> + Send;
    /// Releases locks taken by [`Self::try_lock_many`].
    fn unlock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records the intent to create for many locked host users whose
    /// usernames were checked free. A username claimed meanwhile fails it
    /// whole (a unique violation) and nothing is claimed; the caller then
    /// claims one by one with [`Self::claim_one_for_create`].
    fn claim_many_for_create<'a>(
        &'a mut self,
        intents: &'a [ClaimIntent<'a>],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records the intent to create `profile` for `host`, one user alone,
    /// keeping the last event id of its row; a username another host user
    /// holds is refused.
    fn claim_one_for_create<'a>(
        &'a mut self,
        host: &'a HostUserId,
        profile: &'a Profile,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send;
    /// Records each host user as synced with its Embedded user and profile,
    /// resolving its open conflicts over another username; the last event id
    /// is kept. Returns how many rows it changed.
    fn mark_synced_many<'a>(
        &'a mut self,
        found: &'a [Found<'a>],
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Records that `host` has no Embedded user (in `state`); its last event
    /// id is kept.
    fn set_without_user<'a>(
        &'a mut self,
        host: &'a HostUserId,
        state: UserState,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Reports a conflict once; returns whether a row was added. A conflict
    /// added gets an event of its own, a `signup` of the user's profile
    /// (`conflict.username`, `full_name`) ended `conflict`, as if the host
    /// had written it: an operator's retry, or the conflict's user woken
    /// when the username is free, applies it.
    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
        full_name: Option<&'a FullName>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
    /// Rows `creating` claimed at or after `since`, in host id order after
    /// `after`: the backfill's creates waiting for their user id.
    fn unconfirmed_since<'a>(
        &'a mut self,
        since: DateTime<Utc>,
        after: &'a str,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send;
    /// Of `hosts`, the rows still `creating`.
    fn unconfirmed_of<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send;
    /// How many rows claimed at or after `since` are still `creating`.
    fn count_unconfirmed_since(
        &mut self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// Writes one `signup` event per user to create, as the host app would,
    /// but already dispatched: the backfill runs their jobs itself. Returns
    /// (event id, host user).
    fn record_signups<'a>(
        &'a mut self,
        creates: &'a [Signup<'a>],
    ) -> impl Future<Output = sqlx::Result<Vec<(i64, HostUserId)>>> + Send;
    /// The state of some events, and when a pending one comes due.
    fn event_states<'a>(
        &'a mut self,
        ids: &'a [i64],
    ) -> impl Future<Output = sqlx::Result<Vec<EventStateDue>>> + Send;
}

/// What operators read: `status`, `conflicts`, `/readyz`, `/metrics`.
pub trait Reports: Send + Sync {
    /// Whether the database answers.
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>>;
    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>>;
    /// The conflicts in `status`, oldest first.
    fn conflicts(&self, status: ConflictStatus) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>>;
    /// The open conflicts, oldest first.
    fn open_conflicts(&self) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        self.conflicts(ConflictStatus::Open)
    }
    /// One conflict, by id.
    fn conflict(&self, id: i64) -> BoxFuture<'_, sqlx::Result<Option<ConflictRow>>>;
    /// The deployment's pause, if an operator paused it.
    fn pause_state(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>>;
}

/// What operators switch for the whole deployment.
pub trait Operate: Send + Sync {
    /// Pauses every process's API calls (kept while already paused, its
    /// reason updated); returns the pause.
    fn pause<'a>(
        &'a self,
        by: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<Pause>>;
    /// Lifts the pause; returns the one lifted, if any.
    fn resume(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>>;
    /// Events as `filter` says, newest first.
    fn events<'a>(
        &'a self,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, sqlx::Result<Vec<crate::domain::EventRow>>>;
    /// Puts the newest event of each user `target` names back to pending,
    /// due at once, its attempts reset; returns how many.
    fn retry_events<'a>(&'a self, target: &'a RetryTarget) -> BoxFuture<'a, sqlx::Result<u64>>;
    /// Everything about `host`, with its `recent` newest events.
    fn user_record<'a>(
        &'a self,
        host: &'a str,
        recent: i64,
    ) -> BoxFuture<'a, sqlx::Result<UserRecord>>;
    /// The proofs of erasure, newest first, at most `limit`.
    fn erasures(&self, limit: i64) -> BoxFuture<'_, sqlx::Result<Vec<ErasureRow>>>;
    /// How many events ended in each state in each minute since `since`
    /// (by `finished_at`), oldest minute first; minutes without any are
    /// left out.
    fn finished_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<FinishedInMinute>>>;
}

/// What reconciliation does to conflicts, for an operator (`conflicts
/// resolve`) and for the worker's rechecks. Each change of a conflict
/// writes its webhook in the same transaction.
pub trait Reconcile: Send + Sync {
    /// The newest event of `host`, whatever its state.
    fn latest_event<'a>(
        &'a self,
        host: &'a HostUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<LatestEvent>>>;
    /// The Embedded user `host` is mapped to, if it is synced.
    fn mapped_user<'a>(
        &'a self,
        host: &'a HostUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<String>>>;
    /// Resolves open conflict `id` `ignored`; false when it is not open.
    fn ignore<'a>(&'a self, id: i64, operator: Operator<'a>) -> BoxFuture<'a, sqlx::Result<bool>>;
    /// Marks open conflict `id` as retried by `operator` (it resolves
    /// `retried` when its user syncs) and puts the host user's newest event
    /// back to pending at once, its attempts reset: for the workers to
    /// dispatch (`dispatch`), or as dispatched already, for the caller to
    /// run. Returns that event, or `None` when the conflict is not open or
    /// its user has no event.
    fn ask_retry<'a>(
        &'a self,
        id: i64,
        operator: Operator<'a>,
        dispatch: bool,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>>;
    /// Links a conflict's host user to the Embedded user holding its
    /// username, under the user's lock, after checking that nobody else
    /// holds either; the conflict resolves `adopted`, the user's other open
    /// conflicts `moot`.
    fn adopt<'a>(&'a self, adoption: Adoption<'a>) -> BoxFuture<'a, sqlx::Result<Adopted>>;
    /// Records the full name an adopted user was brought in line with.
    fn record_full_name<'a>(
        &'a self,
        host: &'a HostUserId,
        user: &'a EmbeddedUserId,
        full_name: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>>;
    /// Claims up to `limit` open conflicts due a recheck (reported at least
    /// `interval` ago: the job that reported one has just looked), and
    /// moves each one's next recheck `interval` ahead (every process shares
    /// the schedule: each conflict is looked at once per interval).
    fn claim_rechecks(
        &self,
        limit: u32,
        interval: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>>;
    /// Sends the newest event of `host` again at once when it ended in a
    /// conflict; returns it.
    fn wake<'a>(&'a self, host: &'a str) -> BoxFuture<'a, sqlx::Result<Option<i64>>>;
    /// Whether `holder` still holds or claims `username`.
    fn still_holds<'a>(
        &'a self,
        holder: &'a str,
        username: &'a str,
    ) -> BoxFuture<'a, sqlx::Result<bool>>;
}

/// What the dispatcher, the sweeper, the ops server and operators' commands
/// need of a backend: a handful of calls a second, through one trait
/// object.
pub trait Store: Outbox + Reports + Reconcile + Operate {}

impl<T: Outbox + Reports + Reconcile + Operate> Store for T {}

/// The database `database.url` names, connected: PostgreSQL (beside Redis)
/// or a SQLite file (the single-file mode, queue included).
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Database {
    /// Connects with at least `min_size` connections (at most
    /// `database.max_connections` when that is more).
    pub async fn connect(settings: &DatabaseSettings, min_size: u32) -> anyhow::Result<Self> {
        let size = settings.max_connections.max(min_size);
        Self::connect_apart(settings, size, Duration::from_secs(10)).await
    }

    /// A pool of at most `size` connections, whose callers wait at most
    /// `acquire_timeout` for one: the ops server's is one apart, so that
    /// however many requests it serves, the pipeline's pool is never
    /// theirs.
    pub async fn connect_apart(
        settings: &DatabaseSettings,
        size: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(match settings.kind()? {
            DatabaseKind::Postgres => {
                Self::Postgres(pg::connect(settings, size, acquire_timeout).await?)
            }
            DatabaseKind::Sqlite => {
                Self::Sqlite(sqlite::connect(settings, size, acquire_timeout).await?)
            }
        })
    }

    /// Applies the migrations not applied yet; returns how many ran.
    pub async fn migrate(&self) -> anyhow::Result<usize> {
        match self {
            Self::Postgres(pool) => pg::migrate(pool).await,
            Self::Sqlite(pool) => sqlite::migrate(pool).await,
        }
    }

    /// Fails, saying what to run, when a migration is missing.
    pub async fn check_current(&self) -> anyhow::Result<()> {
        match self {
            Self::Postgres(pool) => pg::check_current(pool).await,
            Self::Sqlite(pool) => sqlite::check_current(pool).await,
        }
    }

    /// Fails, saying what to configure, when the database is reached
    /// through a pooler that shares server sessions between clients
    /// (PgBouncer in transaction mode): the per-user locks and LISTEN need
    /// sessions of their own.
    pub async fn check_sessions(&self) -> anyhow::Result<()> {
        match self {
            Self::Postgres(pool) => pg::refuse_transaction_pooling(pool).await,
            Self::Sqlite(_) => Ok(()),
        }
    }

    /// The webhook deliveries of this database (no per-user lock is
    /// involved: any number may exist beside the process's store).
    pub fn deliveries(&self) -> Arc<dyn Deliveries> {
        match self {
            Self::Postgres(pool) => Arc::new(pg::PgStore::new(pool.clone())),
            Self::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
        }
    }

    /// Keys this process's username fingerprints with the deployment's key:
    /// `log.fingerprint_key` when set, else the one `migrate` made in the
    /// database, so that every process's logs correlate and nobody without
    /// the key can test a candidate email against them.
    pub async fn key_fingerprints(&self, configured: Option<&SecretString>) -> anyhow::Result<()> {
        let key = match configured {
            Some(key) => key.expose_secret().to_owned(),
            None => match self {
                Self::Postgres(pool) => {
                    sqlx::query_scalar("SELECT fingerprint_key FROM user_sync.deployment")
                        .fetch_one(pool)
                        .await?
                }
                Self::Sqlite(pool) => {
                    sqlx::query_scalar("SELECT fingerprint_key FROM user_sync_deployment")
                        .fetch_one(pool)
                        .await?
                }
            },
        };
        crate::domain::set_fingerprint_key(key.as_bytes());
        Ok(())
    }

    /// Erasure requests and their proof on this database (no per-user
    /// lock is involved).
    pub fn erasures(&self) -> Arc<dyn ErasureRequests> {
        match self {
            Self::Postgres(pool) => Arc::new(pg::PgStore::new(pool.clone())),
            Self::Sqlite(pool) => Arc::new(sqlite::SqliteStore::new(pool.clone())),
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

/// Whether the database of `pool` answers.
async fn ping<DB>(pool: &sqlx::Pool<DB>) -> sqlx::Result<()>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

/// Whether `error` (anywhere in its chain) says the worker's tables are not
/// there: the schema was dropped, or never migrated. Retrying cannot help.
pub fn is_schema_missing(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() else {
            return false;
        };
        // PostgreSQL: undefined_table, invalid_schema_name; SQLite says so.
        matches!(db.code().as_deref(), Some("42P01" | "3F000"))
            || db.message().starts_with("no such table")
    })
}

/// What a long-running part does after a round failed with `error`: the
/// worker's tables gone stop it for good (`Err`, saying to migrate); any
/// other error is logged as `what` and waited out with the restart backoff,
/// longer after each of `failures` in a row. `Ok(true)` when the shutdown
/// came during the wait.
pub async fn pause_after_failure(
    error: anyhow::Error,
    failures: &mut u32,
    shutdown: &tokio_util::sync::CancellationToken,
    what: &'static str,
) -> anyhow::Result<bool> {
    if is_schema_missing(&error) {
        return Err(error
            .context("the worker's tables are gone from the database: run `user-sync migrate`"));
    }
    *failures = failures.saturating_add(1);
    tracing::warn!(error = %format!("{error:#}"), "{what}");
    Ok(crate::retry::Backoff::RESTART
        .pause(*failures, shutdown)
        .await)
}

/// Whether `error` is a unique-constraint violation.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

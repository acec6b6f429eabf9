//! The pipeline's storage on PostgreSQL: the outbox is dispatched by one
//! process at a time, which moves the dispatcher's own row on past the
//! transactions it took the events of ([`events::claim_due`]), never
//! writing to a new event's row; the dispatcher is woken by
//! `NOTIFY`, and the per-user lock is a session-level advisory lock, so any
//! number of processes may share the database. A job's users share one connection,
//! and their statements go in batches ([`session`]).
//!
//! One file per table, as on SQLite: [`events`], [`users`], [`conflicts`],
//! [`erasures`]; what operators read in [`reports`]; what the backfill
//! writes in [`backfill`]; the migrations in [`migrate`].

mod backfill;
mod conflicts;
mod erasures;
mod events;
mod migrate;
mod nodelay;
mod pooler;
mod reports;
mod retention;
mod session;
mod users;
mod webhooks;

pub use events::{finish_many, newest_pending_many};
pub(super) use migrate::{check_current, run as migrate};
pub use pooler::refuse_transaction_pooling;
pub use retention::sweep_in as sweep_retention_in;
pub use users::{claim_each_for_create, holders_of, mark_synced};

use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::config::DatabaseSettings;
use crate::domain::HostUserId;

use super::{Claimed, ClaimedBatch, Outbox, SyncStore, WakeUps};

/// The channel the outbox trigger notifies.
pub const CHANNEL: &str = "user_sync_events";

/// Turns sequential scans off for the rest of the caller's transaction, as
/// `session::OUTCOME_BY_KEY` does, for a statement that reaches its rows by
/// key in a transaction opened elsewhere (the username claim, which may run
/// as a savepoint of the caller's; an erasure's end).
async fn by_key_from_here(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql("SET LOCAL enable_seqscan = off")
        .execute(tx)
        .await?;
    Ok(())
}

/// The worker's tables in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The dispatcher's kept snapshots this process's sweeps have read, and
    /// when: an event visible in one read `after` ago was dispatched at
    /// least that long ago (see [`Outbox::sweep_stale`]).
    dispatched: Arc<Mutex<VecDeque<(Instant, String)>>>,
    /// How long an event dispatched again may wait on its job before it is
    /// due once more (see [`events::claim_due`]).
    lease: Duration,
}

/// The lease of an event dispatched again, unless set: the default of
/// `sweeper.redispatch_after`.
const DEFAULT_LEASE: Duration = Duration::from_secs(300);

/// How many of the dispatcher's snapshots a process keeps for its sweeps:
/// one a sweep, every `sweeper.interval` (5 s), over more than an hour.
const KEPT_SNAPSHOTS: usize = 1024;

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            dispatched: Arc::default(),
            lease: DEFAULT_LEASE,
        }
    }

    /// Gives an event dispatched again `lease` to end before it is due once
    /// more: `sweeper.redispatch_after`, the wait after which the sweeper
    /// calls any other job lost.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Remembers `snapshot`, read now, and returns the newest one this
    /// process read at least `after` ago. `None` when it has none that old
    /// (it started less than `after` ago).
    fn dispatched_before(&self, snapshot: String, after: Duration) -> Option<String> {
        let now = Instant::now();
        let mut kept = self
            .dispatched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.back().is_none_or(|(_, last)| *last != snapshot) {
            kept.push_back((now, snapshot));
        }
        while kept.len() > KEPT_SNAPSHOTS {
            kept.pop_front();
        }
        kept.iter()
            .rev()
            .find(|(read, _)| now.saturating_duration_since(*read) >= after)
            .map(|(_, snapshot)| snapshot.clone())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection of the backfill's own, out of the pool: its temporary
    /// tables and the locks of the users it acts on live and die with it,
    /// so it never goes back to the pool. Its
    /// [`BackfillTables`](crate::storage::BackfillTables) are the worker's
    /// tables under those locks.
    pub async fn backfill_session(&self) -> sqlx::Result<PgConnection> {
        Ok(self.pool.acquire().await?.detach())
    }
}

impl Outbox for PgStore {
    fn claim_due(&self, limit: u32) -> BoxFuture<'_, sqlx::Result<Box<dyn ClaimedBatch>>> {
        Box::pin(async move {
            // The dispatch lock stays held (so that other dispatchers claim
            // nothing) and the dispatcher's row moved on, uncommitted, until
            // the commit, which comes only once the jobs are in the queue;
            // abandoned or dropped, the transaction rolls back and nothing
            // has moved. It commits as an outcome does, without waiting for
            // the disk: a move lost in a crash of the database server only
            // dispatches its events once more.
            let mut tx = self.pool.begin_with(events::CLAIM).await?;
            let (events, full) = events::claim_due(&mut tx, limit, self.lease).await?;
            Ok(Box::new(PgClaim { tx, events, full }) as Box<dyn ClaimedBatch>)
        })
    }

    fn next_due_in(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>> {
        Box::pin(events::next_due_in(&self.pool))
    }

    fn sweep_stale(&self, after: Duration) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move {
            let now = events::dispatched_snapshot(&self.pool).await?;
            // A process younger than `after` knows no snapshot that old:
            // the dispatcher's present one stands in, and an event's own
            // `available_at` (its insert, or when it was last due) says
            // how long it has waited. It may send again an event that was
            // dispatched late (after a pause, say): harmless. The counts
            // of ends are folded on the same beat.
            let then = self.dispatched_before(now.clone(), after).unwrap_or(now);
            let lost = events::sweep_stale(&self.pool, &then, after).await?;
            // The events are marked already: a fold that fails is tried
            // again at the next sweep, and does not make this one fail.
            if let Err(error) = events::compact_finished_counts(&self.pool).await {
                tracing::warn!(%error, "folding the counts of ended events failed; the next sweep tries again");
            }
            Ok(lost)
        })
    }

    fn wake_ups(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn WakeUps>>> {
        Box::pin(async move {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANNEL).await?;
            Ok(Box::new(Notified(listener)) as Box<dyn WakeUps>)
        })
    }
}

/// A claim on PostgreSQL: its transaction, open until the queue took the
/// events.
struct PgClaim {
    tx: Transaction<'static, Postgres>,
    events: Vec<Claimed>,
    full: bool,
}

impl ClaimedBatch for PgClaim {
    fn events(&self) -> &[Claimed] {
        &self.events
    }

    fn stopped_at_limit(&self) -> bool {
        self.full
    }

    fn confirm(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(self.tx.commit())
    }

    fn abandon(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(self.tx.rollback())
    }
}

/// `NOTIFY`s of the outbox trigger, sent when the host's transaction
/// commits.
struct Notified(PgListener);

impl WakeUps for Notified {
    fn next(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.0.recv().await {
                tracing::warn!(%error, "outbox listener interrupted; it reconnects");
            }
            while self.0.next_buffered().is_some() {}
        })
    }
}

impl SyncStore for PgStore {
    type Session = session::BatchSession;

    fn lock_users<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> impl Future<Output = sqlx::Result<super::Sessions<Self::Session>>> + Send {
        session::lock_each(&self.pool, hosts)
    }

    async fn host_of_pending(&self, id: i64) -> sqlx::Result<Option<Result<HostUserId, String>>> {
        events::host_of_pending(&self.pool, id).await
    }

    async fn mark_invalid(&self, id: i64, reason: &str) -> sqlx::Result<()> {
        events::mark_invalid(&self.pool, id, reason).await
    }

    async fn snooze(&self, id: i64, delay: Duration) -> sqlx::Result<()> {
        let mut conn = self.pool.acquire().await?;
        events::snooze(&mut conn, id, delay, false, None).await
    }
}

/// Opens a pool of at most `size` connections on the configured PostgreSQL
/// database, whose callers wait at most `acquire_timeout` for one.
/// Statement logging is off: a logged statement would print bound values,
/// emails among them.
pub(in crate::storage) async fn connect(
    settings: &DatabaseSettings,
    size: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let options = PgConnectOptions::from_str(settings.url()?.expose_secret())
        .context("database.url is not a valid PostgreSQL URL")?
        .application_name("user-sync")
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(acquire_timeout)
        // No ping before each use: a broken connection fails the statement,
        // and every caller already retries (the job, the dispatcher loop).
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // No JIT compilation: every statement of the worker reads a
                // few rows by key, yet one whose estimate is off (a table
                // never analyzed yet, a plan made for any parameter) was
                // compiled on each run, half a second each time (seen on
                // the dispatcher's claim during a burst). Set once per
                // connection, for its session.
                // A simple query: nothing prepared, so that a pooler in
                // transaction mode is refused by `refuse_transaction_pooling`
                // with its own message, not by a clash of statement names.
                sqlx::raw_sql("SET jit = off").execute(&mut *conn).await?;
                nodelay::after_connect(conn).await;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to the database (database.url)")?;
    Ok(pool)
}

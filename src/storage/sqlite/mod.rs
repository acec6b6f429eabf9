//! The pipeline's storage on SQLite, the single-file mode: the worker's
//! tables live in the host's SQLite file beside its own, prefixed
//! `user_sync_` (SQLite has no schemas), and the queue is apalis-sqlite in
//! the same file (`queue::SqliteQueue`).
//!
//! What differs from PostgreSQL, and why:
//! - **One process per file.** SQLite has no advisory locks, so the
//!   per-user lock is a set in the process (`UserLocks`), and a process
//!   that works on the file (`run`) first takes an exclusive lock on
//!   `<file>.user-sync.lock`; a second one refuses to start.
//! - **No LISTEN/NOTIFY.** The dispatcher polls the outbox every
//!   [`POLL`] instead: an indexed read of a local file.
//! - **Times are text** (`YYYY-MM-DDTHH:MM:SS.sssZ`, UTC), written by the
//!   worker's clock, so that they compare in order.

mod backfill;
mod conflicts;
mod erasures;
mod events;
mod reports;
mod retention;
mod session;
mod users;
mod webhooks;

pub use backfill::{SqliteBackfill, json_list};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::DatabaseSettings;
use crate::domain::HostUserId;

use super::{Claimed, ClaimedBatch, Outbox, SyncStore, WakeUps};

/// How often the dispatcher looks at the outbox (no NOTIFY on SQLite).
pub const POLL: Duration = Duration::from_millis(200);
/// The worker's migration bookkeeping, apart from the host app's
/// `_sqlx_migrations`.
pub const MIGRATIONS_TABLE: &str = "user_sync_migrations";
/// The queue's own migration bookkeeping (apalis-sqlite's tables).
pub const QUEUE_MIGRATIONS_TABLE: &str = "user_sync_queue_migrations";

/// The worker's tables in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    locks: UserLocks,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            locks: UserLocks::default(),
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// What the backfill writes, through the pool, under per-user locks it
    /// takes from this store's: a job of this process and the backfill
    /// never act on one user at once.
    pub fn backfill_tables(&self) -> SqliteBackfill {
        SqliteBackfill::new(self.pool.clone(), self.locks.clone())
    }
}

/// The connection options of `settings`' SQLite URL. The file is created
/// when missing; statement logging is off (see [`super::connect`]).
pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<SqliteConnectOptions> {
    Ok(
        SqliteConnectOptions::from_str(settings.url()?.expose_secret())
            .context("database.url is not a valid SQLite URL")?
            .create_if_missing(true)
            // Readers never wait for the writer; set once, kept by the file.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Writers take turns: wait for the file rather than fail.
            .busy_timeout(Duration::from_secs(10))
            // Deleted and overwritten values are zeroed on the pages their
            // change rewrites, not left in free space where a copy of the
            // file would keep an erased user's email (see `erasures::erase`
            // for the WAL). FAST, not ON: ON also zeroes whole pages freed,
            // at the cost of extra writes, and made the pipeline's writers
            // meet `database is locked`; a page freed whole keeps its
            // content until reused or `VACUUM`.
            .pragma("secure_delete", "FAST")
            .disable_statement_logging(),
    )
}

/// Opens a pool of at most `size` connections on the configured SQLite
/// file, whose callers wait at most `acquire_timeout` for one.
pub(in crate::storage) async fn connect(
    settings: &DatabaseSettings,
    size: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<SqlitePool> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .acquire_timeout(acquire_timeout)
        .connect_with(connect_options(settings)?)
        .await
        .context("cannot open the SQLite database (database.url)")
}

fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

fn queue_migrator() -> Migrator {
    let mut migrator = apalis_sqlite::SqliteStorage::migrations();
    migrator.dangerous_set_table_name(QUEUE_MIGRATIONS_TABLE);
    migrator
}

/// Applies the worker's and the queue's migrations not applied yet;
/// returns how many of the worker's ran.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<usize> {
    let before = applied(pool, MIGRATIONS_TABLE).await?;
    migrator()
        .run(pool)
        .await
        .context("applying the worker's migrations")?;
    queue_migrator()
        .run(pool)
        .await
        .context("applying the queue's migrations")?;
    let after = applied(pool, MIGRATIONS_TABLE).await?;
    Ok(after.saturating_sub(before))
}

async fn applied(pool: &SqlitePool, table: &'static str) -> anyhow::Result<usize> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
    )
    .bind(table)
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    let count: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(pool)
            .await?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Fails, saying what to run, when the file lacks a migration this binary
/// needs.
pub async fn check_current(pool: &SqlitePool) -> anyhow::Result<()> {
    let expected = migrator().iter().count() + queue_migrator().iter().count();
    let applied =
        applied(pool, MIGRATIONS_TABLE).await? + applied(pool, QUEUE_MIGRATIONS_TABLE).await?;
    anyhow::ensure!(
        applied >= expected,
        "the database schema is not up to date ({applied} of {expected} migrations applied): run `user-sync migrate`"
    );
    Ok(())
}

/// The right to work on one SQLite file, held by one process at a time:
/// the per-user locks of a SQLite store are in the process, so two
/// processes on one file could act on one user at once.
#[derive(Debug)]
pub struct ProcessLock {
    /// Locked while this value lives; closing it releases the lock.
    _file: std::fs::File,
}

impl ProcessLock {
    /// Takes the lock of the file `settings` name, or says who to stop.
    /// An in-memory database is refused: the worker's tables, its queue
    /// and a second connection would each see a database of their own.
    pub fn acquire(settings: &DatabaseSettings) -> anyhow::Result<Self> {
        let options = connect_options(settings)?;
        let path = options.get_filename();
        anyhow::ensure!(
            !is_in_memory(settings.url()?.expose_secret(), path),
            "database.url names an in-memory SQLite database: the worker needs a file \
             (sqlite:path/to/file.db)"
        );
        let lock_path = lock_path(path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another user-sync process is working on this SQLite database ({} is locked): \
                 on SQLite, run one process per database file",
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        }
    }
}

/// `sqlite::memory:`, `?mode=memory`, or no file at all.
fn is_in_memory(url: &str, path: &Path) -> bool {
    url.contains(":memory:") || url.contains("mode=memory") || path.as_os_str().is_empty()
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".user-sync.lock");
    PathBuf::from(name)
}

/// The per-user locks of one process: the host users a job is acting on.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserLocks(Arc<Mutex<HashSet<String>>>);

impl UserLocks {
    /// Takes `host`'s lock if it is free; dropping the guard releases it.
    pub(crate) fn try_lock(&self, host: &HostUserId) -> Option<UserLockGuard> {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.insert(host.as_str().to_owned())
            .then(|| UserLockGuard {
                locks: self.clone(),
                host: host.as_str().to_owned(),
            })
    }
}

/// One held per-user lock.
pub(crate) struct UserLockGuard {
    locks: UserLocks,
    host: String,
}

impl Drop for UserLockGuard {
    fn drop(&mut self) {
        let mut held = self
            .locks
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.remove(&self.host);
    }
}

/// The worker's clock as the tables store it.
/// Opens a transaction that reads before it writes: it takes the write lock
/// at once (waiting for it, as every write does, up to the busy timeout). A
/// deferred one would upgrade at its first write, and SQLite refuses that at
/// once, without waiting, when another connection wrote since its read.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

pub(crate) fn text_at(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub(crate) fn now_text() -> String {
    text_at(Utc::now())
}

pub(crate) fn parse_at(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

impl Outbox for SqliteStore {
    fn claim_due(&self, limit: u32) -> BoxFuture<'_, sqlx::Result<Box<dyn ClaimedBatch>>> {
        Box::pin(async move {
            let events = events::claim_due(&self.pool, limit).await?;
            Ok(Box::new(SqliteClaim {
                pool: self.pool.clone(),
                events,
            }) as Box<dyn ClaimedBatch>)
        })
    }

    fn next_due_in(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>> {
        Box::pin(events::next_due_in(&self.pool))
    }

    fn sweep_stale(&self, after: Duration) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(events::sweep_stale(&self.pool, after))
    }

    fn wake_ups(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn WakeUps>>> {
        Box::pin(async { Ok(Box::new(Poll) as Box<dyn WakeUps>) })
    }
}

/// A claim on SQLite, committed when it was made: confirming it is a no-op,
/// abandoning it clears the marks.
struct SqliteClaim {
    pool: SqlitePool,
    events: Vec<Claimed>,
}

impl ClaimedBatch for SqliteClaim {
    fn events(&self) -> &[Claimed] {
        &self.events
    }

    fn confirm(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn abandon(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(async move { events::abandon(&self.pool, &self.events).await })
    }
}

/// SQLite cannot tell another process that a row arrived: a short poll.
struct Poll;

impl WakeUps for Poll {
    fn next(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(tokio::time::sleep(POLL))
    }
}

impl SyncStore for SqliteStore {
    type Session = session::SqliteUserSession;

    async fn lock_users<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> sqlx::Result<super::Sessions<Self::Session>> {
        Ok(hosts
            .iter()
            .map(|host| {
                self.locks.try_lock(host).map(|guard| {
                    session::SqliteUserSession::new(self.pool.clone(), host.clone(), guard)
                })
            })
            .collect())
    }

    async fn host_of_pending(&self, id: i64) -> sqlx::Result<Option<Result<HostUserId, String>>> {
        events::host_of_pending(&self.pool, id).await
    }

    async fn mark_invalid(&self, id: i64, reason: &str) -> sqlx::Result<()> {
        let invalid = crate::domain::EventState::Invalid;
        events::finish(&self.pool, id, invalid, Some(reason)).await
    }

    fn snooze(&self, id: i64, delay: Duration) -> impl Future<Output = sqlx::Result<()>> + Send {
        events::snooze(&self.pool, id, delay, false, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_databases_are_recognised() {
        assert!(is_in_memory(
            "sqlite::memory:",
            Path::new("file:sqlx-in-memory-1")
        ));
        assert!(is_in_memory("sqlite:x.db?mode=memory", Path::new("x.db")));
        assert!(!is_in_memory(
            "sqlite:/data/app.db",
            Path::new("/data/app.db")
        ));
    }

    #[test]
    fn the_lock_file_sits_beside_the_database() {
        assert_eq!(
            lock_path(Path::new("/data/app.db")),
            PathBuf::from("/data/app.db.user-sync.lock")
        );
    }

    #[test]
    fn stored_times_compare_in_order_as_text() {
        let earlier = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.006Z")
            .expect("a time")
            .with_timezone(&Utc);
        let later = earlier + chrono::Duration::milliseconds(995);
        assert_eq!(text_at(earlier), "2026-01-02T03:04:05.006Z");
        assert!(text_at(earlier) < text_at(later));
        assert_eq!(parse_at(&text_at(later)), Some(later));
    }
}

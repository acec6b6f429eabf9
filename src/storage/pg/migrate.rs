//! `user-sync migrate`: creates and upgrades schema `user_sync`.
//!
//! The bookkeeping table is `user_sync._sqlx_migrations`, so the host app's
//! own sqlx migrations (in `public._sqlx_migrations`) are never touched and
//! never see ours. Safe to run on every deploy: applied migrations are
//! skipped, and concurrent runs serialise on an advisory lock of our own.
//!
//! # Indexes built beside a running deploy
//!
//! A migration that builds an index on the outbox does so `CONCURRENTLY`
//! (0009), which takes no lock that stops the host's inserts but waits for
//! every transaction of the database that is older than it. A second
//! `migrate` *waiting* for our lock would be such a transaction, and wait
//! for us in turn: so the lock is taken by polling `pg_try_advisory_lock`,
//! which waits outside any statement, and sqlx's own lock (a blocking one,
//! which the host app's sqlx migrations take too, under the same key) is
//! not taken. What one migration cannot do, because a statement
//! `CONCURRENTLY` must be alone in its file, is done here after the
//! migrations ([`finish_index_swap`]). Indexes of large tables that no
//! migration creates are built after the migrations, concurrently too (see
//! [`CONCURRENT_INDEXES`]).

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// Where the bookkeeping lives.
pub const MIGRATIONS_TABLE: &str = "user_sync._sqlx_migrations";

/// How often a `migrate` waiting for another one looks again.
const LOCK_POLL: Duration = Duration::from_millis(200);

fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.create_schema("user_sync");
    // Our own lock serialises every run (see the module's doc).
    migrator.set_locking(false);
    migrator
}

/// Applies every migration not applied yet; returns how many ran (this
/// call, not a concurrent one: the count is taken under our own lock).
pub async fn run(pool: &PgPool) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    check_encoding(&mut conn).await?;
    loop {
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('user_sync.migrate'))")
                .fetch_one(&mut *conn)
                .await?;
        if locked {
            break;
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
    let outcome = async {
        drop_invalid_index(&mut conn).await?;
        let before = applied(&mut conn).await?;
        apply(&mut conn).await?;
        build_indexes(&mut conn).await?;
        let after = applied(&mut conn).await?;
        finish_index_swap(&mut conn).await?;
        anyhow::Ok(after.saturating_sub(before))
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(hashtext('user_sync.migrate'))")
        .execute(&mut *conn)
        .await?;
    outcome
}

/// How many times a migration that could not take its lock in time
/// (`lock_timeout`, set by a migration that needs the outbox's exclusive
/// lock, 0013) is tried again, and how long apart.
const LOCK_TRIES: u32 = 30;
const LOCK_RETRY: Duration = Duration::from_secs(1);

/// Runs the migrator. A migration that waited its `lock_timeout` for a
/// host transaction holding the outbox rolled back whole; it is tried
/// again a moment later, so that the host's inserts queue behind it for
/// two seconds at most, never for as long as a host transaction lasts.
async fn apply(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut tries = 0;
    loop {
        match migrator().run(&mut *conn).await {
            Ok(()) => return Ok(()),
            Err(error) if lock_timed_out(&error) && tries + 1 < LOCK_TRIES => {
                tries += 1;
                tracing::warn!(
                    tries,
                    "a migration could not lock the outbox while a host transaction held it; trying again"
                );
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err(error) => return Err(error).context("applying the worker's migrations"),
        }
    }
}

/// Whether a migration failed on its `lock_timeout` (SQLSTATE 55P03).
fn lock_timed_out(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _)) = error else {
        return false;
    };
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

/// Refuses a database of encoding SQL_ASCII. It stores any bytes in a text
/// column unchecked, and the server then checks each value it sends to the
/// worker (which speaks UTF-8): one host value in another encoding (a
/// Latin-1 email) fails every statement that reads it, the dispatcher's
/// claim included, again and again. Every other encoding is checked on
/// the way in.
async fn check_encoding(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(
        encoding != "SQL_ASCII",
        "the database's encoding is SQL_ASCII, which stores text unchecked: one value in \
         another encoding (a Latin-1 email) would stop the worker's statements for good. \
         Install the worker in a database of encoding UTF8"
    );
    Ok(())
}

/// An index build `CONCURRENTLY` that was cut short (the process killed, a
/// deadlock) leaves the index behind, invalid: `IF NOT EXISTS` would then
/// keep it as it is. Dropped here, its migration builds it again.
async fn drop_invalid_index(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let invalid: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index
                        WHERE indexrelid = to_regclass('user_sync.events_by_user_hash')
                          AND NOT indisvalid)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if invalid {
        sqlx::query("DROP INDEX CONCURRENTLY IF EXISTS user_sync.events_by_user_hash")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Drops the outbox's btree index by host user (0001) once its hash index
/// (0009) is valid: the btree refuses long host ids, which made the host's
/// own inserts fail. Drops the indexes of the dispatch marks (0001) once
/// the dispatcher's own ones (0013, [`CONCURRENT_INDEXES`]) are valid: a
/// new event entered one at the host's insert, and an event's end could
/// not be HOT while they stood. `CONCURRENTLY`, so that the host's inserts
/// and the worker's reads never wait for it. A worker of the older version
/// still running meanwhile claims through a scan of the outbox until it
/// stops: slower, never wrong (an event it dispatches too is dispatched
/// twice, which is harmless).
async fn finish_index_swap(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    if index_state(conn, "events_pending").await? == Some(true)
        && index_state(conn, "events_redispatch").await? == Some(true)
    {
        for name in ["events_to_dispatch", "events_in_flight"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS user_sync.{name}"
            )))
            .execute(&mut *conn)
            .await?;
        }
    }
    let hashed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_index
                        WHERE indexrelid = to_regclass('user_sync.events_by_user_hash')
                          AND indisvalid)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if hashed {
        sqlx::query("DROP INDEX CONCURRENTLY IF EXISTS user_sync.events_by_user")
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn applied(conn: &mut sqlx::PgConnection) -> anyhow::Result<usize> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('user_sync._sqlx_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(0);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM user_sync._sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    Ok(usize::try_from(count).unwrap_or(0))
}

/// Indexes of tables that grow large, built after the migrations with
/// `CREATE INDEX CONCURRENTLY`: inside a migration's transaction the build
/// would stop the host's inserts into the outbox for as long as it reads
/// the whole table (seconds per million rows). (name, definition.)
const CONCURRENT_INDEXES: &[(&str, &str)] = &[
    (
        // The pending events by the transaction that wrote them, in the
        // order the dispatcher takes them (0013): what the dispatcher, the
        // sweeper and `status` read. `txid IS NOT NULL` in the predicate
        // keeps it out of the plans of queries that do not name `txid`:
        // an older worker's by-user reads (`state = 'pending'` beside the
        // host user) stay on the hash index by user.
        "events_pending",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_pending
             ON user_sync.events (txid, id) WHERE state = 'pending' AND txid IS NOT NULL",
    ),
    (
        // The events marked to dispatch again, by when (0013).
        "events_redispatch",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_redispatch
             ON user_sync.events (available_at) WHERE redispatch",
    ),
    (
        // The finished events by state and end: the counts of `status` and
        // `/metrics` read only the failed, invalid and conflict entries, the
        // console's activity only the last minutes', retention only the old
        // ones (see 0010_retention.sql). An event adds one entry when it
        // finishes; a pending one none.
        "events_finished",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_finished
         ON user_sync.events (state, finished_at) WHERE state <> 'pending'",
    ),
];

/// Whether index `name` of schema `user_sync` exists, and if so whether it
/// is valid (a concurrent build that failed leaves an invalid one).
async fn index_state(conn: &mut sqlx::PgConnection, name: &str) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'user_sync' AND c.relname = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Builds each of [`CONCURRENT_INDEXES`] that is missing, or invalid (left
/// by a build that was cut short: it is dropped and built again).
async fn build_indexes(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    use anyhow::Context;
    for (name, definition) in CONCURRENT_INDEXES {
        match index_state(conn, name).await? {
            Some(true) => continue,
            Some(false) => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS user_sync.{name}"
                )))
                .execute(&mut *conn)
                .await?;
            }
            None => {}
        }
        tracing::info!(index = name, "building an index of the worker's tables");
        sqlx::raw_sql(*definition)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("building index user_sync.{name}"))?;
    }
    Ok(())
}

/// Fails, saying what to run, when the database lacks a migration this
/// binary needs, or one of the indexes `migrate` builds after them, or is
/// one the worker cannot run on. `run` never migrates by itself: schema
/// changes are a deploy step.
pub async fn check_current(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    check_encoding(&mut conn).await?;
    let expected = migrator().iter().count();
    let applied = applied(&mut conn).await?;
    anyhow::ensure!(
        applied >= expected,
        "the database schema is not up to date ({applied} of {expected} migrations applied): run `user-sync migrate`"
    );
    for (name, _) in CONCURRENT_INDEXES {
        anyhow::ensure!(
            index_state(&mut conn, name).await? == Some(true),
            "the database schema is not up to date (index user_sync.{name} is missing or \
             was never finished): run `user-sync migrate`"
        );
    }
    Ok(())
}

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
        // The indexes a migration's code needs are built before it when
        // their columns are there already (an upgrade from 0013 on): the
        // older workers go on dispatching while they build, and the
        // workers of this version start as soon as the migrations ran.
        if has_txid(&mut conn).await? {
            build_indexes(&mut conn).await?;
        }
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

/// Whether the outbox has its `txid` column (0013), which
/// [`CONCURRENT_INDEXES`] index.
async fn has_txid(conn: &mut sqlx::PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = to_regclass('user_sync.events')
                          AND attname = 'txid' AND NOT attisdropped)",
    )
    .fetch_one(conn)
    .await
}

/// Whether a migration failed on its `lock_timeout` (SQLSTATE 55P03), or
/// was chosen to end a deadlock with a worker's statement (40P01: 0014
/// marks the events in flight while an older worker ends some of them).
fn lock_timed_out(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    let (MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _)) = error else {
        return false;
    };
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03" || code == "40P01")
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
/// own inserts fail. Drops [`REPLACED_INDEXES`] once every one of
/// [`CONCURRENT_INDEXES`] is valid: while they stood, a new event entered
/// more indexes at the host's insert, and no end of an event was HOT.
/// `CONCURRENTLY`, so that the host's inserts and the worker's reads never
/// wait for it.
async fn finish_index_swap(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let mut all_valid = true;
    for (name, _) in CONCURRENT_INDEXES {
        all_valid &= index_state(conn, name).await? == Some(true);
    }
    if all_valid {
        for name in REPLACED_INDEXES {
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
        // Every event by the transaction that wrote it, in the order the
        // dispatcher takes them (0014): what the dispatcher, the sweeper
        // and `status` read. Not partial on the state, so that an event's
        // end changes no indexed column (a HOT update); `txid IS NOT NULL`
        // keeps it out of the plans of queries that do not name `txid`.
        "events_by_txid",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_txid
             ON user_sync.events (txid, id) WHERE txid IS NOT NULL",
    ),
    (
        // The events marked to dispatch again, by when (0013): due again,
        // or in flight until then (0014).
        "events_redispatch",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_redispatch
             ON user_sync.events (available_at) WHERE redispatch",
    ),
    (
        // The events that carry a reason (0014): every failed, invalid and
        // conflict one, for `status`, `/metrics`, `events --state` and
        // `retry`; an applied one has none, so its end adds no entry.
        "events_with_reason",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_with_reason
             ON user_sync.events (id) WHERE reason IS NOT NULL",
    ),
    (
        // The closures (0014), for `erasures --pending`, `status` and the
        // deadline watch, which read the open ones on the row.
        "events_closures",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_closures
             ON user_sync.events (occurred_at) WHERE kind = 'account_closure'",
    ),
];

/// Indexes of earlier versions that name a column an event's end changes,
/// dropped once [`CONCURRENT_INDEXES`] are all valid (0014): while one
/// stands, no end is HOT. An older worker still running meanwhile reads
/// through a scan where it read them: slower, never wrong.
const REPLACED_INDEXES: &[&str] = &[
    "events_to_dispatch",
    "events_in_flight",
    "events_pending",
    "events_finished",
    "events_open_closures",
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

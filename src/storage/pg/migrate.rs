//! `user-sync migrate`: creates and upgrades schema `user_sync`.
//!
//! The bookkeeping table is `user_sync._sqlx_migrations`, so the host app's
//! own sqlx migrations (in `public._sqlx_migrations`) are never touched and
//! never see ours. Safe to run on every deploy: applied migrations are
//! skipped, and concurrent runs serialise on sqlx's advisory lock. The
//! indexes of large tables are built after the migrations, concurrently
//! (see [`CONCURRENT_INDEXES`]).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// Where the bookkeeping lives.
pub const MIGRATIONS_TABLE: &str = "user_sync._sqlx_migrations";

fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator.create_schema("user_sync");
    migrator
}

/// Applies every migration not applied yet; returns how many ran (this
/// call, not a concurrent one: the count is taken under our own lock).
pub async fn run(pool: &PgPool) -> anyhow::Result<usize> {
    use anyhow::Context;
    let mut conn = pool.acquire().await?;
    // Waited for between statements, not inside one: a statement waiting
    // for the lock holds a snapshot, which the holder's concurrent index
    // build waits for in turn (a deadlock).
    while !sqlx::query_scalar::<_, bool>(
        "SELECT pg_try_advisory_lock(hashtext('user_sync.migrate'))",
    )
    .fetch_one(&mut *conn)
    .await?
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let outcome = async {
        let before = applied(&mut conn).await?;
        migrator()
            .run(&mut *conn)
            .await
            .context("applying the worker's migrations")?;
        build_indexes(&mut conn).await?;
        let after = applied(&mut conn).await?;
        anyhow::Ok(after.saturating_sub(before))
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock(hashtext('user_sync.migrate'))")
        .execute(&mut *conn)
        .await?;
    outcome
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
const CONCURRENT_INDEXES: &[(&str, &str)] = &[(
    // The finished events by state and end: the counts of `status` and
    // `/metrics` read only the failed, invalid and conflict entries, the
    // console's activity only the last minutes', retention only the old
    // ones (see 0010_retention.sql). An event adds one entry when it
    // finishes; a pending one none.
    "events_finished",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS events_finished
         ON user_sync.events (state, finished_at) WHERE state <> 'pending'",
)];

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
/// binary needs, or one of the indexes `migrate` builds after them. `run` never migrates by itself: schema changes are a
/// deploy step.
pub async fn check_current(pool: &PgPool) -> anyhow::Result<()> {
    let expected = migrator().iter().count();
    // One connection for every check: a command opens no second one.
    let mut conn = pool.acquire().await?;
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

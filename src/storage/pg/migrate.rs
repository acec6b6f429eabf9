//! `user-sync migrate`: creates and upgrades schema `user_sync`.
//!
//! The bookkeeping table is `user_sync._sqlx_migrations`, so the host app's
//! own sqlx migrations (in `public._sqlx_migrations`) are never touched and
//! never see ours. Safe to run on every deploy: applied migrations are
//! skipped, and concurrent runs serialise on sqlx's advisory lock.

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
    sqlx::query("SELECT pg_advisory_lock(hashtext('user_sync.migrate'))")
        .execute(&mut *conn)
        .await?;
    let outcome = async {
        let before = applied(&mut conn).await?;
        migrator()
            .run(&mut *conn)
            .await
            .context("applying the worker's migrations")?;
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

/// Fails, saying what to run, when the database lacks a migration this
/// binary needs. `run` never migrates by itself: schema changes are a
/// deploy step.
pub async fn check_current(pool: &PgPool) -> anyhow::Result<()> {
    let expected = migrator().iter().count();
    let applied = applied(&mut *pool.acquire().await?).await?;
    anyhow::ensure!(
        applied >= expected,
        "the database schema is not up to date ({applied} of {expected} migrations applied): run `user-sync migrate`"
    );
    Ok(())
}

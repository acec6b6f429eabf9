//! The worker's tables: the outbox's worker-owned columns, users, conflicts
//! and erasures. PostgreSQL is the source of truth; the queue only carries
//! ids of rows that live here.
//!
//! SQL lives next to the code that owns the table: [`events`] (the outbox),
//! [`users`] (users, conflicts, erasures), [`migrate`].

pub mod events;
pub mod migrate;
pub mod nodelay;
pub mod users;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::DatabaseSettings;

/// Opens a pool on the configured database. Statement logging is off: a
/// logged statement would print bound values, emails among them.
pub async fn connect(settings: &DatabaseSettings, min_size: u32) -> anyhow::Result<PgPool> {
    use anyhow::Context;
    let options = PgConnectOptions::from_str(settings.url()?.expose_secret())
        .context("database.url is not a valid PostgreSQL URL")?
        .application_name("user-sync")
        .disable_statement_logging();
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(min_size))
        .acquire_timeout(Duration::from_secs(10))
        // No ping before each use: a broken connection fails the statement,
        // and every caller already retries (the job, the dispatcher loop).
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                nodelay::after_connect(conn).await;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .context("cannot connect to the database (database.url)")?;
    Ok(pool)
}

/// A job outcome that wants the event tried again later.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

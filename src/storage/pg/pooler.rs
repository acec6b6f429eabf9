//! Refuses a connection pooler in transaction or statement mode.
//!
//! The worker's per-user locks are session advisory locks and its
//! dispatcher LISTENs: both need one server session for the life of a
//! client connection. Behind PgBouncer's `pool_mode = transaction` (or
//! `statement`, or any pooler that shares server sessions between clients)
//! a lock would be taken on one server session and released on another,
//! and notifications would go nowhere. Such a pooler shows itself by
//! server processes: two client connections open at once that reach one
//! server process, or one client connection whose server process changes
//! between two statements. A direct connection, or a pooler in session
//! mode, shows neither.

use sqlx::{PgConnection, PgPool};

/// How many times the probe looks: a pooler that hands out its server
/// connections round-robin may escape one look, hardly three.
const LOOKS: usize = 3;

/// Fails, saying what to change, when `pool` reaches PostgreSQL through a
/// pooler that shares server sessions between client connections.
pub async fn refuse_transaction_pooling(pool: &PgPool) -> anyhow::Result<()> {
    let mut first = pool.acquire().await?;
    let mut second = pool.acquire().await?;
    for _ in 0..LOOKS {
        let before = backend_pid(&mut first).await?;
        // Held in a transaction, the second connection keeps its server
        // process while the first asks again.
        let began = sqlx::Connection::begin(&mut *second).await;
        // PgBouncer in statement mode refuses transactions outright.
        let refused = match &began {
            Err(sqlx::Error::Database(refused)) => Some(refused.message().to_owned()),
            _ => None,
        };
        if let Some(message) = refused {
            drop(began);
            // The pooler may drop the connection: closed here, it does not
            // go back to the pool to be found broken.
            let _ = second.close().await;
            anyhow::bail!(
                "database.url reaches PostgreSQL through a connection pooler that refuses \
                 transactions ({message}): the worker's per-user locks and LISTEN need a session \
                 of their own. Point database.url at PostgreSQL itself, or at a pool in session mode"
            );
        }
        let mut tx = began?;
        let other = backend_pid(&mut tx).await?;
        let after = backend_pid(&mut first).await?;
        tx.rollback().await?;
        if other == before || after != before {
            anyhow::bail!(
                "database.url reaches PostgreSQL through a connection pooler that shares server \
                 sessions between clients (PgBouncer's pool_mode = transaction or statement): \
                 the worker's per-user locks and LISTEN need a session of their own. Point \
                 database.url at PostgreSQL itself, or at a pool in session mode"
            );
        }
    }
    Ok(())
}

async fn backend_pid(conn: &mut PgConnection) -> sqlx::Result<i32> {
    // Not prepared: a pooler in transaction mode may not keep a prepared
    // statement from one transaction to the next.
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .persistent(false)
        .fetch_one(conn)
        .await
}

//! What the backfill reads and writes, behind one trait so that one run
//! (the scan, the decisions, both modes, the confirmation of creates)
//! serves PostgreSQL and SQLite.
//!
//! A [`BackfillDb`] is the backfill's own session: the connection its
//! working tables (the `GET /users` snapshot, the dry run's planned
//! creates) live on and the host's users are read on, and the worker's
//! tables under the per-user locks it holds. All of it goes with the
//! session, killed or not. On PostgreSQL the session is one connection of
//! its own; on SQLite, a connection of its own for the working tables, and
//! the pool and the process's per-user locks (shared with the jobs
//! `--mode single` runs) for the worker's tables. A backfill on a SQLite
//! file holds the file's process lock, as `run` does: the two never work
//! on one file at once.

use std::future::Future;
use std::sync::Arc;

use sqlx::{Connection, PgConnection, PgPool, SqliteConnection, SqlitePool};

use crate::config::SourceTarget;
use crate::host::table::{HostTable, SourceConnection};
use crate::storage::{BackfillTables, PgStore, SqliteBackfill, SqliteStore};

use super::snapshot::WorkingTables;

/// The backfill's session on the worker's database.
pub(super) trait BackfillDb: Send {
    /// The worker's tables, under the locks this session holds.
    type Tables: BackfillTables;
    /// The connection of the working tables and the host's users.
    type Conn: WorkingTables + SourceConnection;

    fn tables(&mut self) -> &mut Self::Tables;
    fn conn(&mut self) -> &mut Self::Conn;
    /// Ends the session (its working tables and locks go with it).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// What a run works with, opened on the configured database.
pub(super) struct Opened<D, S> {
    pub(super) db: D,
    pub(super) source: HostTable,
    /// For `--mode single`: the pipeline's storage (sharing the per-user
    /// locks with `db`).
    pub(super) store: Arc<S>,
}

/// On PostgreSQL the session is a connection out of the pool: its
/// temporary tables and advisory locks live and die with it.
impl BackfillDb for PgConnection {
    type Tables = Self;
    type Conn = Self;

    fn tables(&mut self) -> &mut Self {
        self
    }

    fn conn(&mut self) -> &mut Self {
        self
    }

    async fn close(self) {
        if let Err(e) = Connection::close(self).await {
            tracing::debug!(error = %e, "closing the backfill session");
        }
    }
}

/// Opens the backfill on the PostgreSQL database of `pool`.
pub(super) async fn open_postgres(
    pool: &PgPool,
    target: &SourceTarget,
) -> anyhow::Result<Opened<PgConnection, PgStore>> {
    let store = PgStore::new(pool.clone());
    let mut conn = store.backfill_session().await?;
    let migrated: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('user_sync.users')::text")
            .fetch_one(&mut conn)
            .await?;
    anyhow::ensure!(
        migrated.is_some(),
        "schema user_sync is missing: run `user-sync migrate` first"
    );
    let source = HostTable::check(&mut conn, target).await?;
    Ok(Opened {
        db: conn,
        source,
        store: Arc::new(store),
    })
}

/// The backfill's session on SQLite.
pub(super) struct SqliteBackfillDb {
    /// The working tables' connection (temporary tables live with it).
    conn: SqliteConnection,
    tables: SqliteBackfill,
}

impl BackfillDb for SqliteBackfillDb {
    type Tables = SqliteBackfill;
    type Conn = SqliteConnection;

    fn tables(&mut self) -> &mut SqliteBackfill {
        &mut self.tables
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    async fn close(self) {
        let Self { conn, tables } = self;
        drop(tables);
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the backfill session");
        }
    }
}

/// Opens the backfill on the (migrated) SQLite file of `pool`.
pub(super) async fn open_sqlite(
    pool: &SqlitePool,
    target: &SourceTarget,
) -> anyhow::Result<Opened<SqliteBackfillDb, SqliteStore>> {
    let mut conn = pool.acquire().await?.detach();
    let source = HostTable::check_sqlite(&mut conn, target).await?;
    let store = SqliteStore::new(pool.clone());
    Ok(Opened {
        db: SqliteBackfillDb {
            conn,
            tables: store.backfill_tables(),
        },
        source,
        store: Arc::new(store),
    })
}

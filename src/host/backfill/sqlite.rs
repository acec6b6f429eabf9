//! The backfill's session on SQLite: a connection of its own for the
//! working tables (temporary tables live with their connection), the
//! worker's tables through the pool, and the per-user locks of this
//! process, shared with the jobs `--mode single` runs. A backfill on a
//! SQLite file takes the file's process lock, as `run` does: the two never
//! work on one file at once.
//!
//! The working tables' SQL is in [`super::snapshot::on_sqlite`], beside
//! PostgreSQL's. Lists travel as one JSON parameter (`json_each`), the way
//! SQLite takes an array.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::future::Future;

use crate::config::{Settings, SourceTarget};
use crate::domain::{FullName, HostUserId, Profile, UserState, Username};
use crate::embedded::EmbeddedUser;
use crate::embedded::client::UserStream;
use crate::host::table::{HostRow, HostTable};
use crate::storage::Database;
use crate::storage::conflicts::NewConflict;
use crate::storage::sqlite::users as rows;
use crate::storage::sqlite::{self, ProcessLock, SqliteStore, UserLockGuard, UserLocks, text_at};
use crate::storage::users::{Claim, ClaimIntent, Found, Unconfirmed};

use super::Opened;
use super::db::{BackfillDb, Create, EventState};
use super::decide::Known;
use super::snapshot::LoadError;
use super::snapshot::on_sqlite::{self, json_list};

/// Opens the backfill on the SQLite file `settings` name.
pub(super) async fn open(
    settings: &Settings,
    target: &SourceTarget,
) -> anyhow::Result<Opened<SqliteBackfillDb>> {
    let file_lock = ProcessLock::acquire(&settings.database)?;
    let pool = sqlite::connect(&settings.database, settings.worker.concurrency as u32 + 2).await?;
    sqlite::check_current(&pool).await?;
    let mut conn = pool.acquire().await?.detach();
    let source = HostTable::check_sqlite(&mut conn, target).await?;
    let store = SqliteStore::new(pool.clone());
    Ok(Opened {
        db: SqliteBackfillDb {
            conn,
            pool: pool.clone(),
            locks: store.locks(),
            held: HashMap::new(),
        },
        source,
        store: super::JobStore::Sqlite(Arc::new(store)),
        database: Database::Sqlite(pool),
        file_lock: Some(file_lock),
    })
}

pub(super) struct SqliteBackfillDb {
    /// The working tables' connection.
    conn: SqliteConnection,
    pool: SqlitePool,
    locks: UserLocks,
    /// The per-user locks this session holds.
    held: HashMap<String, UserLockGuard>,
}

impl BackfillDb for SqliteBackfillDb {
    async fn now(&mut self) -> sqlx::Result<DateTime<Utc>> {
        // Times in a SQLite file are the worker's clock.
        Ok(Utc::now())
    }

    fn page<'a>(
        &'a mut self,
        source: &'a HostTable,
        after: Option<&'a str>,
        limit: u32,
    ) -> impl Future<Output = sqlx::Result<Vec<HostRow>>> + Send {
        source.page_sqlite(&mut self.conn, after, limit)
    }

    async fn count_open(&mut self, source: &HostTable) -> sqlx::Result<u64> {
        Ok(source.counts_sqlite(&mut self.conn).await?.0)
    }

    async fn count_closed(&mut self, source: &HostTable) -> sqlx::Result<Option<u64>> {
        Ok(source.counts_sqlite(&mut self.conn).await?.1)
    }

    fn prepare_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        on_sqlite::prepare(&mut self.conn)
    }

    fn discard_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        on_sqlite::discard(&mut self.conn)
    }

    fn load_snapshot(
        &mut self,
        stream: UserStream,
    ) -> impl Future<Output = Result<u64, LoadError>> + Send {
        on_sqlite::load(&mut self.conn, stream)
    }

    fn find_in_snapshot<'a>(
        &'a mut self,
        usernames: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<HashMap<Username, EmbeddedUser>>> + Send {
        on_sqlite::find(&mut self.conn, usernames)
    }

    fn plan_creates<'a>(
        &'a mut self,
        planned: &'a [(&'a str, &'a str)],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        on_sqlite::plan_creates(&mut self.conn, planned)
    }

    fn lookup<'a>(
        &'a mut self,
        users: &'a [(HostUserId, Profile)],
    ) -> impl Future<Output = sqlx::Result<Vec<Known>>> + Send {
        on_sqlite::lookup(&mut self.conn, users)
    }

    async fn try_lock_many<'a>(&'a mut self, hosts: &'a [&'a str]) -> sqlx::Result<Vec<String>> {
        let mut locked = Vec::with_capacity(hosts.len());
        for host in hosts {
            if self.held.contains_key(*host) {
                continue;
            }
            let Ok(id) = HostUserId::parse(host) else {
                continue;
            };
            if let Some(guard) = self.locks.try_lock(&id) {
                self.held.insert((*host).to_owned(), guard);
                locked.push((*host).to_owned());
            }
        }
        Ok(locked)
    }

    fn unlock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        for host in hosts {
            self.held.remove(*host);
        }
        async { Ok(()) }
    }

    async fn claim_many_for_create<'a>(
        &'a mut self,
        intents: &'a [ClaimIntent<'a>],
    ) -> sqlx::Result<()> {
        if intents.is_empty() {
            return Ok(());
        }
        let list = json_list(intents.iter().map(|i| {
            json!([
                i.host.as_str(),
                i.profile.username.as_str(),
                i.profile.full_name.as_ref().map(FullName::as_str),
                i.last_event_id
            ])
        }));
        // One statement: a username claimed meanwhile fails it whole.
        sqlx::query(
            "INSERT INTO user_sync_users
                 (host_user_id, username, full_name, state, last_event_id, updated_at,
                  username_seen_free)
             SELECT value ->> 0, value ->> 1, value ->> 2, 'creating', value ->> 3, ?2, 1
             FROM json_each(?1) WHERE true
             ON CONFLICT (host_user_id) DO UPDATE
             SET username = excluded.username, full_name = excluded.full_name,
                 embedded_user_id = NULL, state = 'creating',
                 updated_at = excluded.updated_at, username_seen_free = 1",
        )
        .bind(list)
        .bind(sqlite::now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn last_event_id<'a>(&'a mut self, host: &'a HostUserId) -> sqlx::Result<Option<i64>> {
        let id: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_event_id FROM user_sync_users WHERE host_user_id = ?1")
                .bind(host.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(id.flatten())
    }

    fn claim_for_create<'a>(
        &'a mut self,
        host: &'a HostUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send {
        // The backfill claims only what its snapshot saw free.
        rows::claim_for_create(&self.pool, host, profile, event_id, true)
    }

    async fn mark_synced_many<'a>(&'a mut self, found: &'a [Found<'a>]) -> sqlx::Result<u64> {
        if found.is_empty() {
            return Ok(0);
        }
        let list = json_list(found.iter().map(|f| {
            json!([
                f.host.as_str(),
                f.user.as_str(),
                f.profile.username.as_str(),
                f.profile.full_name.as_ref().map(FullName::as_str)
            ])
        }));
        let now = sqlite::now_text();
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "INSERT INTO user_sync_users
                 (host_user_id, embedded_user_id, username, full_name, state, updated_at)
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 'synced', ?2
             FROM json_each(?1) WHERE true
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = excluded.embedded_user_id,
                 username = excluded.username, full_name = excluded.full_name,
                 state = 'synced', updated_at = excluded.updated_at",
        )
        .bind(&list)
        .bind(&now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE user_sync_conflicts SET status = 'resolved', resolved_at = ?2
             WHERE status = 'open' AND EXISTS (
                 SELECT 1 FROM json_each(?1)
                 WHERE value ->> 0 = user_sync_conflicts.host_user_id
                   AND value ->> 2 <> user_sync_conflicts.username)",
        )
        .bind(&list)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn set_without_user<'a>(
        &'a mut self,
        host: &'a HostUserId,
        state: UserState,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO user_sync_users (host_user_id, state, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = NULL, state = excluded.state,
                 updated_at = excluded.updated_at",
        )
        .bind(host.as_str())
        .bind(state.as_str())
        .bind(sqlite::now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send {
        sqlite::conflicts::report_conflict(&self.pool, conflict)
    }

    fn unconfirmed_since<'a>(
        &'a mut self,
        since: DateTime<Utc>,
        after: &'a str,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send {
        sqlx::query_as(
            "SELECT host_user_id, username, full_name, updated_at, username_seen_free
                 FROM user_sync_users
                 WHERE state = 'creating' AND updated_at >= ?1 AND host_user_id > ?2
                 ORDER BY host_user_id LIMIT ?3",
        )
        .bind(text_at(since))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
    }

    fn unconfirmed_of<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send {
        sqlx::query_as(
            "SELECT host_user_id, username, full_name, updated_at, username_seen_free
                 FROM user_sync_users
                 WHERE host_user_id IN (SELECT value FROM json_each(?1)) AND state = 'creating'",
        )
        .bind(json_list(hosts.iter()))
        .fetch_all(&self.pool)
    }

    async fn count_unconfirmed_since(&mut self, since: DateTime<Utc>) -> sqlx::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM user_sync_users
             WHERE state = 'creating' AND updated_at >= ?1",
        )
        .bind(text_at(since))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn record_signups<'a>(
        &'a mut self,
        creates: &'a [Create<'a>],
    ) -> sqlx::Result<Vec<(i64, HostUserId)>> {
        if creates.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(creates.iter().map(|(host, profile, _)| {
            json!([
                host.as_str(),
                profile.username.as_str(),
                profile.full_name.as_ref().map(FullName::as_str)
            ])
        }));
        // Written as dispatched: the backfill runs their jobs itself.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO user_sync_events (host_user_id, kind, email, full_name, dispatched_at)
             SELECT value ->> 0, 'signup', value ->> 1, value ->> 2, ?2 FROM json_each(?1)
             RETURNING id, host_user_id",
        )
        .bind(list)
        .bind(sqlite::now_text())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, host)| Some((id, HostUserId::parse(&host).ok()?)))
            .collect())
    }

    fn event_states<'a>(
        &'a mut self,
        ids: &'a [i64],
    ) -> impl Future<Output = sqlx::Result<Vec<EventState>>> + Send {
        sqlx::query_as(
            "SELECT id, state, available_at FROM user_sync_events
                 WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids.iter()))
        .fetch_all(&self.pool)
    }

    async fn close(self) -> () {
        let Self { conn, held, .. } = self;
        drop(held);
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the backfill session");
        }
    }
}

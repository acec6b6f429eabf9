//! What the backfill writes in a SQLite file: through the pool, under the
//! per-user locks of this process, shared with the jobs `--mode single`
//! runs. Lists travel as one JSON parameter (`json_each`), the way SQLite
//! takes an array.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::SqlitePool;

use crate::domain::{FullName, HostUserId, Profile, UserState};
use crate::storage::{
    BackfillTables, Claim, ClaimIntent, EventStateDue, Found, NewConflict, Signup, Unconfirmed,
};

use super::{UserLockGuard, UserLocks, conflicts, now_text, text_at, users};

/// The worker's tables as the backfill writes them, and the per-user locks
/// it holds (released when they are unlocked or this is dropped).
pub struct SqliteBackfill {
    pool: SqlitePool,
    locks: UserLocks,
    held: HashMap<String, UserLockGuard>,
}

impl SqliteBackfill {
    pub(super) fn new(pool: SqlitePool, locks: UserLocks) -> Self {
        Self {
            pool,
            locks,
            held: HashMap::new(),
        }
    }
}

/// `items` as a JSON array: how a list travels to a SQLite statement, as
/// one parameter for `json_each`.
pub fn json_list<T: serde::Serialize>(items: impl Iterator<Item = T>) -> String {
    serde_json::Value::Array(items.map(|i| json!(i)).collect()).to_string()
}

impl BackfillTables for SqliteBackfill {
    async fn now(&mut self) -> sqlx::Result<DateTime<Utc>> {
        // Times in a SQLite file are the worker's clock.
        Ok(Utc::now())
    }

    async fn try_lock_many(&mut self, hosts: &[&str]) -> sqlx::Result<Vec<String>> {
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

    async fn unlock_many(&mut self, hosts: &[&str]) -> sqlx::Result<()> {
        for host in hosts {
            self.held.remove(*host);
        }
        Ok(())
    }

    async fn claim_many_for_create(&mut self, intents: &[ClaimIntent<'_>]) -> sqlx::Result<()> {
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
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_one_for_create(
        &mut self,
        host: &HostUserId,
        profile: &Profile,
    ) -> sqlx::Result<Claim> {
        let last: Option<Option<i64>> =
            sqlx::query_scalar("SELECT last_event_id FROM user_sync_users WHERE host_user_id = ?1")
                .bind(host.as_str())
                .fetch_optional(&self.pool)
                .await?;
        let last = last.flatten();
        // The backfill claims only what its snapshot saw free.
        users::claim_for_create(&self.pool, host, profile, last.unwrap_or(0), true).await
    }

    async fn mark_synced_many(&mut self, found: &[Found<'_>]) -> sqlx::Result<u64> {
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
        let now = now_text();
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
        let hosts: Vec<&str> = found.iter().map(|f| f.host.as_str()).collect();
        conflicts::resolve_synced(&mut tx, &hosts, &now).await?;
        tx.commit().await?;
        Ok(changed)
    }

    async fn set_without_user(&mut self, host: &HostUserId, state: UserState) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO user_sync_users (host_user_id, state, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = NULL, state = excluded.state,
                 updated_at = excluded.updated_at",
        )
        .bind(host.as_str())
        .bind(state.as_str())
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn report_conflict(
        &mut self,
        conflict: &NewConflict<'_>,
        full_name: Option<&FullName>,
    ) -> sqlx::Result<bool> {
        let added = conflicts::report_conflict(&self.pool, conflict).await?;
        if added {
            conflicts::record_event_of(&self.pool, conflict, full_name).await?;
        }
        Ok(added)
    }

    async fn unconfirmed_since(
        &mut self,
        since: DateTime<Utc>,
        after: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<Unconfirmed>> {
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
        .await
    }

    async fn unconfirmed_of(&mut self, hosts: &[&str]) -> sqlx::Result<Vec<Unconfirmed>> {
        sqlx::query_as(
            "SELECT host_user_id, username, full_name, updated_at, username_seen_free
                 FROM user_sync_users
                 WHERE host_user_id IN (SELECT value FROM json_each(?1)) AND state = 'creating'",
        )
        .bind(json_list(hosts.iter()))
        .fetch_all(&self.pool)
        .await
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

    async fn record_signups(
        &mut self,
        creates: &[Signup<'_>],
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
        .bind(now_text())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, host)| Some((id, HostUserId::parse(&host).ok()?)))
            .collect())
    }

    async fn event_states(&mut self, ids: &[i64]) -> sqlx::Result<Vec<EventStateDue>> {
        sqlx::query_as(
            "SELECT id, state, available_at FROM user_sync_events
                 WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids.iter()))
        .fetch_all(&self.pool)
        .await
    }
}

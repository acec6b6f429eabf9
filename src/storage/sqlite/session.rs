//! One host user's rows in a SQLite file, under the process's lock of that
//! user. The same rows and states as the PostgreSQL queries in
//! [`crate::storage::events`] and [`crate::storage::users`]; where PostgreSQL
//! does several writes in one statement, a transaction does them here,
//! always starting with a write so that it never has to upgrade a read
//! lock (which SQLite refuses instead of waiting).

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::SqlitePool;

use crate::domain::{
    EmbeddedUserId, ErasureOutcome, EventState, FullName, HostUserId, Profile, UserState, Username,
};
use crate::storage::conflicts::NewConflict;
use crate::storage::events::{NextEvent, NextEventRow};
use crate::storage::users::Claim;
use crate::storage::{UserSession, is_unique_violation};

use super::{UserLockGuard, now_text, text_at};

pub(super) struct SqliteUserSession {
    pool: SqlitePool,
    host: HostUserId,
    /// Released when the session ends, however it ends.
    _lock: UserLockGuard,
}

impl SqliteUserSession {
    pub(super) fn new(pool: SqlitePool, host: HostUserId, lock: UserLockGuard) -> Self {
        Self {
            pool,
            host,
            _lock: lock,
        }
    }
}

/// Ends one event.
pub(super) async fn finish(
    pool: &SqlitePool,
    id: i64,
    state: EventState,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync_events SET state = ?2, reason = ?3, finished_at = ?4
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(reason)
    .bind(now_text())
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts an event back to be dispatched after `delay`.
pub(super) async fn snooze(
    pool: &SqlitePool,
    id: i64,
    delay: Duration,
    failed: bool,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    let due = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
    sqlx::query(
        "UPDATE user_sync_events
         SET dispatched_at = NULL, available_at = ?2, attempts = attempts + ?3,
             reason = COALESCE(?4, reason)
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .bind(text_at(due))
    .bind(i32::from(failed))
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends an event `applied`, inside the transaction that did its work.
async fn mark_applied(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: i64,
    now: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync_events SET state = 'applied', reason = NULL, finished_at = ?2
         WHERE id = ?1 AND state = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the intent to create `profile` for `host` (see
/// [`crate::storage::users::claim_for_create`]); a username another host
/// user holds is refused.
pub(crate) async fn claim_for_create(
    pool: &SqlitePool,
    host: &HostUserId,
    profile: &Profile,
    event_id: i64,
) -> sqlx::Result<Claim> {
    let claimed = sqlx::query_scalar::<_, String>(
        "INSERT INTO user_sync_users
             (host_user_id, username, full_name, state, last_event_id, updated_at)
         SELECT ?1, ?2, ?3, 'creating', ?4, ?5
         WHERE NOT EXISTS (
             SELECT 1 FROM user_sync_users
             WHERE username = ?2 AND state IN ('creating', 'synced') AND host_user_id <> ?1)
         ON CONFLICT (host_user_id) DO UPDATE
         SET username = excluded.username, full_name = excluded.full_name,
             embedded_user_id = NULL, state = 'creating',
             last_event_id = excluded.last_event_id, updated_at = excluded.updated_at
         RETURNING host_user_id",
    )
    .bind(host.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .bind(now_text())
    .fetch_optional(pool)
    .await;
    match claimed {
        Ok(Some(_)) => Ok(Claim::Claimed),
        Ok(None) => taken(pool, &profile.username, host).await,
        Err(e) if is_unique_violation(&e) => taken(pool, &profile.username, host).await,
        Err(e) => Err(e),
    }
}

async fn taken(pool: &SqlitePool, username: &Username, host: &HostUserId) -> sqlx::Result<Claim> {
    let holder = holder_of(pool, username, host).await?;
    Ok(Claim::TakenBy(holder.unwrap_or_else(|| host.clone())))
}

/// The other host user holding or claiming `username`, if any.
pub(crate) async fn holder_of(
    pool: &SqlitePool,
    username: &Username,
    except: &HostUserId,
) -> sqlx::Result<Option<HostUserId>> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT host_user_id FROM user_sync_users
         WHERE username = ?1 AND state IN ('creating', 'synced') AND host_user_id <> ?2
         LIMIT 1",
    )
    .bind(username.as_str())
    .bind(except.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(holder.and_then(|h| HostUserId::parse(&h).ok()))
}

/// Reports a conflict once; returns whether a row was added.
pub(crate) async fn report_conflict(pool: &SqlitePool, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO user_sync_conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id,
              event_id, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT DO NOTHING",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(c.holder_host_user_id.map(HostUserId::as_str))
    .bind(c.holder_embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(c.event_id)
    .bind(now_text())
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

impl SqliteUserSession {
    async fn synced(
        &self,
        id: &EmbeddedUserId,
        profile: &Profile,
        event_id: i64,
        applied: Option<i64>,
    ) -> sqlx::Result<()> {
        let now = now_text();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO user_sync_users
                 (host_user_id, embedded_user_id, username, full_name, state, last_event_id,
                  updated_at)
             VALUES (?1, ?2, ?3, ?4, 'synced', ?5, ?6)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = excluded.embedded_user_id, username = excluded.username,
                 full_name = excluded.full_name, state = 'synced',
                 last_event_id = excluded.last_event_id, updated_at = excluded.updated_at",
        )
        .bind(self.host.as_str())
        .bind(id.as_str())
        .bind(profile.username.as_str())
        .bind(profile.full_name.as_ref().map(FullName::as_str))
        .bind(event_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        if let Some(applied) = applied {
            mark_applied(&mut tx, applied, &now).await?;
        }
        sqlx::query(
            "UPDATE user_sync_conflicts SET status = 'resolved', resolved_at = ?3
             WHERE host_user_id = ?1 AND status = 'open' AND username <> ?2",
        )
        .bind(self.host.as_str())
        .bind(profile.username.as_str())
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn without_user(&self, state: UserState, event_id: i64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO user_sync_users (host_user_id, state, last_event_id, updated_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = NULL, state = excluded.state,
                 last_event_id = excluded.last_event_id, updated_at = excluded.updated_at",
        )
        .bind(self.host.as_str())
        .bind(state.as_str())
        .bind(event_id)
        .bind(now_text())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn erased(
        &self,
        embedded_user_id: Option<&EmbeddedUserId>,
        closure_event_id: i64,
        outcome: ErasureOutcome,
    ) -> sqlx::Result<()> {
        let now = now_text();
        let host = self.host.as_str();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO user_sync_users (host_user_id, state, last_event_id, updated_at)
             VALUES (?1, 'erased', ?2, ?3)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = NULL, username = NULL, full_name = NULL, state = 'erased',
                 last_event_id = excluded.last_event_id, updated_at = excluded.updated_at",
        )
        .bind(host)
        .bind(closure_event_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE user_sync_events SET email = NULL, full_name = NULL
             WHERE host_user_id = ?1 AND id <= ?2
               AND (email IS NOT NULL OR full_name IS NOT NULL)",
        )
        .bind(host)
        .bind(closure_event_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM user_sync_conflicts WHERE host_user_id = ?1")
            .bind(host)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO user_sync_erasures
                 (host_user_id, embedded_user_id, event_id, outcome, requested_at, completed_at)
             SELECT ?1, ?2, id, ?3, occurred_at, ?5 FROM user_sync_events WHERE id = ?4
             ON CONFLICT DO NOTHING",
        )
        .bind(host)
        .bind(embedded_user_id.map(EmbeddedUserId::as_str))
        .bind(outcome.as_str())
        .bind(closure_event_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        mark_applied(&mut tx, closure_event_id, &now).await?;
        tx.commit().await
    }
}

impl UserSession for SqliteUserSession {
    fn newest_pending(&mut self) -> BoxFuture<'_, sqlx::Result<Option<NextEvent>>> {
        Box::pin(async move {
            let row: Option<NextEventRow> = sqlx::query_as(
                "SELECT e.id, e.host_user_id, e.kind, e.email, e.full_name, e.occurred_at,
                        e.attempts, e.available_at,
                        (SELECT count(*) FROM user_sync_events o
                          WHERE o.host_user_id = ?1 AND o.state = 'pending' AND o.id < e.id)
                          AS older_pending,
                        u.last_event_id AS last_acted_on,
                        COALESCE((SELECT l.state IN ('pending', 'superseded')
                                  FROM user_sync_events l WHERE l.id = u.last_event_id), 0)
                          AS last_acted_unfinished,
                        u.state AS user_state,
                        u.embedded_user_id AS user_embedded_id, u.username AS user_username,
                        u.full_name AS user_full_name
                 FROM user_sync_events e
                 LEFT JOIN user_sync_users u ON u.host_user_id = ?1
                 WHERE e.host_user_id = ?1 AND e.state = 'pending'
                 ORDER BY e.id DESC LIMIT 1",
            )
            .bind(self.host.as_str())
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(NextEventRow::into_next))
        })
    }

    fn finish<'a>(
        &'a mut self,
        id: i64,
        state: EventState,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(finish(&self.pool, id, state, reason))
    }

    fn supersede_older(&mut self, newest: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(async move {
            let result = sqlx::query(
                "UPDATE user_sync_events SET state = 'superseded', finished_at = ?3
                 WHERE host_user_id = ?1 AND state = 'pending' AND id < ?2",
            )
            .bind(self.host.as_str())
            .bind(newest)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
            Ok(result.rows_affected())
        })
    }

    fn snooze<'a>(
        &'a mut self,
        id: i64,
        delay: Duration,
        failed: bool,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(snooze(&self.pool, id, delay, failed, reason))
    }

    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<Claim>> {
        Box::pin(claim_for_create(&self.pool, &self.host, profile, event_id))
    }

    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> BoxFuture<'a, sqlx::Result<Option<HostUserId>>> {
        Box::pin(holder_of(&self.pool, username, &self.host))
    }

    fn mapped_elsewhere<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<HostUserId>>> {
        Box::pin(async move {
            let other: Option<String> = sqlx::query_scalar(
                "SELECT host_user_id FROM user_sync_users
                 WHERE embedded_user_id = ?2 AND host_user_id <> ?1 LIMIT 1",
            )
            .bind(self.host.as_str())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
            Ok(other.and_then(|h| HostUserId::parse(&h).ok()))
        })
    }

    fn note_update_sent(&mut self, event_id: i64) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync_users SET last_event_id = ?2, updated_at = ?3
                 WHERE host_user_id = ?1",
            )
            .bind(self.host.as_str())
            .bind(event_id)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn record_found<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync_users
                 SET embedded_user_id = ?2, username = ?3, full_name = ?4, state = 'synced',
                     last_event_id = ?5, updated_at = ?6
                 WHERE host_user_id = ?1",
            )
            .bind(self.host.as_str())
            .bind(id.as_str())
            .bind(profile.username.as_str())
            .bind(profile.full_name.as_ref().map(FullName::as_str))
            .bind(event_id)
            .bind(now_text())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn mark_synced<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
        applied: Option<i64>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(self.synced(id, profile, event_id, applied))
    }

    fn mark_without_user<'a>(
        &'a mut self,
        state: UserState,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(self.without_user(state, event_id))
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(report_conflict(&self.pool, conflict))
    }

    fn erase<'a>(
        &'a mut self,
        embedded_user_id: Option<&'a EmbeddedUserId>,
        closure_event_id: i64,
        outcome: ErasureOutcome,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(self.erased(embedded_user_id, closure_event_id, outcome))
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        // Dropping the session drops the guard, which frees the user.
        drop(self);
        Box::pin(async { Ok(()) })
    }
}

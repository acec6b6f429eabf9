//! One host user's rows in a SQLite file, under the process's lock of that
//! user. The same rows and states as the PostgreSQL queries in
//! [`crate::storage::events`] and [`crate::storage::users`]; where PostgreSQL
//! does several writes in one statement, a transaction does them here,
//! always starting with a write so that it never has to upgrade a read
//! lock (which SQLite refuses instead of waiting).

use sqlx::SqlitePool;

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Profile, UserState, Username};
use crate::storage::conflicts::NewConflict;
use crate::storage::events::{NextEvent, NextEventRow};
use crate::storage::users::{Claim, HolderClaim};
use crate::storage::{Ending, Erasure, ErasureStep, ErasureSteps, Holding, Snooze, UserSession};

use super::{UserLockGuard, conflicts, erasures, events, now_text, users};

pub struct SqliteUserSession {
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

impl UserSession for SqliteUserSession {
    async fn newest_pending(&mut self) -> sqlx::Result<Option<NextEvent>> {
        let row: Option<NextEventRow> = sqlx::query_as(
            // The host's columns up to their bounds (`storage::written`).
            "SELECT e.id, substr(e.host_user_id, 1, 256) AS host_user_id,
                    substr(e.kind, 1, 65) AS kind, substr(e.email, 1, 1025) AS email,
                    substr(e.full_name, 1, 1025) AS full_name, e.occurred_at,
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
                    u.full_name AS user_full_name, u.updated_at AS user_updated_at,
                    u.username_seen_free AS user_seen_free
             FROM user_sync_events e
             LEFT JOIN user_sync_users u ON u.host_user_id = ?1
             WHERE e.host_user_id = ?1 AND e.state = 'pending'
             ORDER BY e.id DESC LIMIT 1",
        )
        .bind(self.host.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(NextEventRow::into_next))
    }

    fn finish<'a>(&'a mut self, e: Ending<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        events::finish(&self.pool, e.id, e.state, e.reason)
    }

    async fn supersede_older(&mut self, newest: i64) -> sqlx::Result<u64> {
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
    }

    fn snooze<'a>(&'a mut self, s: Snooze<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        events::snooze(&self.pool, s.id, s.delay, s.failed, s.reason)
    }

    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
        seen_free: bool,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send {
        users::claim_for_create(&self.pool, &self.host, profile, event_id, seen_free)
    }

    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send {
        users::holder_of(&self.pool, username, &self.host)
    }

    fn holder_claim<'a>(
        &'a mut self,
        holder: &'a HostUserId,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<HolderClaim>> + Send {
        users::holder_claim(&self.pool, holder, username)
    }

    async fn mapped_elsewhere<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> sqlx::Result<Option<HostUserId>> {
        let other: Option<String> = sqlx::query_scalar(
            "SELECT host_user_id FROM user_sync_users
             WHERE embedded_user_id = ?2 AND host_user_id <> ?1 LIMIT 1",
        )
        .bind(self.host.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(other.and_then(|h| HostUserId::parse(&h).ok()))
    }

    async fn note_update_sent(&mut self, event_id: i64) -> sqlx::Result<()> {
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
    }

    async fn record_holding<'a>(&'a mut self, found: Holding<'a>) -> sqlx::Result<()> {
        let Holding {
            id,
            profile,
            event_id,
        } = found;
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
    }

    fn record_synced<'a>(
        &'a mut self,
        synced: Holding<'a>,
        applied: Option<i64>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (id, profile, event_id) = (synced.id, synced.profile, synced.event_id);
        users::mark_synced(&self.pool, &self.host, id, profile, event_id, applied)
    }

    fn mark_without_user(
        &mut self,
        state: UserState,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        users::mark_without_user(&self.pool, &self.host, state, event_id)
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send {
        conflicts::report_conflict(&self.pool, conflict)
    }

    fn erasure_steps<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<ErasureSteps>> + Send {
        erasures::steps(&self.pool, &self.host, id)
    }

    fn record_erasure_step<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        step: ErasureStep,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        erasures::record_step(&self.pool, &self.host, id, step)
    }

    fn record_erasure<'a>(
        &'a mut self,
        erasure: Erasure<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        erasures::erase(&self.pool, &self.host, erasure)
    }

    fn release(self) -> impl Future<Output = sqlx::Result<()>> + Send {
        // Dropping the session drops the guard, which frees the user.
        drop(self);
        async { Ok(()) }
    }
}

//! The pipeline's storage on PostgreSQL: the outbox rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, the dispatcher is woken by `NOTIFY`, and the
//! per-user lock is a session-level advisory lock, so any number of
//! processes may share the database.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::domain::{EmbeddedUserId, HostUserId, Username};
use crate::ops::status::{self, ConflictRow, Status};
use crate::queue::JobQueue;
use crate::sync::job::SyncJob;
use crate::sync::plan::Profile;

use super::events::{self, EventState, NextEvent};
use super::users::{self, Claim, ErasureOutcome, NewConflict, UserLock};
use super::{Outbox, Reports, SyncStore, UserSession, WakeUps};

/// The channel the outbox trigger notifies.
pub const CHANNEL: &str = "user_sync_events";

/// The worker's tables in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Outbox for PgStore {
    fn dispatch_due<'a>(
        &'a self,
        limit: u32,
        queue: &'a dyn JobQueue,
    ) -> BoxFuture<'a, anyhow::Result<usize>> {
        Box::pin(async move {
            // The claimed rows stay locked (and skipped by other
            // dispatchers) until the commit, which comes only once the jobs
            // are in the queue; on a push failure the transaction rolls
            // back and nothing is marked.
            let mut tx = self.pool.begin().await?;
            let claimed = events::claim_due(&mut tx, limit).await?;
            if claimed.is_empty() {
                tx.commit().await?;
                return Ok(0);
            }
            let jobs: Vec<SyncJob> = claimed
                .into_iter()
                .map(|c| SyncJob {
                    event_id: c.id,
                    host_user_id: c.host_user_id,
                })
                .collect();
            let count = jobs.len();
            queue.push(jobs).await?;
            tx.commit().await?;
            Ok(count)
        })
    }

    fn next_due_in(&self) -> BoxFuture<'_, sqlx::Result<Option<Duration>>> {
        Box::pin(events::next_due_in(&self.pool))
    }

    fn sweep_stale(&self, after: Duration) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(events::sweep_stale(&self.pool, after))
    }

    fn wake_ups(&self) -> BoxFuture<'_, anyhow::Result<Box<dyn WakeUps>>> {
        Box::pin(async move {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(CHANNEL).await?;
            Ok(Box::new(Notified(listener)) as Box<dyn WakeUps>)
        })
    }
}

/// `NOTIFY`s of the outbox trigger, sent when the host's transaction
/// commits.
struct Notified(PgListener);

impl WakeUps for Notified {
    fn next(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(error) = self.0.recv().await {
                tracing::warn!(%error, "outbox listener interrupted; it reconnects");
            }
            while self.0.next_buffered().is_some() {}
        })
    }
}

impl SyncStore for PgStore {
    fn lock_user<'a>(
        &'a self,
        host: &'a HostUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<Box<dyn UserSession>>>> {
        Box::pin(async move {
            let lock = UserLock::try_acquire(&self.pool, host).await?;
            Ok(lock.map(|lock| {
                Box::new(PgUserSession {
                    lock,
                    host: host.clone(),
                }) as Box<dyn UserSession>
            }))
        })
    }

    fn mark_invalid<'a>(&'a self, id: i64, reason: &'a str) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(events::mark_invalid(&self.pool, id, reason))
    }

    fn snooze(&self, id: i64, delay: Duration) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            events::snooze(&mut conn, id, delay, false, None).await
        })
    }
}

/// A host user's rows on the connection holding the user's advisory lock.
struct PgUserSession {
    lock: UserLock,
    host: HostUserId,
}

impl UserSession for PgUserSession {
    fn newest_pending(&mut self) -> BoxFuture<'_, sqlx::Result<Option<NextEvent>>> {
        Box::pin(events::newest_pending(self.lock.conn(), &self.host))
    }

    fn finish<'a>(
        &'a mut self,
        id: i64,
        state: EventState,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(events::finish(self.lock.conn(), id, state, reason))
    }

    fn supersede_older(&mut self, newest: i64) -> BoxFuture<'_, sqlx::Result<u64>> {
        Box::pin(events::supersede_older(
            self.lock.conn(),
            &self.host,
            newest,
        ))
    }

    fn snooze<'a>(
        &'a mut self,
        id: i64,
        delay: Duration,
        failed: bool,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(events::snooze(self.lock.conn(), id, delay, failed, reason))
    }

    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<Claim>> {
        Box::pin(users::claim_for_create(
            self.lock.conn(),
            &self.host,
            profile,
            event_id,
        ))
    }

    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> BoxFuture<'a, sqlx::Result<Option<HostUserId>>> {
        Box::pin(users::holder_of(self.lock.conn(), username, &self.host))
    }

    fn note_update_sent(&mut self, event_id: i64) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(users::note_update_sent(
            self.lock.conn(),
            &self.host,
            event_id,
        ))
    }

    fn record_found<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(users::record_found(
            self.lock.conn(),
            &self.host,
            id,
            profile,
            event_id,
        ))
    }

    fn mark_synced<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        profile: &'a Profile,
        event_id: i64,
        applied: Option<i64>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(users::mark_synced(
            self.lock.conn(),
            &self.host,
            id,
            profile,
            event_id,
            applied,
        ))
    }

    fn mark_without_user<'a>(
        &'a mut self,
        state: &'a str,
        event_id: i64,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(users::mark_without_user(
            self.lock.conn(),
            &self.host,
            state,
            event_id,
        ))
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(users::report_conflict(self.lock.conn(), conflict))
    }

    fn erase<'a>(
        &'a mut self,
        embedded_user_id: Option<&'a EmbeddedUserId>,
        closure_event_id: i64,
        outcome: ErasureOutcome,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(users::erase(
            self.lock.conn(),
            &self.host,
            embedded_user_id,
            closure_event_id,
            outcome,
        ))
    }

    fn release(self: Box<Self>) -> BoxFuture<'static, sqlx::Result<()>> {
        Box::pin(self.lock.release())
    }
}

impl Reports for PgStore {
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>> {
        Box::pin(Status::load(&self.pool))
    }

    fn open_conflicts(&self) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(status::open_conflicts(&self.pool))
    }
}

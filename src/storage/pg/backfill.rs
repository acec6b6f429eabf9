//! What the backfill writes on PostgreSQL, on its own session (a
//! connection whose advisory locks are the jobs' per-user locks): the
//! statements of each table, in the file of that table.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::domain::{FullName, HostUserId, Profile, UserState};
use crate::storage::{
    BackfillTables, Claim, ClaimIntent, EventStateDue, Found, NewConflict, Signup, Unconfirmed,
};

use super::{conflicts, events, users};

impl BackfillTables for PgConnection {
    async fn now(&mut self) -> sqlx::Result<DateTime<Utc>> {
        sqlx::query_scalar("SELECT now()").fetch_one(self).await
    }

    async fn try_lock_many(&mut self, hosts: &[&str]) -> sqlx::Result<Vec<String>> {
        users::try_lock_many(self, hosts).await
    }

    async fn unlock_many(&mut self, hosts: &[&str]) -> sqlx::Result<()> {
        users::unlock_many(self, hosts).await
    }

    async fn claim_many_for_create(&mut self, intents: &[ClaimIntent<'_>]) -> sqlx::Result<()> {
        users::claim_many_for_create(self, intents).await
    }

    async fn claim_one_for_create(
        &mut self,
        host: &HostUserId,
        profile: &Profile,
    ) -> sqlx::Result<Claim> {
        let last = users::last_event_id(self, host).await?;
        users::claim_for_create(self, host, profile, last.unwrap_or(0)).await
    }

    async fn mark_synced_many(&mut self, found: &[Found<'_>]) -> sqlx::Result<u64> {
        users::mark_synced_many(self, found).await
    }

    async fn set_without_user(&mut self, host: &HostUserId, state: UserState) -> sqlx::Result<()> {
        users::set_without_user(self, host, state).await
    }

    async fn report_conflict(
        &mut self,
        conflict: &NewConflict<'_>,
        full_name: Option<&FullName>,
    ) -> sqlx::Result<bool> {
        let added = conflicts::report_conflict(self, conflict).await?;
        if added {
            conflicts::record_event_of(self, conflict, full_name).await?;
        }
        Ok(added)
    }

    async fn unconfirmed_since(
        &mut self,
        since: DateTime<Utc>,
        after: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<Unconfirmed>> {
        users::unconfirmed_since(self, since, after, limit).await
    }

    async fn unconfirmed_of(&mut self, hosts: &[&str]) -> sqlx::Result<Vec<Unconfirmed>> {
        users::unconfirmed_of(self, hosts).await
    }

    async fn count_unconfirmed_since(&mut self, since: DateTime<Utc>) -> sqlx::Result<u64> {
        users::count_unconfirmed_since(self, since).await
    }

    async fn record_signups(
        &mut self,
        creates: &[Signup<'_>],
    ) -> sqlx::Result<Vec<(i64, HostUserId)>> {
        events::record_signups(self, creates).await
    }

    async fn event_states(&mut self, ids: &[i64]) -> sqlx::Result<Vec<EventStateDue>> {
        events::states(self, ids).await
    }
}

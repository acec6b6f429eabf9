//! What the backfill reads and writes, behind one trait so that one run
//! (the scan, the decisions, both modes, the confirmation of creates)
//! serves PostgreSQL and SQLite.
//!
//! A [`BackfillDb`] is the backfill's own session: its working tables
//! (the `GET /users` snapshot, the dry run's planned creates) and the
//! per-user locks it holds live with it and go with it, killed or not.
//! [`PgBackfillDb`] forwards to the PostgreSQL queries next to their
//! tables ([`snapshot`], [`users`], [`single`]); the SQLite session is in
//! [`super::sqlite`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use std::future::Future;

use crate::domain::{HostUserId, Intent, Profile, UserState, Username};
use crate::embedded::EmbeddedUser;
use crate::embedded::client::UserStream;
use crate::host::table::{HostRow, HostTable};
use crate::storage::conflicts::NewConflict;
use crate::storage::pg;
use crate::storage::users::{Claim, ClaimIntent, Found, Unconfirmed};

use super::decide::Known;
use super::snapshot::{self, LoadError};

/// An event's state, and when it comes due if pending: (id, state, due).
pub(super) type EventState = (i64, String, DateTime<Utc>);

/// One user to create: (host, profile, the intent of its row's claim when
/// the row was `creating`).
pub(super) type Create<'a> = (&'a HostUserId, &'a Profile, Option<Intent>);

/// The backfill's session on the worker's database.
pub(super) trait BackfillDb: Send {
    /// The database's clock.
    fn now(&mut self) -> impl Future<Output = sqlx::Result<DateTime<Utc>>> + Send;

    // The host's users ([source]).
    fn page<'a>(
        &'a mut self,
        source: &'a HostTable,
        after: Option<&'a str>,
        limit: u32,
    ) -> impl Future<Output = sqlx::Result<Vec<HostRow>>> + Send;
    fn count_open<'a>(
        &'a mut self,
        source: &'a HostTable,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    fn count_closed<'a>(
        &'a mut self,
        source: &'a HostTable,
    ) -> impl Future<Output = sqlx::Result<Option<u64>>> + Send;

    // The snapshot of `GET /users` and the dry run's plan.
    fn prepare_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn discard_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn load_snapshot(
        &mut self,
        stream: UserStream,
    ) -> impl Future<Output = Result<u64, LoadError>> + Send;
    fn find_in_snapshot<'a>(
        &'a mut self,
        usernames: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<HashMap<Username, EmbeddedUser>>> + Send;
    fn plan_creates<'a>(
        &'a mut self,
        planned: &'a [(&'a str, &'a str)],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn lookup<'a>(
        &'a mut self,
        users: &'a [(HostUserId, Profile)],
    ) -> impl Future<Output = sqlx::Result<Vec<Known>>> + Send;

    // The per-user locks, shared with the jobs of the pipeline.
    fn try_lock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<String>>> + Send;
    fn unlock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    // The worker's tables.
    fn claim_many_for_create<'a>(
        &'a mut self,
        intents: &'a [ClaimIntent<'a>],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn last_event_id<'a>(
        &'a mut self,
        host: &'a HostUserId,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send;
    fn claim_for_create<'a>(
        &'a mut self,
        host: &'a HostUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send;
    fn mark_synced_many<'a>(
        &'a mut self,
        found: &'a [Found<'a>],
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    fn set_without_user<'a>(
        &'a mut self,
        host: &'a HostUserId,
        state: UserState,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;
    fn unconfirmed_since<'a>(
        &'a mut self,
        since: DateTime<Utc>,
        after: &'a str,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send;
    fn unconfirmed_of<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send;
    fn count_unconfirmed_since(
        &mut self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;

    // Single mode: signups through the pipeline's job.
    fn record_signups<'a>(
        &'a mut self,
        creates: &'a [Create<'a>],
    ) -> impl Future<Output = sqlx::Result<Vec<(i64, HostUserId)>>> + Send;
    fn event_states<'a>(
        &'a mut self,
        ids: &'a [i64],
    ) -> impl Future<Output = sqlx::Result<Vec<EventState>>> + Send;

    /// Ends the session (its working tables and locks go with it).
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// The backfill's PostgreSQL session: a connection of its own, out of the
/// pool, holding temporary tables and advisory locks.
pub(super) struct PgBackfillDb {
    pub(super) conn: PgConnection,
}

impl BackfillDb for PgBackfillDb {
    fn now(&mut self) -> impl Future<Output = sqlx::Result<DateTime<Utc>>> + Send {
        sqlx::query_scalar("SELECT now()").fetch_one(&mut self.conn)
    }

    fn page<'a>(
        &'a mut self,
        source: &'a HostTable,
        after: Option<&'a str>,
        limit: u32,
    ) -> impl Future<Output = sqlx::Result<Vec<HostRow>>> + Send {
        source.page(&mut self.conn, after, limit)
    }

    fn count_open<'a>(
        &'a mut self,
        source: &'a HostTable,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send {
        source.count_open(&mut self.conn)
    }

    fn count_closed<'a>(
        &'a mut self,
        source: &'a HostTable,
    ) -> impl Future<Output = sqlx::Result<Option<u64>>> + Send {
        source.count_closed(&mut self.conn)
    }

    fn prepare_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        snapshot::prepare(&mut self.conn)
    }

    fn discard_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        snapshot::discard(&mut self.conn)
    }

    fn load_snapshot(
        &mut self,
        stream: UserStream,
    ) -> impl Future<Output = Result<u64, LoadError>> + Send {
        snapshot::load(&mut self.conn, stream)
    }

    fn find_in_snapshot<'a>(
        &'a mut self,
        usernames: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<HashMap<Username, EmbeddedUser>>> + Send {
        snapshot::find(&mut self.conn, usernames)
    }

    fn plan_creates<'a>(
        &'a mut self,
        planned: &'a [(&'a str, &'a str)],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        snapshot::plan_creates(&mut self.conn, planned)
    }

    fn lookup<'a>(
        &'a mut self,
        users: &'a [(HostUserId, Profile)],
    ) -> impl Future<Output = sqlx::Result<Vec<Known>>> + Send {
        snapshot::lookup(&mut self.conn, users)
    }

    fn try_lock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<String>>> + Send {
        pg::users::try_lock_many(&mut self.conn, hosts)
    }

    fn unlock_many<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        pg::users::unlock_many(&mut self.conn, hosts)
    }

    fn claim_many_for_create<'a>(
        &'a mut self,
        intents: &'a [ClaimIntent<'a>],
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        pg::users::claim_many_for_create(&mut self.conn, intents)
    }

    fn last_event_id<'a>(
        &'a mut self,
        host: &'a HostUserId,
    ) -> impl Future<Output = sqlx::Result<Option<i64>>> + Send {
        pg::users::last_event_id(&mut self.conn, host)
    }

    fn claim_for_create<'a>(
        &'a mut self,
        host: &'a HostUserId,
        profile: &'a Profile,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send {
        pg::users::claim_for_create(&mut self.conn, host, profile, event_id)
    }

    fn mark_synced_many<'a>(
        &'a mut self,
        found: &'a [Found<'a>],
    ) -> impl Future<Output = sqlx::Result<u64>> + Send {
        pg::users::mark_synced_many(&mut self.conn, found)
    }

    fn set_without_user<'a>(
        &'a mut self,
        host: &'a HostUserId,
        state: UserState,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        pg::users::set_without_user(&mut self.conn, host, state)
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send {
        crate::storage::pg::conflicts::report_conflict(&mut self.conn, conflict)
    }

    fn unconfirmed_since<'a>(
        &'a mut self,
        since: DateTime<Utc>,
        after: &'a str,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send {
        pg::users::unconfirmed_since(&mut self.conn, since, after, limit)
    }

    fn unconfirmed_of<'a>(
        &'a mut self,
        hosts: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<Vec<Unconfirmed>>> + Send {
        pg::users::unconfirmed_of(&mut self.conn, hosts)
    }

    fn count_unconfirmed_since(
        &mut self,
        since: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<u64>> + Send {
        pg::users::count_unconfirmed_since(&mut self.conn, since)
    }

    fn record_signups<'a>(
        &'a mut self,
        creates: &'a [Create<'a>],
    ) -> impl Future<Output = sqlx::Result<Vec<(i64, HostUserId)>>> + Send {
        pg::events::record_signups(&mut self.conn, creates)
    }

    fn event_states<'a>(
        &'a mut self,
        ids: &'a [i64],
    ) -> impl Future<Output = sqlx::Result<Vec<EventState>>> + Send {
        pg::events::states(&mut self.conn, ids)
    }

    async fn close(self) -> () {
        if let Err(e) = self.conn.close().await {
            tracing::debug!(error = %e, "closing the backfill session");
        }
    }
}

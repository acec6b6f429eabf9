//! What operators read, on PostgreSQL: `status`, `conflicts`, `/metrics`.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::domain::{
    ConflictRow, ConflictStatus, ErasureRow, EventFilter, EventRow, EventState, FinishedInMinute,
    Pause, RetryTarget, Status, UserRecord,
};
use crate::storage::retention::RETAINED;
use crate::storage::{Operate, PgStore, Reports, ping};

/// The pending events (their `id` and `occurred_at`): those marked to
/// dispatch again, and those after the sweeper's place (every event before
/// it ended or was marked), whose transaction is one the place saw in
/// progress or began after it. Read in a transaction opened with
/// [`BY_INDEX`]: a plan made once for any place must not guess the range
/// after it large and read the whole outbox.
macro_rules! pending_set {
    () => {
        "SELECT id, occurred_at FROM user_sync.events
         WHERE redispatch AND state = 'pending'
         UNION ALL
         SELECT e.id, e.occurred_at FROM user_sync.dispatcher d CROSS JOIN LATERAL (
             SELECT id, occurred_at FROM user_sync.events
             WHERE txid = ANY(ARRAY(SELECT pg_snapshot_xip(d.swept)))
               AND state = 'pending' AND NOT redispatch
             UNION ALL
             SELECT id, occurred_at FROM user_sync.events
             WHERE txid >= pg_snapshot_xmax(d.swept) AND state = 'pending' AND NOT redispatch) e"
    };
}

/// Opens a read of [`pending_set!`]: through the indexes, whatever the plan
/// guesses of the sizes, and without a parallel worker (the plan made once
/// for any place guesses the probes of the transactions it saw in progress
/// a large read, and would start one, a millisecond or more, to read
/// nothing).
const BY_INDEX: &str = "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off;
     SET LOCAL max_parallel_workers_per_gather = 0";

impl Reports for PgStore {
    fn ping(&self) -> BoxFuture<'_, sqlx::Result<()>> {
        Box::pin(ping(self.pool()))
    }

    /// The counts behind `user-sync status`. Each reads live rows only,
    /// whatever the history: the pending events are those marked to
    /// dispatch again and those after the sweeper's place (every one
    /// before it ended or was marked), through `events_redispatch` and
    /// `events_by_txid`; the failed, invalid and conflict ones through
    /// `events_with_reason` (they all carry a reason; the applied and
    /// superseded bulk of the history none); open conflicts through
    /// `conflicts_recheck_due`, open closures through `events_closures`.
    fn status(&self) -> BoxFuture<'_, sqlx::Result<Status>> {
        Box::pin(async move {
            let mut tx = self.pool().begin_with(BY_INDEX).await?;
            let row: (i64, i64, i64, i64, f64) = sqlx::query_as(concat!(
                "WITH open AS (",
                pending_set!(),
                ")
                 SELECT (SELECT count(*) FROM open),
                        (SELECT count(*) FROM user_sync.events
                         WHERE reason IS NOT NULL AND state = 'failed'),
                        (SELECT count(*) FROM user_sync.events
                         WHERE reason IS NOT NULL AND state = 'invalid'),
                        (SELECT count(*) FROM user_sync.events
                         WHERE reason IS NOT NULL AND state = 'conflict'),
                        COALESCE(EXTRACT(EPOCH FROM now() - (SELECT min(occurred_at) FROM open)),
                                 0)::float8"
            ))
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let (synced_users, open_conflicts, completed_erasures): (i64, i64, i64) =
                sqlx::query_as(
                    "SELECT (SELECT count(*) FROM user_sync.users WHERE state = 'synced'),
                        (SELECT count(*) FROM user_sync.conflicts WHERE status = 'open'),
                        (SELECT count(*) FROM user_sync.erasures)",
                )
                .fetch_one(self.pool())
                .await?;
            let (pending_erasures, oldest_pending_erasure_seconds) =
                super::super::erasures::pending_summary(self).await?;
            let retention = sqlx::query_as(RETAINED)
                .fetch_optional(self.pool())
                .await?
                .unwrap_or_default();
            Ok(Status {
                pending_events: row.0,
                failed_events: row.1,
                invalid_events: row.2,
                conflict_events: row.3,
                synced_users,
                open_conflicts,
                completed_erasures,
                outbox_lag_seconds: row.4.max(0.0),
                pending_erasures,
                oldest_pending_erasure_seconds,
                paused: self.pause_state().await?,
                retention,
            })
        })
    }

    fn conflicts(&self, status: ConflictStatus) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.conflicts WHERE status = ANY($1) ORDER BY id",
                ConflictRow::COLUMNS
            )))
            .bind(status.statuses())
            .fetch_all(self.pool())
            .await
        })
    }

    fn conflict(&self, id: i64) -> BoxFuture<'_, sqlx::Result<Option<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.conflicts WHERE id = $1",
                ConflictRow::COLUMNS
            )))
            .bind(id)
            .fetch_optional(self.pool())
            .await
        })
    }

    fn pause_state(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>> {
        Box::pin(async move {
            sqlx::query_as(
                "SELECT paused_at, paused_by, reason FROM user_sync.pause
                 WHERE paused_at IS NOT NULL",
            )
            .fetch_optional(self.pool())
            .await
        })
    }
}

impl Operate for PgStore {
    fn pause<'a>(
        &'a self,
        by: &'a str,
        reason: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<Pause>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE user_sync.pause
                 SET paused_at = coalesce(paused_at, now()), paused_by = $1,
                     reason = coalesce($2, reason)
                 RETURNING paused_at, paused_by, reason",
            )
            .bind(by)
            .bind(reason)
            .fetch_one(self.pool())
            .await
        })
    }

    fn resume(&self) -> BoxFuture<'_, sqlx::Result<Option<Pause>>> {
        Box::pin(async move {
            sqlx::query_as(
                "UPDATE user_sync.pause p SET paused_at = NULL, paused_by = NULL, reason = NULL
                 FROM (SELECT paused_at, paused_by, reason FROM user_sync.pause) AS was
                 WHERE was.paused_at IS NOT NULL
                 RETURNING was.paused_at, was.paused_by, was.reason",
            )
            .fetch_optional(self.pool())
            .await
        })
    }

    fn events<'a>(&'a self, filter: &'a EventFilter) -> BoxFuture<'a, sqlx::Result<Vec<EventRow>>> {
        Box::pin(async move {
            if filter.state.as_deref() == Some("pending") {
                // The pending ones are read where they are (see `status`).
                let mut tx = self.pool().begin_with(BY_INDEX).await?;
                let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {} FROM user_sync.events
                     WHERE id = ANY(ARRAY(SELECT id FROM ({}) p))
                       AND state = $1
                       AND ($2::text IS NULL OR host_user_id = $2)
                       AND ($3::timestamptz IS NULL OR occurred_at >= $3)
                     ORDER BY id DESC LIMIT $4",
                    EventRow::COLUMNS,
                    pending_set!()
                )))
                .bind(filter.state.as_deref())
                .bind(filter.host_user_id.as_deref())
                .bind(filter.since)
                .bind(filter.limit)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(rows);
            }
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.events
                 WHERE {}
                   AND ($2::text IS NULL OR host_user_id = $2)
                   AND ($3::timestamptz IS NULL OR occurred_at >= $3)
                 ORDER BY id DESC LIMIT $4",
                EventRow::COLUMNS,
                state_condition(filter.state.as_deref(), "")
            )))
            .bind(filter.state.as_deref())
            .bind(filter.host_user_id.as_deref())
            .bind(filter.since)
            .bind(filter.limit)
            .fetch_all(self.pool())
            .await
        })
    }

    fn retry_events<'a>(&'a self, target: &'a RetryTarget) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let (state, hosts): (Option<&str>, Option<&[String]>) = match target {
                RetryTarget::State(state) => (Some(state), None),
                RetryTarget::Hosts(hosts) => (None, Some(hosts)),
            };
            let mut tx = self.pool().begin().await?;
            // The newest event of each user, found from the events in the
            // state asked for (or of the users named).
            let retried: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "WITH was AS (
                     SELECT e.id, e.state AS was_state, e.finished_at AS was_finished
                     FROM user_sync.events e
                     WHERE e.host_user_id IS NOT NULL
                       AND {}
                       AND ($2::text[] IS NULL OR e.host_user_id = ANY($2))
                       AND NOT EXISTS (SELECT 1 FROM (SELECT id FROM user_sync.events
                                                      WHERE host_user_id = e.host_user_id
                                                      OFFSET 0) n
                                       WHERE n.id > e.id)
                     FOR UPDATE OF e),
                 retried AS (
                     UPDATE user_sync.events e
                     SET state = 'pending', available_at = now(), attempts = 0, reason = NULL,
                         finished_at = NULL, txid = pg_current_xact_id(), redispatch = false
                     FROM was WHERE e.id = was.id
                     RETURNING was.was_state, was.was_finished),
                 {}
                 SELECT count(*) FROM retried",
                state_condition(state, "e."),
                super::events::uncount_ends!("retried")
            )))
            .bind(state)
            .bind(hosts)
            .fetch_one(&mut *tx)
            .await?;
            let retried = u64::try_from(retried).unwrap_or(0);
            if retried > 0 {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(super::CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(retried)
        })
    }

    fn user_record<'a>(
        &'a self,
        host: &'a str,
        recent: i64,
    ) -> BoxFuture<'a, sqlx::Result<UserRecord>> {
        Box::pin(async move {
            let mapping = sqlx::query_as(
                "SELECT state, embedded_user_id, username, updated_at FROM user_sync.users
                 WHERE host_user_id = $1",
            )
            .bind(host)
            .fetch_optional(self.pool())
            .await?;
            let events = self
                .events(&EventFilter {
                    host_user_id: Some(host.to_owned()),
                    limit: recent,
                    ..EventFilter::default()
                })
                .await?;
            let conflicts = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.conflicts WHERE host_user_id = $1 ORDER BY id",
                ConflictRow::COLUMNS
            )))
            .bind(host)
            .fetch_all(self.pool())
            .await?;
            let erasures = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.erasures WHERE host_user_id = $1 ORDER BY id",
                ErasureRow::COLUMNS
            )))
            .bind(host)
            .fetch_all(self.pool())
            .await?;
            Ok(UserRecord {
                host_user_id: host.to_owned(),
                mapping,
                events,
                conflicts,
                erasures,
            })
        })
    }

    fn erasures(&self, limit: i64) -> BoxFuture<'_, sqlx::Result<Vec<ErasureRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync.erasures ORDER BY id DESC LIMIT $1",
                ErasureRow::COLUMNS
            )))
            .bind(limit)
            .fetch_all(self.pool())
            .await
        })
    }

    fn finished_per_minute(
        &self,
        since: DateTime<Utc>,
    ) -> BoxFuture<'_, sqlx::Result<Vec<FinishedInMinute>>> {
        Box::pin(async move {
            // The ends as they were counted (`finished_counts`): the
            // outbox's history is never read.
            let states: Vec<&str> = EventState::ALL.iter().map(|s| s.as_str()).collect();
            let rows: Vec<(DateTime<Utc>, String, i64)> = sqlx::query_as(
                // Never below none: an end made by a worker of before
                // 0014 was not counted, and its retry takes one back.
                "SELECT minute, state, GREATEST(sum(events), 0)::bigint FROM user_sync.finished_counts
                 WHERE minute >= $1 AND state = ANY($2)
                 GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(since)
            .bind(&states)
            .fetch_all(self.pool())
            .await?;
            Ok(rows
                .into_iter()
                .map(|(minute, state, events)| FinishedInMinute {
                    minute,
                    state,
                    events,
                })
                .collect())
        })
    }
}

/// The condition on `$1`, the state asked for: a failed, invalid or
/// conflict one reads the events that carry a reason
/// (`events_with_reason`, whose condition, written out, lets the planner
/// use it whatever `$1` is), not the whole history; the others walk the
/// outbox from its newest event.
fn state_condition(state: Option<&str>, row: &str) -> String {
    match state {
        None => format!("($1::text IS NULL OR {row}state = $1)"),
        Some(state) if carries_reason(state) => {
            format!("{row}reason IS NOT NULL AND {row}state = $1")
        }
        Some(_) => format!("{row}state = $1"),
    }
}

/// Whether every event in `state` carries a reason (0014).
fn carries_reason(state: &str) -> bool {
    matches!(state, "failed" | "invalid" | "conflict")
}

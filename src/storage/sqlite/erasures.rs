//! `user_sync_erasures` in a SQLite file: the proof of deletion, written in
//! one transaction with the scrubbing of the user's personal data.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::SqlitePool;

use crate::domain::{EmbeddedUserId, ErasureRow, HostUserId, LogsSkipped, WebhookKind};
use crate::storage::webhooks::erasure_completed as completed;
use crate::storage::{
    Erasure, ErasureFilter, ErasureRequests, ErasureStep, ErasureSteps, Filed, Newest,
    PendingErasure,
};

use super::now_text;

/// What the erasure under way of `host` has done to Embedded user `id`.
pub(super) async fn steps(
    pool: &SqlitePool,
    host: &HostUserId,
    id: &EmbeddedUserId,
) -> sqlx::Result<ErasureSteps> {
    // Steps older than the closure at hand are an erasure called off by a
    // later event (see the PostgreSQL function of the same name).
    sqlx::query(
        "DELETE FROM user_sync_erasure_steps
         WHERE host_user_id = ?1
           AND min(coalesce(logs_sent_at, '~'), coalesce(logs_deleted_at, '~'),
                   coalesce(user_sent_at, '~'))
               < (SELECT e.occurred_at FROM user_sync_events e
                  WHERE e.host_user_id = ?1 AND e.state = 'pending'
                  ORDER BY e.id DESC LIMIT 1)",
    )
    .bind(host.as_str())
    .execute(pool)
    .await?;
    let row: Option<(bool, bool)> = sqlx::query_as(
        "SELECT logs_deleted_at IS NOT NULL, user_sent_at IS NOT NULL
         FROM user_sync_erasure_steps WHERE host_user_id = ?1 AND embedded_user_id = ?2",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map_or_else(ErasureSteps::default, |(logs, user)| ErasureSteps {
            logs_deleted: logs,
            user_delete_sent: user,
        }),
    )
}

/// Records one step of the erasure of `host` on Embedded user `id` (see
/// the PostgreSQL function of the same name).
pub(super) async fn record_step(
    pool: &SqlitePool,
    host: &HostUserId,
    id: &EmbeddedUserId,
    step: ErasureStep,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync_erasure_steps AS s
             (host_user_id, embedded_user_id, logs_sent_at, logs_deleted_at, user_sent_at)
         VALUES (?1, ?2,
                 CASE WHEN ?3 = 'sending_logs_delete' THEN ?4 END,
                 CASE WHEN ?3 = 'logs_deleted' THEN ?4 END,
                 CASE WHEN ?3 = 'sending_user_delete' THEN ?4 END)
         ON CONFLICT (host_user_id) DO UPDATE SET
             embedded_user_id = excluded.embedded_user_id,
             logs_sent_at = CASE WHEN s.embedded_user_id = excluded.embedded_user_id
                 THEN COALESCE(s.logs_sent_at, excluded.logs_sent_at)
                 ELSE excluded.logs_sent_at END,
             logs_deleted_at = CASE WHEN s.embedded_user_id = excluded.embedded_user_id
                 THEN COALESCE(s.logs_deleted_at, excluded.logs_deleted_at)
                 ELSE excluded.logs_deleted_at END,
             user_sent_at = CASE
                 WHEN ?3 = 'user_delete_not_sent' THEN NULL
                 WHEN s.embedded_user_id = excluded.embedded_user_id
                 THEN COALESCE(s.user_sent_at, excluded.user_sent_at)
                 ELSE excluded.user_sent_at END",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .bind(step.as_str())
    .bind(now_text())
    .execute(pool)
    .await?;
    Ok(())
}

/// Completes a closure: in one transaction, scrubs the user's email and
/// name from every table and records the erasure (and, when the deployment
/// sends them, an `erasure.completed` webhook); then truncates the
/// write-ahead log and ends the event.
pub(super) async fn erase(
    pool: &SqlitePool,
    host: &HostUserId,
    erasure: Erasure<'_>,
) -> sqlx::Result<()> {
    let Erasure {
        embedded_user_id,
        closure_event_id,
        outcome,
        logs_skipped,
    } = erasure;
    let now = now_text();
    let host = host.as_str();
    let mut tx = pool.begin().await?;
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
        "UPDATE user_sync_events
         SET email = NULL, full_name = NULL,
             reason = CASE WHEN reason IS NULL THEN NULL ELSE 'cleared on erasure' END
         WHERE host_user_id = ?1 AND id <= ?2
           AND (email IS NOT NULL OR full_name IS NOT NULL OR reason IS NOT NULL)",
    )
    .bind(host)
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    // Its open conflicts end with it (the host hears of each), then go:
    // they name its username.
    super::conflicts::resolve_synced(&mut tx, &[host], &now).await?;
    sqlx::query("DELETE FROM user_sync_conflicts WHERE host_user_id = ?1")
        .bind(host)
        .execute(&mut *tx)
        .await?;
    let recorded: Option<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync_erasures
             (host_user_id, embedded_user_id, event_id, outcome, requested_at, completed_at,
              logs_deleted_at, user_deleted_at, logs_skipped)
         SELECT ?1, ?2, e.id, ?3, e.occurred_at, ?5,
                (SELECT s.logs_deleted_at FROM user_sync_erasure_steps s
                  WHERE s.host_user_id = ?1 AND s.embedded_user_id = ?2),
                CASE WHEN ?2 IS NOT NULL THEN ?5 END, ?6
         FROM user_sync_events e WHERE e.id = ?4
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(host)
    .bind(embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(outcome.as_str())
    .bind(closure_event_id)
    .bind(&now)
    .bind(logs_skipped.map(LogsSkipped::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_sync_erasure_steps WHERE host_user_id = ?1")
        .bind(host)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM user_sync_erasure_alerts WHERE event_id IN
             (SELECT id FROM user_sync_events WHERE host_user_id = ?1)",
    )
    .bind(host)
    .execute(&mut *tx)
    .await?;
    if let Some(erasure_id) = recorded {
        let data = completed(
            host,
            embedded_user_id,
            closure_event_id,
            outcome,
            erasure_id,
        );
        super::webhooks::enqueue(&mut tx, WebhookKind::ErasureCompleted, &data).await?;
    }
    tx.commit().await?;
    // The write-ahead log still holds the pages as they were before, emails
    // and all, until it is checkpointed and truncated. Erasures are rare:
    // each truncates it, and only then ends its event, so that an erasure
    // shown done has left nothing there, and one cut short by a crash is
    // done again, truncation included. A reader holding an old snapshot
    // past the busy timeout makes the checkpoint stop short (it reports
    // busy, not an error); the next erasure finishes the job.
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(pool)
        .await
    {
        Ok((0, _, _)) => {}
        Ok((_, log, checkpointed)) => tracing::warn!(
            frames = log,
            checkpointed,
            "the WAL was not truncated after an erasure: a reader held an old snapshot"
        ),
        Err(error) => tracing::warn!(%error, "the WAL was not truncated after an erasure"),
    }
    let mut tx = pool.begin().await?;
    super::events::mark_applied(&mut tx, closure_event_id, &now).await?;
    tx.commit().await?;
    Ok(())
}

/// The pending requests (see the PostgreSQL query of the same name).
const PENDING: &str = "SELECT e.host_user_id, e.id AS event_id, e.state,
            e.occurred_at AS requested_at, u.embedded_user_id, s.logs_deleted_at, e.reason
     FROM user_sync_events e
     LEFT JOIN user_sync_users u ON u.host_user_id = e.host_user_id
     LEFT JOIN user_sync_erasure_steps s ON s.host_user_id = e.host_user_id
     WHERE e.kind = 'account_closure' AND e.state IN ('pending', 'failed')
       AND e.host_user_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM user_sync_events n
                       WHERE n.host_user_id = e.host_user_id AND n.id > e.id
                         AND n.state <> 'invalid')";

impl ErasureRequests for super::SqliteStore {
    fn request_erasures<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> BoxFuture<'a, sqlx::Result<Vec<Filed>>> {
        Box::pin(async move {
            // A write first, so that the transaction never upgrades a read
            // lock (see `session`).
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            let mut filed = Vec::with_capacity(hosts.len());
            for host in hosts {
                let newest: Option<Newest> = sqlx::query_as(
                    "SELECT e.kind, e.state, e.id,
                            (SELECT u.state FROM user_sync_users u WHERE u.host_user_id = ?1)
                              AS user_state
                     FROM user_sync_events e WHERE e.host_user_id = ?1 ORDER BY e.id DESC LIMIT 1",
                )
                .bind(host.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let answer = match newest.as_ref().and_then(Newest::answer) {
                    Some(answer) => answer,
                    None => Filed::New(
                        sqlx::query_scalar(
                            "INSERT INTO user_sync_events (host_user_id, kind)
                             VALUES (?1, 'account_closure') RETURNING id",
                        )
                        .bind(host.as_str())
                        .fetch_one(&mut *tx)
                        .await?,
                    ),
                };
                filed.push(answer);
            }
            tx.commit().await?;
            Ok(filed)
        })
    }

    fn erasure_records<'a>(
        &'a self,
        filter: &'a ErasureFilter,
    ) -> BoxFuture<'a, sqlx::Result<Vec<ErasureRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {} FROM user_sync_erasures
                 WHERE (?1 IS NULL OR completed_at >= ?1) AND (?2 IS NULL OR host_user_id = ?2)
                 ORDER BY completed_at, id",
                ErasureRow::COLUMNS
            )))
            .bind(filter.since.map(super::text_at))
            .bind(filter.host_user_id.as_deref())
            .fetch_all(self.pool())
            .await
        })
    }

    fn pending_erasures<'a>(
        &'a self,
        filter: &'a ErasureFilter,
    ) -> BoxFuture<'a, sqlx::Result<Vec<PendingErasure>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{PENDING}
                   AND (?1 IS NULL OR e.occurred_at >= ?1) AND (?2 IS NULL OR e.host_user_id = ?2)
                 ORDER BY e.occurred_at, e.id"
            )))
            .bind(filter.since.map(super::text_at))
            .bind(filter.host_user_id.as_deref())
            .fetch_all(self.pool())
            .await
        })
    }

    fn claim_overdue<'a>(
        &'a self,
        after: Duration,
        every: Duration,
    ) -> BoxFuture<'a, sqlx::Result<Vec<PendingErasure>>> {
        Box::pin(async move {
            let now = chrono::Utc::now();
            let ago = |d: Duration| {
                super::text_at(now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
            };
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            let overdue: Vec<PendingErasure> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{PENDING} AND e.occurred_at <= ?1 ORDER BY e.occurred_at, e.id"
            )))
            .bind(ago(after))
            .fetch_all(&mut *tx)
            .await?;
            let mut claimed = Vec::new();
            for pending in overdue {
                let won: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO user_sync_erasure_alerts (event_id, alerted_at) VALUES (?1, ?2)
                     ON CONFLICT (event_id) DO UPDATE SET alerted_at = excluded.alerted_at
                     WHERE user_sync_erasure_alerts.alerted_at <= ?3
                     RETURNING event_id",
                )
                .bind(pending.event_id)
                .bind(super::text_at(now))
                .bind(ago(every))
                .fetch_optional(&mut *tx)
                .await?;
                if won.is_some() {
                    claimed.push(pending);
                }
            }
            tx.commit().await?;
            Ok(claimed)
        })
    }
}

//! `user_sync.erasures` on PostgreSQL: the proof of deletion. A closure
//! completes here, in one transaction with the scrubbing of the user's personal
//! data.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::domain::{EmbeddedUserId, ErasureRow, HostUserId, LogsSkipped, WebhookKind};
use crate::storage::webhooks::erasure_completed;
use crate::storage::{
    Erasure, ErasureFilter, ErasureRequests, ErasureStep, ErasureSteps, Filed, Newest,
    PendingErasure,
};

/// What the erasure under way of `host` has done to Embedded user `id`.
pub async fn steps(
    conn: &mut PgConnection,
    host: &HostUserId,
    id: &EmbeddedUserId,
) -> sqlx::Result<ErasureSteps> {
    // Steps older than the closure at hand belong to an erasure that a
    // later event of the user called off (a signup after a closure): the
    // user lived on, and made logs again. They go, and this erasure
    // starts over.
    sqlx::query(
        "DELETE FROM user_sync.erasure_steps s
         WHERE s.host_user_id = $1
           AND LEAST(s.logs_sent_at, s.logs_deleted_at, s.user_sent_at)
               < (SELECT e.occurred_at
                  FROM (SELECT id, state, occurred_at FROM user_sync.events
                        WHERE host_user_id = $1 OFFSET 0) e
                  WHERE e.state = 'pending'
                  ORDER BY e.id DESC LIMIT 1)",
    )
    .bind(host.as_str())
    .execute(&mut *conn)
    .await?;
    let row: Option<(bool, bool)> = sqlx::query_as(
        "SELECT logs_deleted_at IS NOT NULL, user_sent_at IS NOT NULL
         FROM user_sync.erasure_steps WHERE host_user_id = $1 AND embedded_user_id = $2",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(
        row.map_or_else(ErasureSteps::default, |(logs, user)| ErasureSteps {
            logs_deleted: logs,
            user_delete_sent: user,
        }),
    )
}

/// Records one step of the erasure of `host` on Embedded user `id`, in a
/// commit of its own (durable: an intent is on disk before its call). Steps
/// recorded on another Embedded user start over.
pub async fn record_step(
    conn: &mut PgConnection,
    host: &HostUserId,
    id: &EmbeddedUserId,
    step: ErasureStep,
) -> sqlx::Result<()> {
    // The first time of each step is kept: a retry does not move it.
    sqlx::query(
        "INSERT INTO user_sync.erasure_steps AS s
             (host_user_id, embedded_user_id, logs_sent_at, logs_deleted_at, user_sent_at)
         VALUES ($1, $2,
                 CASE WHEN $3 = 'sending_logs_delete' THEN now() END,
                 CASE WHEN $3 = 'logs_deleted' THEN now() END,
                 CASE WHEN $3 = 'sending_user_delete' THEN now() END)
         ON CONFLICT (host_user_id) DO UPDATE SET
             embedded_user_id = EXCLUDED.embedded_user_id,
             logs_sent_at = CASE WHEN s.embedded_user_id = EXCLUDED.embedded_user_id
                 THEN COALESCE(s.logs_sent_at, EXCLUDED.logs_sent_at)
                 ELSE EXCLUDED.logs_sent_at END,
             logs_deleted_at = CASE WHEN s.embedded_user_id = EXCLUDED.embedded_user_id
                 THEN COALESCE(s.logs_deleted_at, EXCLUDED.logs_deleted_at)
                 ELSE EXCLUDED.logs_deleted_at END,
             user_sent_at = CASE
                 WHEN $3 = 'user_delete_not_sent' THEN NULL
                 WHEN s.embedded_user_id = EXCLUDED.embedded_user_id
                 THEN COALESCE(s.user_sent_at, EXCLUDED.user_sent_at)
                 ELSE EXCLUDED.user_sent_at END",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .bind(step.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Completes a closure: in one transaction, removes every email and name of
/// `host` from the worker's tables (its user row, its outbox rows up to the
/// closure, its conflicts), records the erasure with ids and times only
/// (the logs' time from its steps, the user's now; none for a user never
/// created) and, when the deployment sends them, an `erasure.completed`
/// webhook, drops the steps, and ends the closure event.
pub async fn erase(
    conn: &mut PgConnection,
    host: &HostUserId,
    erasure: &Erasure<'_>,
) -> sqlx::Result<()> {
    use sqlx::Connection;
    let Erasure {
        embedded_user_id,
        closure_event_id,
        outcome,
        logs_skipped,
    } = *erasure;
    let mut tx = conn.begin().await?;
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state, last_event_id)
         VALUES ($1, 'erased', $2)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, username = NULL, full_name = NULL, state = 'erased',
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(host.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE user_sync.events
         SET email = NULL, full_name = NULL,
             reason = CASE WHEN reason IS NULL THEN NULL ELSE 'cleared on erasure' END
         WHERE id = ANY(ARRAY(
                 SELECT o.id FROM (SELECT id FROM user_sync.events
                                   WHERE host_user_id = $1 OFFSET 0) o
                 WHERE o.id <= $2))
           AND (email IS NOT NULL OR full_name IS NOT NULL OR reason IS NOT NULL)",
    )
    .bind(host.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    // Its open conflicts end with it (the host hears of each), then go:
    // they name its username.
    sqlx::query(concat!(
        "WITH synced AS (SELECT unnest($1::text[]) AS host_user_id),",
        super::conflicts::resolve_synced!()
    ))
    .bind([host.as_str()])
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_sync.conflicts WHERE host_user_id = $1")
        .bind(host.as_str())
        .execute(&mut *tx)
        .await?;
    let recorded: Option<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync.erasures
             (host_user_id, embedded_user_id, event_id, outcome, requested_at,
              logs_deleted_at, user_deleted_at, logs_skipped)
         SELECT $1, $2, e.id, $3, e.occurred_at,
                (SELECT s.logs_deleted_at FROM user_sync.erasure_steps s
                  WHERE s.host_user_id = $1 AND s.embedded_user_id = $2),
                CASE WHEN $2 IS NOT NULL THEN now() END, $5
         FROM user_sync.events e WHERE e.id = $4
         ON CONFLICT (event_id) DO NOTHING
         RETURNING id",
    )
    .bind(host.as_str())
    .bind(embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(outcome.as_str())
    .bind(closure_event_id)
    .bind(logs_skipped.map(LogsSkipped::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_sync.erasure_steps WHERE host_user_id = $1")
        .bind(host.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM user_sync.erasure_alerts a USING user_sync.events e
         WHERE a.event_id = e.id AND e.host_user_id = $1",
    )
    .bind(host.as_str())
    .execute(&mut *tx)
    .await?;
    if let Some(erasure_id) = recorded {
        let data = erasure_completed(
            host.as_str(),
            embedded_user_id,
            closure_event_id,
            outcome,
            erasure_id,
        );
        super::webhooks::enqueue(&mut tx, WebhookKind::ErasureCompleted, &data).await?;
    }
    super::events::finish(
        &mut tx,
        closure_event_id,
        crate::domain::EventState::Applied,
        None,
    )
    .await?;
    tx.commit().await
}

// ---------------------------------------------------------------------------
// The backfill's set-based variants. One page of host users at a time: the
// same rows and states as the per-user functions above, in a few statements
// instead of a few per user.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Requests and proof: `user-sync erase`, `user-sync erasures`, the deadline.
// ---------------------------------------------------------------------------

/// The pending requests (see [`crate::storage::PendingErasure`]), with the
/// conditions after `WHERE` each caller adds.
const PENDING: &str = "SELECT e.host_user_id, e.id AS event_id, e.state,
            e.occurred_at AS requested_at, u.embedded_user_id, s.logs_deleted_at, e.reason
     FROM user_sync.events e
     LEFT JOIN user_sync.users u ON u.host_user_id = e.host_user_id
     LEFT JOIN user_sync.erasure_steps s ON s.host_user_id = e.host_user_id
     WHERE e.kind = 'account_closure' AND e.state IN ('pending', 'failed')
       AND e.host_user_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM (SELECT id, state FROM user_sync.events
                                      WHERE host_user_id = e.host_user_id OFFSET 0) n
                       WHERE n.id > e.id AND n.state <> 'invalid')";

impl ErasureRequests for super::PgStore {
    fn request_erasures<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> BoxFuture<'a, sqlx::Result<Vec<Filed>>> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await?;
            let mut filed = Vec::with_capacity(hosts.len());
            for host in hosts {
                let newest: Option<Newest> = sqlx::query_as(
                    "SELECT e.kind, e.state, e.id,
                            (SELECT u.state FROM user_sync.users u WHERE u.host_user_id = $1)
                              AS user_state
                     FROM user_sync.events e WHERE e.host_user_id = $1 ORDER BY e.id DESC LIMIT 1",
                )
                .bind(host.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let answer = match newest.as_ref().and_then(Newest::answer) {
                    Some(answer) => answer,
                    None => Filed::New(
                        sqlx::query_scalar(
                            "INSERT INTO user_sync.events (host_user_id, kind)
                             VALUES ($1, 'account_closure') RETURNING id",
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
                "SELECT {} FROM user_sync.erasures
                 WHERE ($1::timestamptz IS NULL OR completed_at >= $1)
                   AND ($2::text IS NULL OR host_user_id = $2)
                 ORDER BY completed_at, id",
                ErasureRow::COLUMNS
            )))
            .bind(filter.since)
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
                   AND ($1::timestamptz IS NULL OR e.occurred_at >= $1)
                   AND ($2::text IS NULL OR e.host_user_id = $2)
                 ORDER BY e.occurred_at, e.id"
            )))
            .bind(filter.since)
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
            let mut tx = self.pool().begin().await?;
            let overdue: Vec<PendingErasure> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{PENDING} AND e.occurred_at <= now() - make_interval(secs => $1)
                 ORDER BY e.occurred_at, e.id"
            )))
            .bind(after.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<i64> = overdue.iter().map(|p| p.event_id).collect();
            let claimed: Vec<i64> = sqlx::query_scalar(
                "INSERT INTO user_sync.erasure_alerts AS a (event_id, alerted_at)
                 SELECT unnest($1::bigint[]), now()
                 ON CONFLICT (event_id) DO UPDATE SET alerted_at = now()
                 WHERE a.alerted_at <= now() - make_interval(secs => $2)
                 RETURNING event_id",
            )
            .bind(&ids)
            .bind(every.as_secs_f64())
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(overdue
                .into_iter()
                .filter(|p| claimed.contains(&p.event_id))
                .collect())
        })
    }
}

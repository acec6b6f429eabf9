//! `user_sync.conflicts` on PostgreSQL.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Connection, FromRow, PgConnection, Row};

use crate::domain::{ConflictRow, EmbeddedUserId, FullName, HostUserId, Resolution};
use crate::storage::conflicts::{Adopted, Adoption, LatestEvent, NewConflict, Operator};
use crate::storage::events::WrittenEvent;
use crate::storage::{PgStore, Reconcile};

/// A conflict that stands as it is when met again: one an operator ignored
/// for this host user and username, or an open `unconfirmed_create` met
/// again as `taken_in_embedded` by the same Embedded user (that one may be
/// the worker's own, for an operator to decide).
const STANDS: &str = "SELECT 1 FROM user_sync.conflicts
     WHERE host_user_id = $1 AND username = $2
       AND (resolution = 'ignored'
            OR (status = 'open' AND reason = 'unconfirmed_create' AND $3 = 'taken_in_embedded'
                AND holder_embedded_user_id IS NOT DISTINCT FROM $5))
     LIMIT 1";

/// Reports a conflict once. An open one for the same host user, username
/// and reason is left open, the new encounter counted (`checks`); an
/// operator's retry that met it again is over. An open one with another
/// reason is resolved `moot`: the newest event met this one, so that one
/// no longer stands in the way (a holder who let go, a create whose refusal
/// was lost). One that stands (see [`STANDS`]) adds nothing. Each conflict
/// opened or resolved here writes its webhook in the same statement.
/// Returns whether a row was added.
pub async fn report_conflict(conn: &mut PgConnection, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let mut tx = conn.begin().await?;
    let stands = c
        .bind_to(sqlx::query(STANDS))
        .fetch_optional(&mut *tx)
        .await?;
    if stands.is_some() {
        tx.commit().await?;
        return Ok(false);
    }
    let added: bool = c
        .bind_to(sqlx::query(
            "WITH superseded AS (
                 UPDATE user_sync.conflicts
                 SET status = 'resolved', resolved_at = now(), resolution = 'moot',
                     resolved_by = 'worker', retry_by = NULL, retry_note = NULL
                 WHERE host_user_id = $1 AND username = $2 AND status = 'open' AND reason <> $3
                 RETURNING id, host_user_id, reason, holder_host_user_id,
                           holder_embedded_user_id, status, resolution),
             reported AS (
                 INSERT INTO user_sync.conflicts
                     (host_user_id, username, reason, holder_host_user_id,
                      holder_embedded_user_id, event_id)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (host_user_id, username, reason) WHERE status = 'open'
                 DO UPDATE SET checks = user_sync.conflicts.checks + 1, checked_at = now(),
                               retry_by = NULL, retry_note = NULL
                 RETURNING id, host_user_id, reason, holder_host_user_id,
                           holder_embedded_user_id, status, resolution, xmax = 0 AS added),
             told AS (
                 SELECT 'conflict.resolved' AS kind, s.* FROM superseded s
                 UNION ALL
                 SELECT 'conflict.opened', r.id, r.host_user_id, r.reason, r.holder_host_user_id,
                        r.holder_embedded_user_id, r.status, r.resolution
                 FROM reported r WHERE r.added),
             sent AS (
                 INSERT INTO user_sync.webhook_deliveries (type, payload)
                 SELECT t.kind, user_sync.webhook_body(t.kind, user_sync.conflict_data(
                     t.id, t.host_user_id, t.reason, t.holder_host_user_id,
                     t.holder_embedded_user_id, t.status, t.resolution))
                 FROM told t
                 WHERE EXISTS (SELECT 1 FROM user_sync.webhook_subscriptions w
                               WHERE w.type = t.kind))
             SELECT added FROM reported",
        ))
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    tx.commit().await?;
    Ok(added)
}

/// Gives a conflict the backfill found an event of its own (see
/// `BackfillTables::report_conflict`).
pub async fn record_event_of(
    conn: &mut PgConnection,
    c: &NewConflict<'_>,
    full_name: Option<&FullName>,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH e AS (
             INSERT INTO user_sync.events
                 (host_user_id, kind, email, full_name, state, reason, finished_at)
             VALUES ($1, 'signup', $2, $3, 'conflict', $4, now())
             RETURNING id, state),
         counted AS (
             INSERT INTO user_sync.finished_counts (minute, state, events)
             SELECT date_trunc('minute', now()), state, 1 FROM e)
         UPDATE user_sync.conflicts c SET event_id = e.id FROM e
         WHERE c.host_user_id = $1 AND c.username = $2 AND c.status = 'open'
           AND c.event_id IS NULL",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(full_name.map(FullName::as_str))
    .bind(c.reason.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// The part of a statement that resolves, as the worker, the open conflicts
/// of the host users in `synced(host_user_id)`: `retried` (by the operator
/// who asked) when an operator's retry is under way, `moot` otherwise; each
/// writes its `conflict.resolved` webhook. For a `WITH` list that defines
/// `synced`, in a statement whose `$1` is those host users, as `text[]`
/// (which lets the planner read the conflicts by host user).
macro_rules! resolve_synced {
    () => {
        "
     resolved AS (
         UPDATE user_sync.conflicts c
         SET status = 'resolved', resolved_at = now(),
             resolution = CASE WHEN c.retry_by IS NULL THEN 'moot' ELSE 'retried' END,
             resolved_by = coalesce(c.retry_by, 'worker'), note = coalesce(c.retry_note, c.note),
             retry_by = NULL, retry_note = NULL
         FROM synced s
         WHERE c.host_user_id = ANY($1::text[]) AND c.host_user_id = s.host_user_id
           AND c.status = 'open'
         RETURNING c.id, c.host_user_id, c.reason, c.holder_host_user_id,
                   c.holder_embedded_user_id, c.status, c.resolution)
     INSERT INTO user_sync.webhook_deliveries (type, payload)
     SELECT 'conflict.resolved', user_sync.webhook_body('conflict.resolved', user_sync.conflict_data(
         r.id, r.host_user_id, r.reason, r.holder_host_user_id, r.holder_embedded_user_id,
         r.status, r.resolution))
     FROM resolved r
     WHERE EXISTS (SELECT 1 FROM user_sync.webhook_subscriptions w
                   WHERE w.type = 'conflict.resolved')"
    };
}
pub(super) use resolve_synced;

/// Resolves open conflict `id` with `resolution` (an operator's), writing
/// its webhook; false when it is not open.
async fn resolve_one(
    conn: &mut PgConnection,
    id: i64,
    resolution: Resolution,
    operator: Operator<'_>,
) -> sqlx::Result<bool> {
    let resolved = sqlx::query(
        "WITH resolved AS (
             UPDATE user_sync.conflicts
             SET status = 'resolved', resolved_at = now(), resolution = $2, resolved_by = $3,
                 note = $4, retry_by = NULL, retry_note = NULL
             WHERE id = $1 AND status = 'open'
             RETURNING id, host_user_id, reason, holder_host_user_id, holder_embedded_user_id,
                       status, resolution),
         sent AS (
             INSERT INTO user_sync.webhook_deliveries (type, payload)
             SELECT 'conflict.resolved', user_sync.webhook_body('conflict.resolved',
                 user_sync.conflict_data(r.id, r.host_user_id, r.reason, r.holder_host_user_id,
                                         r.holder_embedded_user_id, r.status, r.resolution))
             FROM resolved r
             WHERE EXISTS (SELECT 1 FROM user_sync.webhook_subscriptions w
                           WHERE w.type = 'conflict.resolved'))
         SELECT 1 FROM resolved",
    )
    .bind(id)
    .bind(resolution.as_str())
    .bind(operator.by)
    .bind(operator.note)
    .fetch_optional(conn)
    .await?;
    Ok(resolved.is_some())
}

impl Reconcile for PgStore {
    fn latest_event<'a>(
        &'a self,
        host: &'a HostUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<LatestEvent>>> {
        Box::pin(async move {
            let row = sqlx::query(
                // The host's columns up to their bounds (`storage::written`).
                "SELECT id, substr(host_user_id, 1, 256) AS host_user_id,
                        substr(kind, 1, 65) AS kind, substr(email, 1, 1025) AS email,
                        substr(full_name, 1, 1025) AS full_name, occurred_at, attempts,
                        available_at, state, reason
                 FROM user_sync.events WHERE host_user_id = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(host.as_str())
            .fetch_optional(self.pool())
            .await?;
            row.map(|row| {
                Ok(LatestEvent {
                    event: WrittenEvent::from_row(&row)?.into_event(),
                    state: row.try_get("state")?,
                    reason: row.try_get("reason")?,
                })
            })
            .transpose()
        })
    }

    fn mapped_user<'a>(
        &'a self,
        host: &'a HostUserId,
    ) -> BoxFuture<'a, sqlx::Result<Option<String>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "SELECT embedded_user_id FROM user_sync.users
                 WHERE host_user_id = $1 AND state = 'synced' AND embedded_user_id IS NOT NULL",
            )
            .bind(host.as_str())
            .fetch_optional(self.pool())
            .await
        })
    }

    fn ignore<'a>(&'a self, id: i64, operator: Operator<'a>) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move {
            let mut conn = self.pool().acquire().await?;
            resolve_one(&mut conn, id, Resolution::Ignored, operator).await
        })
    }

    fn ask_retry<'a>(
        &'a self,
        id: i64,
        operator: Operator<'a>,
        // The event goes to the dispatcher either way: it is written under
        // this transaction's id, as a new one would be. A caller that runs
        // its job itself races the workers' job for the user, harmlessly:
        // the second finds the event done.
        _dispatch: bool,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await?;
            let host: Option<String> = sqlx::query_scalar(
                "UPDATE user_sync.conflicts
                 SET retry_by = $2, retry_note = $3, checks = checks + 1, checked_at = now()
                 WHERE id = $1 AND status = 'open' RETURNING host_user_id",
            )
            .bind(id)
            .bind(operator.by)
            .bind(operator.note)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(host) = host else {
                return Ok(None);
            };
            let event: Option<i64> = sqlx::query_scalar(concat!(
                "WITH was AS (
                     SELECT e.id, e.state AS was_state, e.finished_at AS was_finished
                     FROM user_sync.events e
                     WHERE e.id = (SELECT max(n.id) FROM user_sync.events n
                                   WHERE n.host_user_id = $1)
                     FOR UPDATE),
                 retried AS (
                     UPDATE user_sync.events e
                     SET state = 'pending', available_at = now(), attempts = 0, reason = NULL,
                         finished_at = NULL, txid = pg_current_xact_id(), redispatch = false
                     FROM was WHERE e.id = was.id
                     RETURNING e.id, was.was_state, was.was_finished),
                 ",
                super::events::uncount_ends!("retried"),
                "
                 SELECT id FROM retried"
            ))
            .bind(&host)
            .fetch_optional(&mut *tx)
            .await?;
            if event.is_some() {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(super::CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Ok(event)
        })
    }

    fn adopt<'a>(&'a self, a: Adoption<'a>) -> BoxFuture<'a, sqlx::Result<Adopted>> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await?;
            // The jobs' per-user lock, for this transaction.
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('user_sync:' || $1, 0))",
            )
            .bind(a.host.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if !locked {
                return Ok(Adopted::Busy);
            }
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM user_sync.conflicts WHERE id = $1 AND status = 'open' FOR UPDATE",
            )
            .bind(a.conflict_id)
            .fetch_optional(&mut *tx)
            .await?;
            if open.is_none() {
                return Ok(Adopted::NotOpen);
            }
            let mapped: Option<Option<String>> = sqlx::query_scalar(
                "SELECT embedded_user_id FROM user_sync.users
                 WHERE host_user_id = $1 AND state = 'synced'",
            )
            .bind(a.host.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(mapped) = mapped {
                return Ok(Adopted::HasUser(mapped));
            }
            let other: Option<String> = sqlx::query_scalar(
                "SELECT host_user_id FROM user_sync.users
                 WHERE (embedded_user_id = $2 OR username = $3) AND host_user_id <> $1 LIMIT 1",
            )
            .bind(a.host.as_str())
            .bind(a.user.as_str())
            .bind(a.held.username.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(other) = other {
                return Ok(Adopted::HeldBy(other));
            }
            sqlx::query(
                "INSERT INTO user_sync.users
                     (host_user_id, embedded_user_id, username, full_name, state, last_event_id)
                 VALUES ($1, $2, $3, $4, 'synced', $5)
                 ON CONFLICT (host_user_id) DO UPDATE
                 SET embedded_user_id = EXCLUDED.embedded_user_id, username = EXCLUDED.username,
                     full_name = EXCLUDED.full_name, state = 'synced',
                     last_event_id = coalesce(EXCLUDED.last_event_id, user_sync.users.last_event_id),
                     updated_at = now()",
            )
            .bind(a.host.as_str())
            .bind(a.user.as_str())
            .bind(a.held.username.as_str())
            .bind(a.held.full_name.as_ref().map(FullName::as_str))
            .bind(a.event_id)
            .execute(&mut *tx)
            .await?;
            resolve_one(&mut tx, a.conflict_id, Resolution::Adopted, a.operator).await?;
            // Whatever else was open for this host user no longer stands.
            sqlx::query(concat!(
                "WITH synced AS (SELECT unnest($1::text[]) AS host_user_id),",
                resolve_synced!()
            ))
            .bind([a.host.as_str()])
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Adopted::Adopted)
        })
    }

    fn record_full_name<'a>(
        &'a self,
        host: &'a HostUserId,
        user: &'a EmbeddedUserId,
        full_name: Option<&'a str>,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE user_sync.users SET full_name = $3, updated_at = now()
                 WHERE host_user_id = $1 AND embedded_user_id = $2 AND state = 'synced'",
            )
            .bind(host.as_str())
            .bind(user.as_str())
            .bind(full_name)
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn claim_rechecks(
        &self,
        limit: u32,
        interval: Duration,
    ) -> BoxFuture<'_, sqlx::Result<Vec<ConflictRow>>> {
        Box::pin(async move {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE user_sync.conflicts
                 SET next_check_at = now() + $2 * interval '1 millisecond'
                 WHERE id IN (SELECT id FROM user_sync.conflicts
                              WHERE status = 'open' AND next_check_at <= now()
                                AND detected_at <= now() - $2 * interval '1 millisecond'
                              ORDER BY next_check_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                 RETURNING {}",
                ConflictRow::COLUMNS
            )))
            .bind(i64::from(limit))
            .bind(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
        })
    }

    fn wake<'a>(&'a self, host: &'a str) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
        Box::pin(async move {
            sqlx::query_scalar("SELECT user_sync.wake_user($1)")
                .bind(host)
                .fetch_one(self.pool())
                .await
        })
    }

    fn still_holds<'a>(
        &'a self,
        holder: &'a str,
        username: &'a str,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move {
            let held: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM user_sync.users WHERE host_user_id = $1 AND username = $2",
            )
            .bind(holder)
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
            Ok(held.is_some())
        })
    }
}

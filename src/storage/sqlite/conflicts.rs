//! `user_sync_conflicts` in a SQLite file.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{FromRow, Row, SqliteConnection, SqlitePool};

use crate::domain::{ConflictRow, EmbeddedUserId, FullName, HostUserId, Resolution, WebhookKind};
use crate::storage::Reconcile;
use crate::storage::conflicts::{
    Adopted, Adoption, ConflictTold, LatestEvent, NewConflict, Operator,
};
use crate::storage::events::WrittenEvent;

use super::{SqliteStore, now_text, text_at, webhooks};

/// Reports a conflict once; returns whether a row was added. As on
/// PostgreSQL (see `pg::conflicts::report_conflict`): an ignored one, or an
/// open unconfirmed_create met again by its user, stands; an open one with
/// the same reason is counted met again; one with another reason no longer
/// stands, and resolves `moot`.
pub(crate) async fn report_conflict(pool: &SqlitePool, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let mut tx = pool.begin_with(super::BEGIN_WRITE).await?;
    let stands: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM user_sync_conflicts
         WHERE host_user_id = ?1 AND username = ?2
           AND (resolution = 'ignored'
                OR (status = 'open' AND reason = 'unconfirmed_create' AND ?3 = 'taken_in_embedded'
                    AND holder_embedded_user_id IS ?4))
         LIMIT 1",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(c.holder_embedded_user_id.map(EmbeddedUserId::as_str))
    .fetch_optional(&mut *tx)
    .await?;
    if stands.is_some() {
        tx.commit().await?;
        return Ok(false);
    }
    let now = now_text();
    let superseded: Vec<ConflictTold> = sqlx::query_as(
        "UPDATE user_sync_conflicts
         SET status = 'resolved', resolved_at = ?4, resolution = 'moot', resolved_by = 'worker',
             retry_by = NULL, retry_note = NULL
         WHERE host_user_id = ?1 AND username = ?2 AND status = 'open' AND reason <> ?3
         RETURNING id, host_user_id, reason, holder_host_user_id, holder_embedded_user_id,
                   status, resolution",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(&now)
    .fetch_all(&mut *tx)
    .await?;
    for told in &superseded {
        webhooks::enqueue(&mut tx, WebhookKind::ConflictResolved, &told.data()).await?;
    }
    let met_again = sqlx::query(
        "UPDATE user_sync_conflicts
         SET checks = checks + 1, checked_at = ?4, retry_by = NULL, retry_note = NULL
         WHERE host_user_id = ?1 AND username = ?2 AND reason = ?3 AND status = 'open'",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(&now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if met_again > 0 {
        tx.commit().await?;
        return Ok(false);
    }
    let opened: ConflictTold = c
        .bind_to(sqlx::query(
            "INSERT INTO user_sync_conflicts
                 (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id,
                  event_id, detected_at, next_check_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
             RETURNING id, host_user_id, reason, holder_host_user_id, holder_embedded_user_id,
                       status, resolution",
        ))
        .bind(&now)
        .try_map(|row| sqlx::FromRow::from_row(&row))
        .fetch_one(&mut *tx)
        .await?;
    webhooks::enqueue(&mut tx, WebhookKind::ConflictOpened, &opened.data()).await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives a conflict the backfill found an event of its own (see
/// `BackfillTables::report_conflict`).
pub(crate) async fn record_event_of(
    pool: &SqlitePool,
    c: &NewConflict<'_>,
    full_name: Option<&FullName>,
) -> sqlx::Result<()> {
    let now = now_text();
    let mut tx = pool.begin().await?;
    let event: i64 = sqlx::query_scalar(
        "INSERT INTO user_sync_events
             (host_user_id, kind, email, full_name, state, occurred_at, available_at,
              dispatched_at, reason, finished_at)
         VALUES (?1, 'signup', ?2, ?3, 'conflict', ?5, ?5, ?5, ?4, ?5)
         RETURNING id",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(full_name.map(FullName::as_str))
    .bind(c.reason.as_str())
    .bind(&now)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE user_sync_conflicts SET event_id = ?3
         WHERE host_user_id = ?1 AND username = ?2 AND status = 'open' AND event_id IS NULL",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(event)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Resolves, as the worker, the open conflicts of `hosts`, which just
/// synced: `retried` (by the operator who asked) when an operator's retry
/// is under way, `moot` otherwise; each writes its webhook.
pub(super) async fn resolve_synced(
    conn: &mut SqliteConnection,
    hosts: &[&str],
    now: &str,
) -> sqlx::Result<()> {
    let resolved: Vec<ConflictTold> = sqlx::query_as(
        "UPDATE user_sync_conflicts
         SET status = 'resolved', resolved_at = ?2,
             resolution = CASE WHEN retry_by IS NULL THEN 'moot' ELSE 'retried' END,
             resolved_by = coalesce(retry_by, 'worker'), note = coalesce(retry_note, note),
             retry_by = NULL, retry_note = NULL
         WHERE host_user_id IN (SELECT value FROM json_each(?1)) AND status = 'open'
         RETURNING id, host_user_id, reason, holder_host_user_id, holder_embedded_user_id,
                   status, resolution",
    )
    .bind(serde_json::json!(hosts).to_string())
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for told in &resolved {
        webhooks::enqueue(conn, WebhookKind::ConflictResolved, &told.data()).await?;
    }
    Ok(())
}

/// Resolves open conflict `id` with `resolution` (an operator's), writing
/// its webhook; false when it is not open.
async fn resolve_one(
    conn: &mut SqliteConnection,
    id: i64,
    resolution: Resolution,
    operator: Operator<'_>,
) -> sqlx::Result<bool> {
    let resolved: Option<ConflictTold> = sqlx::query_as(
        "UPDATE user_sync_conflicts
         SET status = 'resolved', resolved_at = ?5, resolution = ?2, resolved_by = ?3,
             note = ?4, retry_by = NULL, retry_note = NULL
         WHERE id = ?1 AND status = 'open'
         RETURNING id, host_user_id, reason, holder_host_user_id, holder_embedded_user_id,
                   status, resolution",
    )
    .bind(id)
    .bind(resolution.as_str())
    .bind(operator.by)
    .bind(operator.note)
    .bind(now_text())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(told) = resolved else {
        return Ok(false);
    };
    webhooks::enqueue(conn, WebhookKind::ConflictResolved, &told.data()).await?;
    Ok(true)
}

impl Reconcile for SqliteStore {
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
                 FROM user_sync_events WHERE host_user_id = ?1 ORDER BY id DESC LIMIT 1",
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
                "SELECT embedded_user_id FROM user_sync_users
                 WHERE host_user_id = ?1 AND state = 'synced' AND embedded_user_id IS NOT NULL",
            )
            .bind(host.as_str())
            .fetch_optional(self.pool())
            .await
        })
    }

    fn ignore<'a>(&'a self, id: i64, operator: Operator<'a>) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move {
            let mut tx = self.pool().begin().await?;
            let resolved = resolve_one(&mut tx, id, Resolution::Ignored, operator).await?;
            tx.commit().await?;
            Ok(resolved)
        })
    }

    fn ask_retry<'a>(
        &'a self,
        id: i64,
        operator: Operator<'a>,
        dispatch: bool,
    ) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
        Box::pin(async move {
            let now = now_text();
            let mut tx = self.pool().begin().await?;
            let host: Option<String> = sqlx::query_scalar(
                "UPDATE user_sync_conflicts
                 SET retry_by = ?2, retry_note = ?3, checks = checks + 1, checked_at = ?4
                 WHERE id = ?1 AND status = 'open' RETURNING host_user_id",
            )
            .bind(id)
            .bind(operator.by)
            .bind(operator.note)
            .bind(&now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(host) = host else {
                return Ok(None);
            };
            let event: Option<i64> = sqlx::query_scalar(
                "UPDATE user_sync_events
                 SET state = 'pending', available_at = ?2, attempts = 0, reason = NULL,
                     finished_at = NULL, dispatched_at = CASE WHEN ?3 THEN NULL ELSE ?2 END
                 WHERE id = (SELECT max(n.id) FROM user_sync_events n WHERE n.host_user_id = ?1)
                 RETURNING id",
            )
            .bind(&host)
            .bind(&now)
            .bind(dispatch)
            .fetch_optional(&mut *tx)
            .await?;
            if event.is_some() {
                tx.commit().await?;
            }
            Ok(event)
        })
    }

    fn adopt<'a>(&'a self, a: Adoption<'a>) -> BoxFuture<'a, sqlx::Result<Adopted>> {
        Box::pin(async move {
            // The caller holds the file's process lock: no job runs beside.
            let now = now_text();
            let mut tx = self.pool().begin_with(super::BEGIN_WRITE).await?;
            let open: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM user_sync_conflicts WHERE id = ?1 AND status = 'open'",
            )
            .bind(a.conflict_id)
            .fetch_optional(&mut *tx)
            .await?;
            if open.is_none() {
                return Ok(Adopted::NotOpen);
            }
            let mapped: Option<Option<String>> = sqlx::query_scalar(
                "SELECT embedded_user_id FROM user_sync_users
                 WHERE host_user_id = ?1 AND state = 'synced'",
            )
            .bind(a.host.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(mapped) = mapped {
                return Ok(Adopted::HasUser(mapped));
            }
            let other: Option<String> = sqlx::query_scalar(
                "SELECT host_user_id FROM user_sync_users
                 WHERE (embedded_user_id = ?2
                        OR (username = ?3 AND state IN ('creating', 'synced')))
                   AND host_user_id <> ?1
                 LIMIT 1",
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
                "INSERT INTO user_sync_users
                     (host_user_id, embedded_user_id, username, full_name, state, last_event_id,
                      updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'synced', ?5, ?6)
                 ON CONFLICT (host_user_id) DO UPDATE
                 SET embedded_user_id = excluded.embedded_user_id, username = excluded.username,
                     full_name = excluded.full_name, state = 'synced',
                     last_event_id = coalesce(excluded.last_event_id, last_event_id),
                     updated_at = excluded.updated_at",
            )
            .bind(a.host.as_str())
            .bind(a.user.as_str())
            .bind(a.held.username.as_str())
            .bind(a.held.full_name.as_ref().map(FullName::as_str))
            .bind(a.event_id)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            resolve_one(&mut tx, a.conflict_id, Resolution::Adopted, a.operator).await?;
            resolve_synced(&mut tx, &[a.host.as_str()], &now).await?;
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
                "UPDATE user_sync_users SET full_name = ?3, updated_at = ?4
                 WHERE host_user_id = ?1 AND embedded_user_id = ?2 AND state = 'synced'",
            )
            .bind(host.as_str())
            .bind(user.as_str())
            .bind(full_name)
            .bind(now_text())
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
            let now = chrono::Utc::now();
            let interval = chrono::Duration::from_std(interval).unwrap_or(chrono::TimeDelta::MAX);
            let next = now.checked_add_signed(interval).unwrap_or(now);
            let detected_before = now.checked_sub_signed(interval).unwrap_or(now);
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE user_sync_conflicts SET next_check_at = ?3
                 WHERE id IN (SELECT id FROM user_sync_conflicts
                              WHERE status = 'open' AND next_check_at <= ?2
                                AND detected_at <= ?4
                              ORDER BY next_check_at LIMIT ?1)
                 RETURNING {}",
                ConflictRow::COLUMNS
            )))
            .bind(i64::from(limit))
            .bind(text_at(now))
            .bind(text_at(next))
            .bind(text_at(detected_before))
            .fetch_all(self.pool())
            .await
        })
    }

    fn wake<'a>(&'a self, host: &'a str) -> BoxFuture<'a, sqlx::Result<Option<i64>>> {
        Box::pin(async move {
            sqlx::query_scalar(
                "UPDATE user_sync_events
                 SET state = 'pending', available_at = ?2, dispatched_at = NULL, attempts = 0,
                     reason = NULL, finished_at = NULL
                 WHERE id = (SELECT max(n.id) FROM user_sync_events n WHERE n.host_user_id = ?1)
                   AND state = 'conflict'
                 RETURNING id",
            )
            .bind(host)
            .bind(now_text())
            .fetch_optional(self.pool())
            .await
        })
    }

    fn still_holds<'a>(
        &'a self,
        holder: &'a str,
        username: &'a str,
    ) -> BoxFuture<'a, sqlx::Result<bool>> {
        Box::pin(async move {
            let held: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM user_sync_users
                 WHERE host_user_id = ?1 AND username = ?2 AND state IN ('creating', 'synced')",
            )
            .bind(holder)
            .bind(username)
            .fetch_optional(self.pool())
            .await?;
            Ok(held.is_some())
        })
    }
}

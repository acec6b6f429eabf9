//! `user_sync_users` in a SQLite file: the claims and the synced rows.

use sqlx::SqlitePool;

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Profile, UserState, Username};
use crate::storage::users::{Claim, HolderClaim};

use super::{now_text, parse_at};

/// Records the intent to create `profile` for `host` (see
/// [`crate::storage::users::claim_for_create`]); a username another host
/// user holds is refused. `seen_free`: the username was seen free in
/// Embedded right before.
pub(crate) async fn claim_for_create(
    pool: &SqlitePool,
    host: &HostUserId,
    profile: &Profile,
    event_id: i64,
    seen_free: bool,
) -> sqlx::Result<Claim> {
    let claimed = sqlx::query_scalar::<_, String>(
        "INSERT INTO user_sync_users
             (host_user_id, username, full_name, state, last_event_id, updated_at,
              username_seen_free)
         SELECT ?1, ?2, ?3, 'creating', ?4, ?5, ?6
         WHERE NOT EXISTS (
             SELECT 1 FROM user_sync_users
             WHERE username = ?2 AND state IN ('creating', 'synced') AND host_user_id <> ?1)
         ON CONFLICT (host_user_id) DO UPDATE
         SET username = excluded.username, full_name = excluded.full_name,
             embedded_user_id = NULL, state = 'creating',
             last_event_id = excluded.last_event_id, updated_at = excluded.updated_at,
             username_seen_free = excluded.username_seen_free
         RETURNING host_user_id",
    )
    .bind(host.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .bind(now_text())
    .bind(seen_free)
    .fetch_optional(pool)
    .await;
    match claimed {
        Ok(Some(_)) => Ok(Claim::Claimed),
        Ok(None) => taken(pool, &profile.username, host).await,
        Err(e) if crate::storage::is_unique_violation(&e) => {
            taken(pool, &profile.username, host).await
        }
        Err(e) => Err(e),
    }
}

async fn taken(pool: &SqlitePool, username: &Username, host: &HostUserId) -> sqlx::Result<Claim> {
    let holder = holder_of(pool, username, host).await?;
    Ok(Claim::TakenBy(holder.unwrap_or_else(|| host.clone())))
}

/// `holder`'s hold on `username` (see `UserSession::holder_claim`).
pub(crate) async fn holder_claim(
    pool: &SqlitePool,
    holder: &HostUserId,
    username: &Username,
) -> sqlx::Result<HolderClaim> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT u.state,
                (SELECT min(e.available_at) FROM user_sync_events e
                  WHERE e.host_user_id = u.host_user_id AND e.state = 'pending') AS due
         FROM user_sync_users u
         WHERE u.host_user_id = ?1 AND u.username = ?2 AND u.state IN ('creating', 'synced')",
    )
    .bind(holder.as_str())
    .bind(username.as_str())
    .fetch_optional(pool)
    .await?;
    // The column's text; an unreadable due time is due now.
    Ok(HolderClaim::of(row.map(|(state, due)| {
        let due = due.map(|t| parse_at(&t).unwrap_or_else(chrono::Utc::now));
        (state, due)
    })))
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

/// Records the user's Embedded user and profile and resolves its open
/// conflicts; with `applied`, that event ends `applied` too.
pub(super) async fn mark_synced(
    pool: &SqlitePool,
    host: &HostUserId,
    id: &EmbeddedUserId,
    profile: &Profile,
    event_id: i64,
    applied: Option<i64>,
) -> sqlx::Result<()> {
    let now = now_text();
    let mut tx = pool.begin().await?;
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
    .bind(host.as_str())
    .bind(id.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    if let Some(applied) = applied {
        super::events::mark_applied(&mut tx, applied, &now).await?;
    }
    super::conflicts::resolve_synced(&mut tx, &[host.as_str()], &now).await?;
    tx.commit().await
}

/// Records that the user has no Embedded user (in `state`), releasing any
/// username claim.
pub(super) async fn mark_without_user(
    pool: &SqlitePool,
    host: &HostUserId,
    state: UserState,
    event_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync_users (host_user_id, state, last_event_id, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, state = excluded.state,
             last_event_id = excluded.last_event_id, updated_at = excluded.updated_at",
    )
    .bind(host.as_str())
    .bind(state.as_str())
    .bind(event_id)
    .bind(now_text())
    .execute(pool)
    .await?;
    Ok(())
}

//! `user_sync.users` (host id ↔ Embedded userId and the last synced state),
//! `user_sync.conflicts` and `user_sync.erasures`, and the per-user lock.

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Username};
use crate::sync::plan::{Profile, Synced};

/// Exclusive right to act on one host user, across every process.
///
/// A session-level advisory lock held on a connection taken out of the
/// pool. Released explicitly on the normal path; if the holder is cancelled
/// or crashes, the connection is closed instead of going back to the pool,
/// and PostgreSQL releases the lock with the session.
pub struct UserLock {
    conn: Option<PoolConnection<Postgres>>,
    key: i64,
}

impl UserLock {
    /// Takes the lock if nobody holds it.
    pub async fn try_acquire(pool: &PgPool, host: &HostUserId) -> sqlx::Result<Option<Self>> {
        let mut conn = pool.acquire().await?;
        let (key, got): (i64, bool) = sqlx::query_as(
            "SELECT k, pg_try_advisory_lock(k)
             FROM (SELECT hashtextextended('user_sync:' || $1, 0) AS k) key",
        )
        .bind(host.as_str())
        .fetch_one(&mut *conn)
        .await?;
        Ok(got.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }

    /// The locked connection, for the holder's reads and writes. Each
    /// statement commits on its own: an intent written here is durable
    /// before the API call it announces.
    pub fn conn(&mut self) -> &mut PgConnection {
        match self.conn.as_mut() {
            Some(conn) => conn,
            // `conn` is only taken by `release` and `drop`, which consume
            // or end the lock.
            None => unreachable!("a released lock is never used"),
        }
    }

    pub async fn release(mut self) -> sqlx::Result<()> {
        if let Some(mut conn) = self.conn.take() {
            let result = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut *conn)
                .await;
            if result.is_err() {
                // Unknown state: never hand a possibly locked session back.
                drop(conn.detach());
            }
            result?;
        }
        Ok(())
    }
}

impl Drop for UserLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Closing the session releases the lock.
            drop(conn.detach());
        }
    }
}

/// The newest event the worker has acted on for `host`, if any.
pub async fn last_event_id(
    conn: &mut PgConnection,
    host: &HostUserId,
) -> sqlx::Result<Option<i64>> {
    let id: Option<Option<i64>> =
        sqlx::query_scalar("SELECT last_event_id FROM user_sync.users WHERE host_user_id = $1")
            .bind(host.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(id.flatten())
}

/// The plan's view of a `user_sync.users` row.
pub(crate) fn synced_from(
    state: &str,
    embedded_user_id: Option<&str>,
    username: Option<&str>,
    full_name: Option<&str>,
) -> Synced {
    match (state, embedded_user_id, username) {
        ("creating", _, Some(username)) => Synced::Unconfirmed {
            username: Username::from_api(username),
        },
        ("synced", Some(id), Some(username)) => match EmbeddedUserId::parse(id) {
            Ok(id) => Synced::Present {
                id,
                profile: Profile {
                    username: Username::from_api(username),
                    full_name: full_name.map(FullName::from_api),
                },
            },
            Err(_) => Synced::Nothing,
        },
        _ => Synced::Nothing,
    }
}

/// Why a username claim failed.
pub enum Claim {
    Claimed,
    /// Another host user holds or is claiming the username.
    TakenBy(HostUserId),
}

/// Records the intent to create `username` for `host`, durably, before the
/// create is sent. The unique index on claimed usernames makes two host
/// users with one username a conflict caught here, before any call.
pub async fn claim_for_create(
    conn: &mut PgConnection,
    host: &HostUserId,
    profile: &Profile,
    event_id: i64,
) -> sqlx::Result<Claim> {
    // Claimed only when no other host user holds the name: a refused insert
    // would make PostgreSQL log the username in its own server log. The
    // unique index still settles a race between two claims.
    let claimed = sqlx::query_scalar::<_, String>(
        "INSERT INTO user_sync.users (host_user_id, username, full_name, state, last_event_id)
         SELECT $1, $2, $3, 'creating', $4
         WHERE NOT EXISTS (
             SELECT 1 FROM user_sync.users
             WHERE username = $2 AND state IN ('creating', 'synced') AND host_user_id <> $1)
         ON CONFLICT (host_user_id) DO UPDATE
         SET username = EXCLUDED.username, full_name = EXCLUDED.full_name,
             embedded_user_id = NULL, state = 'creating',
             last_event_id = EXCLUDED.last_event_id, updated_at = now()
         RETURNING host_user_id",
    )
    .bind(host.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await;
    match claimed {
        Ok(Some(_)) => Ok(Claim::Claimed),
        Ok(None) => {
            let holder = holder_of(conn, &profile.username, host).await?;
            Ok(Claim::TakenBy(holder.unwrap_or_else(|| host.clone())))
        }
        Err(e) if super::is_unique_violation(&e) => {
            let holder = holder_of(conn, &profile.username, host).await?;
            Ok(Claim::TakenBy(holder.unwrap_or_else(|| host.clone())))
        }
        Err(e) => Err(e),
    }
}

/// The other host user holding or claiming a username, if any.
pub async fn holder_of(
    conn: &mut PgConnection,
    username: &Username,
    except: &HostUserId,
) -> sqlx::Result<Option<HostUserId>> {
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT host_user_id FROM user_sync.users
         WHERE username = $1 AND state IN ('creating', 'synced') AND host_user_id <> $2
         LIMIT 1",
    )
    .bind(username.as_str())
    .bind(except.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(holder.and_then(|h| HostUserId::parse(&h).ok()))
}

/// Records that `host` now has Embedded user `id` with `profile`, and closes
/// the host user's open conflicts: they are resolved. With `applied`, that
/// event ends `applied` in the same statement.
pub async fn mark_synced(
    conn: &mut PgConnection,
    host: &HostUserId,
    id: &EmbeddedUserId,
    profile: &Profile,
    event_id: i64,
    applied: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH synced AS (
             INSERT INTO user_sync.users
                 (host_user_id, embedded_user_id, username, full_name, state, last_event_id)
             VALUES ($1, $2, $3, $4, 'synced', $5)
             ON CONFLICT (host_user_id) DO UPDATE
             SET embedded_user_id = EXCLUDED.embedded_user_id, username = EXCLUDED.username,
                 full_name = EXCLUDED.full_name, state = 'synced',
                 last_event_id = EXCLUDED.last_event_id, updated_at = now()
             RETURNING host_user_id),
         applied AS (
             UPDATE user_sync.events SET state = 'applied', reason = NULL, finished_at = now()
             WHERE id = $6 AND state = 'pending')
         UPDATE user_sync.conflicts SET status = 'resolved', resolved_at = now()
         WHERE host_user_id = (SELECT host_user_id FROM synced)
           AND status = 'open' AND username <> $3",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .bind(applied)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that an update for `event_id` is about to be sent: until that
/// event finishes, the row may not say what Embedded holds (see
/// `NextEvent::last_acted_unfinished`).
pub async fn note_update_sent(
    conn: &mut PgConnection,
    host: &HostUserId,
    event_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync.users SET last_event_id = $2, updated_at = now()
         WHERE host_user_id = $1",
    )
    .bind(host.as_str())
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records what Embedded was found to hold for `host`, read back after an
/// update of unknown outcome, as known while acting on `event_id`.
/// Conflicts and events are left as they are.
pub async fn record_found(
    conn: &mut PgConnection,
    host: &HostUserId,
    id: &EmbeddedUserId,
    profile: &Profile,
    event_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE user_sync.users
         SET embedded_user_id = $2, username = $3, full_name = $4, state = 'synced',
             last_event_id = $5, updated_at = now()
         WHERE host_user_id = $1",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .bind(profile.username.as_str())
    .bind(profile.full_name.as_ref().map(FullName::as_str))
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The state of a host user whose create was refused before it was made
/// (`429`, `401`): nothing exists in Embedded and nothing is claimed.
pub const NOT_CREATED: &str = "not_created";

/// Records that `host` has no Embedded user (a refused create, or one
/// deleted outside the worker), releasing any username claim.
pub async fn mark_without_user(
    conn: &mut PgConnection,
    host: &HostUserId,
    state: &str,
    event_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state, last_event_id)
         VALUES ($1, $2, $3)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, state = EXCLUDED.state,
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(host.as_str())
    .bind(state)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Why a username could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictReason {
    /// Another host user holds the username.
    TakenByHostUser,
    /// An Embedded user the worker did not create holds it.
    TakenInEmbedded,
    /// The API refused to change the username.
    RenameRefused,
}

impl ConflictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TakenByHostUser => "taken_by_host_user",
            Self::TakenInEmbedded => "taken_in_embedded",
            Self::RenameRefused => "rename_refused",
        }
    }
}

/// A conflict to report.
pub struct NewConflict<'a> {
    pub host: &'a HostUserId,
    pub username: &'a Username,
    pub reason: ConflictReason,
    pub holder_host_user_id: Option<&'a HostUserId>,
    pub holder_embedded_user_id: Option<&'a EmbeddedUserId>,
    /// The event that met the conflict; `None` when the backfill found it.
    pub event_id: Option<i64>,
}

/// Reports a conflict once: an open one for the same host user, username
/// and reason is left as it is. Returns whether a row was added.
pub async fn report_conflict(conn: &mut PgConnection, c: &NewConflict<'_>) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO user_sync.conflicts
             (host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id, event_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_user_id, username, reason) WHERE status = 'open' DO NOTHING",
    )
    .bind(c.host.as_str())
    .bind(c.username.as_str())
    .bind(c.reason.as_str())
    .bind(c.holder_host_user_id.map(HostUserId::as_str))
    .bind(c.holder_embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(c.event_id)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// How an erasure ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErasureOutcome {
    Deleted,
    /// The API answered 404: someone deleted it already.
    AlreadyAbsent,
    /// No Embedded user was ever created (closure before the first sync).
    NeverCreated,
}

impl ErasureOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::AlreadyAbsent => "already_absent",
            Self::NeverCreated => "never_created",
        }
    }
}

/// Completes a closure: in one transaction, removes every email and name of
/// `host` from the worker's tables (its user row, its outbox rows up to the
/// closure, its conflicts), records the erasure with ids and times only, and
/// ends the closure event.
pub async fn erase(
    conn: &mut PgConnection,
    host: &HostUserId,
    embedded_user_id: Option<&EmbeddedUserId>,
    closure_event_id: i64,
    outcome: ErasureOutcome,
) -> sqlx::Result<()> {
    use sqlx::Connection;
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
        "UPDATE user_sync.events SET email = NULL, full_name = NULL
         WHERE host_user_id = $1 AND id <= $2 AND (email IS NOT NULL OR full_name IS NOT NULL)",
    )
    .bind(host.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM user_sync.conflicts WHERE host_user_id = $1")
        .bind(host.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO user_sync.erasures
             (host_user_id, embedded_user_id, event_id, outcome, requested_at)
         SELECT $1, $2, id, $3, occurred_at FROM user_sync.events WHERE id = $4
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(host.as_str())
    .bind(embedded_user_id.map(EmbeddedUserId::as_str))
    .bind(outcome.as_str())
    .bind(closure_event_id)
    .execute(&mut *tx)
    .await?;
    super::events::finish(
        &mut tx,
        closure_event_id,
        super::events::EventState::Applied,
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

/// Takes the per-user locks of many host users on one session (the same
/// advisory locks as [`UserLock`], so a job of `user-sync run` and the
/// backfill never act on one user at once). Returns the hosts whose lock
/// was free and is now held; the others are busy.
///
/// The locks live as long as the session: release them with
/// [`unlock_many`], or close the connection.
pub async fn try_lock_many(conn: &mut PgConnection, hosts: &[&str]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT h FROM unnest($1::text[]) AS h
         WHERE pg_try_advisory_lock(hashtextextended('user_sync:' || h, 0))",
    )
    .bind(hosts)
    .fetch_all(conn)
    .await
}

/// Releases locks taken by [`try_lock_many`] on this session.
pub async fn unlock_many(conn: &mut PgConnection, hosts: &[&str]) -> sqlx::Result<()> {
    if hosts.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_unlock(hashtextextended('user_sync:' || h, 0))
         FROM unnest($1::text[]) AS h",
    )
    .bind(hosts)
    .execute(conn)
    .await?;
    Ok(())
}

/// One intent to create, for [`claim_many_for_create`].
pub struct ClaimIntent<'a> {
    pub host: &'a HostUserId,
    pub profile: &'a Profile,
    /// Kept as it is: the backfill acts on no event.
    pub last_event_id: Option<i64>,
}

/// [`claim_for_create`] for many host users at once, whose locks the caller
/// holds and whose usernames it has checked free. `Err` with a unique
/// violation when a username was claimed meanwhile (by a host user the
/// caller does not hold): nothing is claimed then, and the caller claims
/// one by one with [`claim_for_create`].
pub async fn claim_many_for_create(
    conn: &mut PgConnection,
    intents: &[ClaimIntent<'_>],
) -> sqlx::Result<()> {
    if intents.is_empty() {
        return Ok(());
    }
    let hosts: Vec<&str> = intents.iter().map(|i| i.host.as_str()).collect();
    let usernames: Vec<&str> = intents
        .iter()
        .map(|i| i.profile.username.as_str())
        .collect();
    let names: Vec<Option<&str>> = intents
        .iter()
        .map(|i| i.profile.full_name.as_ref().map(FullName::as_str))
        .collect();
    let events: Vec<Option<i64>> = intents.iter().map(|i| i.last_event_id).collect();
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, username, full_name, state, last_event_id)
         SELECT h, u, n, 'creating', e FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
             AS t(h, u, n, e)
         ON CONFLICT (host_user_id) DO UPDATE
         SET username = EXCLUDED.username, full_name = EXCLUDED.full_name,
             embedded_user_id = NULL, state = 'creating', updated_at = now()",
    )
    .bind(&hosts)
    .bind(&usernames)
    .bind(&names)
    .bind(&events)
    .execute(conn)
    .await?;
    Ok(())
}

/// One Embedded user found for a host user, for [`mark_synced_many`].
pub struct Found<'a> {
    pub host: &'a HostUserId,
    pub user: &'a EmbeddedUserId,
    pub profile: &'a Profile,
}

/// [`mark_synced`] for many host users whose locks the caller holds, with
/// the same effects: the row is `synced` with the user and its profile, and
/// the host user's open conflicts over another username are resolved. The
/// last event id is kept. Returns how many rows it changed.
pub async fn mark_synced_many(conn: &mut PgConnection, found: &[Found<'_>]) -> sqlx::Result<u64> {
    if found.is_empty() {
        return Ok(0);
    }
    let hosts: Vec<&str> = found.iter().map(|f| f.host.as_str()).collect();
    let ids: Vec<&str> = found.iter().map(|f| f.user.as_str()).collect();
    let usernames: Vec<&str> = found.iter().map(|f| f.profile.username.as_str()).collect();
    let names: Vec<Option<&str>> = found
        .iter()
        .map(|f| f.profile.full_name.as_ref().map(FullName::as_str))
        .collect();
    let changed = sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, embedded_user_id, username, full_name, state)
         SELECT h, i, u, n, 'synced' FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
             AS t(h, i, u, n)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = EXCLUDED.embedded_user_id, username = EXCLUDED.username,
             full_name = EXCLUDED.full_name, state = 'synced', updated_at = now()",
    )
    .bind(&hosts)
    .bind(&ids)
    .bind(&usernames)
    .bind(&names)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE user_sync.conflicts c SET status = 'resolved', resolved_at = now()
         FROM unnest($1::text[], $2::text[]) AS t(h, u)
         WHERE c.host_user_id = t.h AND c.status = 'open' AND c.username <> t.u",
    )
    .bind(&hosts)
    .bind(&usernames)
    .execute(conn)
    .await?;
    Ok(changed)
}

/// A claim whose create is not confirmed yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unconfirmed {
    pub host_user_id: String,
    pub username: Option<String>,
    pub full_name: Option<String>,
}

/// Rows in state `creating` claimed at or after `since`, in host id order
/// after `after`: the backfill's creates waiting for their user id.
pub async fn unconfirmed_since(
    conn: &mut PgConnection,
    since: chrono::DateTime<chrono::Utc>,
    after: &str,
    limit: i64,
) -> sqlx::Result<Vec<Unconfirmed>> {
    sqlx::query_as(
        "SELECT host_user_id, username, full_name FROM user_sync.users
         WHERE state = 'creating' AND updated_at >= $1 AND host_user_id > $2
         ORDER BY host_user_id LIMIT $3",
    )
    .bind(since)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Records that `host` has no Embedded user (`state` is `conflict` or
/// `failed`), releasing any username claim, and keeps its last event id:
/// the backfill acts on no event.
pub async fn set_without_user(
    conn: &mut PgConnection,
    host: &HostUserId,
    state: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state) VALUES ($1, $2)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, state = EXCLUDED.state, updated_at = now()",
    )
    .bind(host.as_str())
    .bind(state)
    .execute(conn)
    .await?;
    Ok(())
}

/// Of `hosts`, the rows still in state `creating`.
pub async fn unconfirmed_of(
    conn: &mut PgConnection,
    hosts: &[&str],
) -> sqlx::Result<Vec<Unconfirmed>> {
    sqlx::query_as(
        "SELECT host_user_id, username, full_name FROM user_sync.users
         WHERE host_user_id = ANY($1::text[]) AND state = 'creating'",
    )
    .bind(hosts)
    .fetch_all(conn)
    .await
}

/// How many rows claimed at or after `since` are still `creating`.
pub async fn count_unconfirmed_since(
    conn: &mut PgConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> sqlx::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_sync.users WHERE state = 'creating' AND updated_at >= $1",
    )
    .bind(since)
    .fetch_one(conn)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

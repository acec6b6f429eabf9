//! `user_sync.users` on PostgreSQL: the claims, the synced rows and the
//! per-user advisory locks.

use sqlx::PgConnection;

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Profile, UserState, Username};
use crate::storage::users::{
    Claim, ClaimIntent, Found, HolderClaim, NewClaim, SyncedUser, Unconfirmed,
};

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

/// Records the intent to create `username` for `host`, durably, before the
/// create is sent. The unique index on claimed usernames makes two host
/// users with one username a conflict caught here, before any call. For
/// the backfill, which claims only usernames its snapshot of Embedded saw
/// free (a job's claims go through [`claim_each_for_create`]).
pub async fn claim_for_create(
    conn: &mut PgConnection,
    host: &HostUserId,
    profile: &Profile,
    event_id: i64,
) -> sqlx::Result<Claim> {
    let claim = NewClaim {
        host: host.clone(),
        profile: profile.clone(),
        event_id,
        seen_free: true,
    };
    let mut claims = claim_each_for_create(conn, std::slice::from_ref(&claim)).await?;
    Ok(claims.pop().unwrap_or(Claim::Claimed))
}

/// [`claim_for_create`] for several host users (distinct, locked by the
/// caller) in one statement; one [`Claim`] per intent, in order. Two
/// intents for one username never meet in the statement (the first is
/// claimed, the others find it as their holder). With two or more
/// intents, a unique violation (another process claiming one of their
/// usernames at once) fails the whole statement and claims nothing: the
/// caller then claims one by one.
pub async fn claim_each_for_create(
    conn: &mut PgConnection,
    claims: &[NewClaim],
) -> sqlx::Result<Vec<Claim>> {
    // Two intents of one round for one username: only the first is in the
    // statement, and the others find it below as their holder. Both in the
    // statement would fail it on the unique index, and PostgreSQL would
    // print the username in its server log.
    let mut wanted = std::collections::HashSet::new();
    let batch: Vec<&NewClaim> = claims
        .iter()
        .filter(|c| wanted.insert(c.profile.username.as_str()))
        .collect();
    let hosts: Vec<&str> = batch.iter().map(|c| c.host.as_str()).collect();
    let usernames: Vec<&str> = batch.iter().map(|c| c.profile.username.as_str()).collect();
    let names: Vec<Option<&str>> = batch
        .iter()
        .map(|c| c.profile.full_name.as_ref().map(FullName::as_str))
        .collect();
    let events: Vec<i64> = batch.iter().map(|c| c.event_id).collect();
    let seen_free: Vec<bool> = batch.iter().map(|c| c.seen_free).collect();
    // Claimed only when no other host user holds the name: a refused insert
    // would make PostgreSQL log the username in its own server log. Two
    // jobs claiming one username at once (a name held in Embedded that
    // several host users want, each sending its create first) wait for
    // each other on a lock of the username, taken in username order, so
    // that the second's check sees the first's claim. The unique index
    // still settles what the lock cannot see (a rename to the name).
    // By key only: a plan of `CLAIM` made while the users were few would
    // read them all at every claim after.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    super::by_key_from_here(&mut tx).await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('user_sync.username'), hashtext(u))
         FROM (SELECT DISTINCT u FROM unnest($1::text[]) AS t(u) ORDER BY u) s",
    )
    .bind(&usernames)
    .execute(&mut *tx)
    .await?;
    let claimed = sqlx::query_scalar::<_, String>(CLAIM)
        .bind(&hosts)
        .bind(&usernames)
        .bind(&names)
        .bind(&events)
        .bind(&seen_free)
        .fetch_all(&mut *tx)
        .await;
    let claimed: std::collections::HashSet<String> = match claimed {
        Ok(claimed) => {
            tx.commit().await?;
            claimed.into_iter().collect()
        }
        // One intent: nothing was claimed, and whoever claimed first is
        // found below.
        Err(e) if batch.len() == 1 && crate::storage::is_unique_violation(&e) => {
            tx.rollback().await?;
            Default::default()
        }
        Err(e) => return Err(e),
    };
    let refused: Vec<&NewClaim> = claims
        .iter()
        .filter(|c| !claimed.contains(c.host.as_str()))
        .collect();
    let lookups: Vec<(&Username, &HostUserId)> = refused
        .iter()
        .map(|c| (&c.profile.username, &c.host))
        .collect();
    let mut holders: std::collections::HashMap<&str, Option<HostUserId>> = refused
        .iter()
        .map(|c| c.host.as_str())
        .zip(holders_of(conn, &lookups).await?)
        .collect();
    Ok(claims
        .iter()
        .map(|c| match holders.remove(c.host.as_str()) {
            None => Claim::Claimed,
            Some(holder) => Claim::TakenBy(holder.unwrap_or_else(|| c.host.clone())),
        })
        .collect())
}

/// Claims username `$2` for host user `$1` (with full name `$3`, the event
/// `$4`, seen free `$5`) where no other host user holds it: the rows of
/// users the worker has acted on before are updated, the others inserted;
/// returns the host users claimed.
///
/// An update and an insert where one upsert (`INSERT … ON CONFLICT DO
/// UPDATE`) would do: an upsert writes a speculative insertion and its
/// confirmation for a new row, and a lock of the row before updating an old
/// one, each a WAL record of its own. The host users are locked by the
/// caller, so no row of theirs appears between the two (one that did would
/// fail the statement on the primary key, and the caller would claim one
/// by one). The update reaches every row of these users (it has no other
/// condition), so the insert takes the intents it did not return: a probe
/// of the primary key per intent cost a tenth of the statement (counted by
/// callgrind).
/// `OFFSET 0` keeps the username check a probe of its index per intent,
/// and `= ANY($1)` the update's reach of the users its key (see `events`,
/// "Plans that do not depend on statistics"): the plan is the same at any
/// size, and reused.
const CLAIM: &str = "WITH t AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::boolean[])
             AS t(h, u, n, e, f)
         WHERE NOT EXISTS (
             SELECT 1 FROM user_sync.users
             WHERE username = t.u AND state IN ('creating', 'synced') AND host_user_id <> t.h
             OFFSET 0)),
     again AS (
         UPDATE user_sync.users s
         SET username = t.u, full_name = t.n, embedded_user_id = NULL, state = 'creating',
             last_event_id = t.e, updated_at = now(), username_seen_free = t.f
         FROM t
         WHERE s.host_user_id = ANY($1::text[]) AND s.host_user_id = t.h
         RETURNING s.host_user_id),
     first AS (
         INSERT INTO user_sync.users
             (host_user_id, username, full_name, state, last_event_id, username_seen_free)
         SELECT t.h, t.u, t.n, 'creating', t.e, t.f FROM t
         WHERE NOT EXISTS (SELECT 1 FROM again a WHERE a.host_user_id = t.h)
         RETURNING host_user_id)
     SELECT host_user_id FROM again UNION ALL SELECT host_user_id FROM first";

/// The other host user holding or claiming each username, if any, for
/// several (username, host user) pairs, in order, in one round trip.
pub async fn holders_of(
    conn: &mut PgConnection,
    lookups: &[(&Username, &HostUserId)],
) -> sqlx::Result<Vec<Option<HostUserId>>> {
    if lookups.is_empty() {
        return Ok(Vec::new());
    }
    let usernames: Vec<&str> = lookups.iter().map(|(u, _)| u.as_str()).collect();
    let hosts: Vec<&str> = lookups.iter().map(|(_, h)| h.as_str()).collect();
    let holders: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT (SELECT u.host_user_id FROM user_sync.users u
                 WHERE u.username = t.username AND u.state IN ('creating', 'synced')
                   AND u.host_user_id <> t.host
                 LIMIT 1)
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(username, host, i)
         ORDER BY t.i",
    )
    // A scalar subquery is a probe per row: the plan is the same at any
    // size, and reused.
    .bind(&usernames)
    .bind(&hosts)
    .fetch_all(conn)
    .await?;
    Ok(holders
        .into_iter()
        .map(|h| h.and_then(|h| HostUserId::parse(&h).ok()))
        .collect())
}

/// Records that each host user now has its Embedded user and profile, and
/// resolves its open conflicts (see `conflicts::resolve_synced`); each
/// `applied` event ends `applied` in the same statement.
pub async fn mark_synced(conn: &mut PgConnection, users: &[SyncedUser]) -> sqlx::Result<()> {
    let hosts: Vec<&str> = users.iter().map(|u| u.host.as_str()).collect();
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let usernames: Vec<&str> = users.iter().map(|u| u.profile.username.as_str()).collect();
    let names: Vec<Option<&str>> = users
        .iter()
        .map(|u| u.profile.full_name.as_ref().map(FullName::as_str))
        .collect();
    let events: Vec<i64> = users.iter().map(|u| u.event_id).collect();
    let applied: Vec<Option<i64>> = users.iter().map(|u| u.applied).collect();
    sqlx::query(concat!(
        r#"WITH t AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::bigint[]) AS t(h, i, u, n, e, a)),
         -- An update of the row the claim made (or an earlier sync), and
         -- an insert only where there is none (where the update, which
         -- reaches every row of these users, returned none): an upsert
         -- would write a lock of the row before each update (see `CLAIM`).
         updated AS (
             UPDATE user_sync.users s
             SET embedded_user_id = t.i, username = t.u, full_name = t.n, state = 'synced',
                 last_event_id = t.e, updated_at = now()
             FROM t
             WHERE s.host_user_id = ANY($1::text[]) AND s.host_user_id = t.h
             RETURNING s.host_user_id, s.username),
         inserted AS (
             INSERT INTO user_sync.users
                 (host_user_id, embedded_user_id, username, full_name, state, last_event_id)
             SELECT h, i, u, n, 'synced', e FROM t
             WHERE NOT EXISTS (SELECT 1 FROM updated d WHERE d.host_user_id = t.h)
             RETURNING host_user_id, username),
         synced AS (
             SELECT host_user_id, username FROM updated
             UNION ALL SELECT host_user_id, username FROM inserted),
         -- The events by key alone: joined to `t`, the plan made once
         -- (guessing ten rows) compared every event with every row of it.
         applied AS (
             UPDATE user_sync.events e
             SET state = 'applied', reason = NULL, finished_at = now(), redispatch = false
             WHERE e.id = ANY($6::bigint[]) AND e.state IS NOT DISTINCT FROM 'pending'
             RETURNING e.state),
         "#,
        super::events::count_ends!("applied"),
        ",",
        super::conflicts::resolve_synced!()
    ))
    // Each table is reached by its key (`= ANY` of the batch's keys), so
    // the plan is the same at any size, and reused: planning this
    // statement took longer than running it (about 1 ms a round).
    .bind(&hosts)
    .bind(&ids)
    .bind(&usernames)
    .bind(&names)
    .bind(&events)
    .bind(&applied)
    .execute(conn)
    .await?;
    Ok(())
}

/// `holder`'s hold on `username` (see `UserSession::holder_claim`).
/// Asked only on the rare path of a username another host user holds.
pub async fn holder_claim(
    conn: &mut PgConnection,
    holder: &HostUserId,
    username: &Username,
) -> sqlx::Result<HolderClaim> {
    let row: Option<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(concat!(
        "SELECT u.state,
                (SELECT min(",
        super::events::due_of!("e"),
        ") FROM user_sync.events e
                  WHERE e.host_user_id = u.host_user_id AND e.state = 'pending') AS due
         FROM user_sync.users u
         WHERE u.host_user_id = $1 AND u.username = $2 AND u.state IN ('creating', 'synced')"
    ))
    .bind(holder.as_str())
    .bind(username.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(HolderClaim::of(row))
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

/// Another host user mapped to the Embedded user `id`, if any. There is no
/// index on `embedded_user_id` (a claim turning synced is then a HOT
/// update), so this reads the table: it runs only when a create's outcome
/// was unknown and its username turned out to be held.
pub async fn mapped_elsewhere(
    conn: &mut PgConnection,
    host: &HostUserId,
    id: &EmbeddedUserId,
) -> sqlx::Result<Option<HostUserId>> {
    let other: Option<String> = sqlx::query_scalar(
        "SELECT host_user_id FROM user_sync.users
         WHERE embedded_user_id = $2 AND host_user_id <> $1 LIMIT 1",
    )
    .bind(host.as_str())
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    Ok(other.and_then(|h| HostUserId::parse(&h).ok()))
}

/// Forces every commit made so far on the server to disk: a transaction
/// with a transaction id commits durably, and its commit record is flushed
/// with all the WAL before it, outcomes committed without waiting included.
pub async fn flush_outcomes(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT txid_current()").execute(conn).await?;
    Ok(())
}

/// Records that `host` has no Embedded user (a refused create, or one
/// deleted outside the worker), releasing any username claim.
pub async fn mark_without_user(
    conn: &mut PgConnection,
    host: &HostUserId,
    state: UserState,
    event_id: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state, last_event_id)
         VALUES ($1, $2, $3)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, username = NULL, state = EXCLUDED.state,
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(host.as_str())
    .bind(state.as_str())
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the per-user locks of many host users on one session (the same
/// advisory locks as a job of `user-sync run` takes, so a job and the
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
        "INSERT INTO user_sync.users
             (host_user_id, username, full_name, state, last_event_id, username_seen_free)
         SELECT h, u, n, 'creating', e, true
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS t(h, u, n, e)
         ON CONFLICT (host_user_id) DO UPDATE
         SET username = EXCLUDED.username, full_name = EXCLUDED.full_name,
             embedded_user_id = NULL, state = 'creating', updated_at = now(),
             username_seen_free = true",
    )
    .bind(&hosts)
    .bind(&usernames)
    .bind(&names)
    .bind(&events)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`mark_synced`] for many host users whose locks the caller holds, with
/// the same effects: the row is `synced` with the user and its profile, and
/// the host user's open conflicts are resolved. The
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
    sqlx::query(concat!(
        "WITH synced AS (SELECT unnest($1::text[]) AS host_user_id),",
        super::conflicts::resolve_synced!()
    ))
    .bind(&hosts)
    .execute(conn)
    .await?;
    Ok(changed)
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
        "SELECT host_user_id, username, full_name, updated_at, username_seen_free
         FROM user_sync.users
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
    state: UserState,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO user_sync.users (host_user_id, state) VALUES ($1, $2)
         ON CONFLICT (host_user_id) DO UPDATE
         SET embedded_user_id = NULL, username = NULL, state = EXCLUDED.state,
             updated_at = now()",
    )
    .bind(host.as_str())
    .bind(state.as_str())
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
        "SELECT host_user_id, username, full_name, updated_at, username_seen_free
         FROM user_sync.users
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

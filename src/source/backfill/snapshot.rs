//! The backfill's working tables: a snapshot of `GET /users` and, for the
//! dry run, the usernames it plans to create. Both are temporary tables of
//! the backfill's own session, so a list of a million users costs the
//! database a table, not the process its memory, and nothing outlives the
//! run (they go with the session, killed or not).
//!
//! The page lookup reads `user_sync.users` and the outbox beside them in one
//! statement per page: a read model of the backfill, kept here with the
//! temporary tables it joins.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Username};
use crate::embedded::{ApiError, EmbeddedUser};

use super::decide::Known;

/// Users written to the snapshot per statement.
const SNAPSHOT_CHUNK: usize = 2_000;

/// Creates (or empties) the temporary tables of this session.
pub async fn prepare(conn: &mut PgConnection) -> sqlx::Result<()> {
    for statement in [
        "CREATE TEMP TABLE IF NOT EXISTS backfill_embedded
             (username text PRIMARY KEY, user_id text NOT NULL, full_name text)",
        "CREATE TEMP TABLE IF NOT EXISTS backfill_planned
             (username text PRIMARY KEY, host_user_id text NOT NULL)",
        "TRUNCATE pg_temp.backfill_embedded, pg_temp.backfill_planned",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Drops the temporary tables (the session would, at its end).
pub async fn discard(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("DROP TABLE IF EXISTS pg_temp.backfill_embedded, pg_temp.backfill_planned")
        .execute(conn)
        .await?;
    Ok(())
}

/// Fills the snapshot from a `GET /users` stream, replacing what it held.
/// Returns how many users it holds. An error mid-stream leaves a partial
/// snapshot: the caller starts again.
///
/// The answer is read and parsed on a task of its own while the chunk
/// before is written, so the two overlap; at most [`CHUNKS_AHEAD`] chunks
/// wait in between, which keeps memory flat however long the list is.
pub async fn load(
    conn: &mut PgConnection,
    stream: crate::embedded::client::UserStream,
) -> Result<u64, LoadError> {
    sqlx::query("TRUNCATE pg_temp.backfill_embedded")
        .execute(&mut *conn)
        .await?;
    let (chunks, mut arriving) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
    let reader = tokio::spawn(read_chunks(stream, chunks));
    let mut total = 0u64;
    while let Some(chunk) = arriving.recv().await {
        // On an error the receiver drops, and the reader stops at its next
        // send.
        total += insert(conn, &chunk?).await?;
    }
    // The channel closes when the reader has sent everything (or its
    // error), or when it panicked: only a clean end is a whole snapshot.
    reader.await.map_err(|_| LoadError::ReaderStopped)?;
    Ok(total)
}

/// Chunks parsed ahead of the one being written.
const CHUNKS_AHEAD: usize = 2;

/// Reads the stream into chunks of [`SNAPSHOT_CHUNK`] users; an error is
/// the last item sent.
async fn read_chunks(
    mut stream: crate::embedded::client::UserStream,
    chunks: tokio::sync::mpsc::Sender<Result<Vec<EmbeddedUser>, ApiError>>,
) {
    let mut chunk: Vec<EmbeddedUser> = Vec::with_capacity(SNAPSHOT_CHUNK);
    while let Some(user) = stream.next().await {
        match user {
            Ok(user) => chunk.push(user),
            Err(error) => {
                let _ = chunks.send(Err(error)).await;
                return;
            }
        }
        if chunk.len() == SNAPSHOT_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(SNAPSHOT_CHUNK));
            if chunks.send(Ok(full)).await.is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.send(Ok(chunk)).await;
    }
}

/// Why the snapshot could not be filled.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the reader of GET /users stopped before the end of the answer")]
    ReaderStopped,
}

async fn insert(conn: &mut PgConnection, users: &[EmbeddedUser]) -> sqlx::Result<u64> {
    if users.is_empty() {
        return Ok(0);
    }
    let usernames: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    let names: Vec<Option<&str>> = users
        .iter()
        .map(|u| u.full_name.as_ref().map(FullName::as_str))
        .collect();
    // Usernames are unique in any letter case; a repeat would be the API's
    // own inconsistency, and the first one is kept.
    let result = sqlx::query(
        "INSERT INTO pg_temp.backfill_embedded (username, user_id, full_name)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
         ON CONFLICT (username) DO NOTHING",
    )
    .bind(&usernames)
    .bind(&ids)
    .bind(&names)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// Embedded users of the snapshot by username.
pub async fn find(
    conn: &mut PgConnection,
    usernames: &[&str],
) -> sqlx::Result<HashMap<Username, EmbeddedUser>> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT username, user_id, full_name FROM pg_temp.backfill_embedded
         WHERE username = ANY($1::text[])",
    )
    .bind(usernames)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(username, id, name)| {
            let user = embedded(Some(id), Some(username), name)?;
            Some((user.username.clone(), user))
        })
        .collect())
}

/// Records usernames the dry run would create, so that a later host user
/// with the same one is a conflict, as the real run's claim would make it.
pub async fn plan_creates(conn: &mut PgConnection, planned: &[(&str, &str)]) -> sqlx::Result<()> {
    if planned.is_empty() {
        return Ok(());
    }
    let usernames: Vec<&str> = planned.iter().map(|p| p.0).collect();
    let hosts: Vec<&str> = planned.iter().map(|p| p.1).collect();
    sqlx::query(
        "INSERT INTO pg_temp.backfill_planned (username, host_user_id)
         SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (username) DO NOTHING",
    )
    .bind(&usernames)
    .bind(&hosts)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct LookupRow {
    state: Option<String>,
    holder: Option<String>,
    s_user_id: Option<String>,
    s_username: Option<String>,
    s_full_name: Option<String>,
    s_mapped_to: Option<String>,
    c_user_id: Option<String>,
    c_username: Option<String>,
    c_full_name: Option<String>,
    planned_by: Option<String>,
    closing: bool,
}

/// What is known of each host user of a page, in the order given.
pub async fn lookup(
    conn: &mut PgConnection,
    users: &[(HostUserId, crate::sync::plan::Profile)],
) -> sqlx::Result<Vec<Known>> {
    let hosts: Vec<&str> = users.iter().map(|(h, _)| h.as_str()).collect();
    let usernames: Vec<&str> = users.iter().map(|(_, p)| p.username.as_str()).collect();
    let rows: Vec<LookupRow> = sqlx::query_as(
        "SELECT u.state, h.host_user_id AS holder,
                s.user_id AS s_user_id, s.username AS s_username, s.full_name AS s_full_name,
                m.host_user_id AS s_mapped_to,
                c.user_id AS c_user_id, c.username AS c_username, c.full_name AS c_full_name,
                p.host_user_id AS planned_by,
                EXISTS (SELECT 1 FROM user_sync.events e
                        WHERE e.host_user_id = n.host AND e.state = 'pending'
                          AND trim(e.kind) = 'account_closure') AS closing
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(host, username, ord)
         LEFT JOIN user_sync.users u ON u.host_user_id = n.host
         -- A synced or erased user is decided by its state alone: the
         -- lookups below are skipped for it (each is gated on `open`).
         CROSS JOIN LATERAL (
             SELECT u.state IS NULL OR u.state NOT IN ('synced', 'erased') AS open) g
         LEFT JOIN LATERAL (
             SELECT o.host_user_id FROM user_sync.users o
             WHERE g.open AND o.username = n.username AND o.state IN ('creating', 'synced')
               AND o.host_user_id <> n.host
             LIMIT 1) h ON true
         LEFT JOIN LATERAL (
             SELECT s.user_id, s.username, s.full_name FROM pg_temp.backfill_embedded s
             WHERE g.open AND s.username = n.username) s ON true
         LEFT JOIN LATERAL (
             SELECT m.host_user_id FROM user_sync.users m
             WHERE g.open AND m.embedded_user_id = s.user_id AND m.host_user_id <> n.host
             LIMIT 1) m ON true
         LEFT JOIN LATERAL (
             SELECT c.user_id, c.username, c.full_name FROM pg_temp.backfill_embedded c
             WHERE u.state = 'creating' AND c.username = u.username) c ON true
         LEFT JOIN LATERAL (
             SELECT p.host_user_id FROM pg_temp.backfill_planned p
             WHERE g.open AND p.username = n.username AND p.host_user_id <> n.host) p ON true
         ORDER BY n.ord",
    )
    .bind(&hosts)
    .bind(&usernames)
    .fetch_all(conn)
    .await?;
    let host = |h: Option<String>| h.and_then(|h| HostUserId::parse(&h).ok());
    Ok(rows
        .into_iter()
        .map(|r| Known {
            state: r.state,
            claimed_found: embedded(r.c_user_id, r.c_username, r.c_full_name),
            holder: host(r.holder),
            in_embedded: embedded(r.s_user_id, r.s_username, r.s_full_name),
            in_embedded_mapped_to: host(r.s_mapped_to),
            planned_by: host(r.planned_by),
            closing: r.closing,
        })
        .collect())
}

fn embedded(
    id: Option<String>,
    username: Option<String>,
    full_name: Option<String>,
) -> Option<EmbeddedUser> {
    Some(EmbeddedUser {
        user_id: EmbeddedUserId::parse(&id?).ok()?,
        username: Username::from_api(&username?),
        full_name: full_name.as_deref().map(FullName::from_api),
    })
}

//! The backfill's working tables: a snapshot of `GET /users` and, for the
//! dry run, the usernames it plans to create. Both are temporary tables of
//! the backfill's own session, so a list of a million users costs the
//! database a table, not the process its memory, and nothing outlives the
//! run (they go with the session, killed or not).
//!
//! The page lookup reads `user_sync.users` and the outbox beside them in one
//! statement per page: a read model of the backfill, kept here with the
//! temporary tables it joins. On PostgreSQL a third one, `backfill_mapped`,
//! holds which host user each Embedded user is mapped to (see
//! [`note_mappings`]).

use std::collections::HashMap;
use std::future::Future;

use sqlx::PgConnection;

use crate::domain::{EmbeddedUserId, FullName, HostUserId, Profile, Username};
use crate::embedded::{ApiError, EmbeddedUser, UserStream};

use super::decide::Known;

/// Users written to the snapshot per statement.
const SNAPSHOT_CHUNK: usize = 2_000;

/// The working tables on the connection they live on: PostgreSQL's
/// backfill session, or the backfill's own SQLite connection.
pub(super) trait WorkingTables: Send {
    /// Creates (or empties) the working tables.
    fn prepare(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Drops the working tables (the connection would, at its end).
    fn discard(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Fills the snapshot from a `GET /users` stream, replacing what it
    /// held, chunk by chunk as the answer arrives. Returns how many users it
    /// holds. An error mid-stream leaves a partial snapshot: the caller
    /// starts again.
    fn load(&mut self, stream: UserStream) -> impl Future<Output = Result<u64, LoadError>> + Send {
        async move {
            self.empty_snapshot().await?;
            let mut chunks = ReadAhead::start(stream);
            let mut total = 0u64;
            while let Some(chunk) = chunks.next().await? {
                total += self.insert_snapshot(&chunk).await?;
            }
            self.snapshot_loaded().await?;
            Ok(total)
        }
    }
    /// Empties the snapshot.
    fn empty_snapshot(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Writes `users` to the snapshot; returns how many it added (a
    /// username already there keeps its first user: a repeat would be the
    /// API's own inconsistency).
    fn insert_snapshot<'a>(
        &'a mut self,
        users: &'a [EmbeddedUser],
    ) -> impl Future<Output = sqlx::Result<u64>> + Send;
    /// What is left to do once the whole answer is in.
    fn snapshot_loaded(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        std::future::ready(Ok(()))
    }
    /// Embedded users of the snapshot by username.
    fn find<'a>(
        &'a mut self,
        usernames: &'a [&'a str],
    ) -> impl Future<Output = sqlx::Result<HashMap<Username, EmbeddedUser>>> + Send;
    /// Records usernames the dry run would create, so that a later host
    /// user with the same one is a conflict, as the real run's claim would
    /// make it.
    fn plan_creates<'a>(
        &'a mut self,
        planned: &'a [(&'a str, &'a str)],
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// What is known of each host user of a page, in the order given.
    fn lookup<'a>(
        &'a mut self,
        users: &'a [(HostUserId, Profile)],
    ) -> impl Future<Output = sqlx::Result<Vec<Known>>> + Send;
}

impl WorkingTables for PgConnection {
    async fn prepare(&mut self) -> sqlx::Result<()> {
        for statement in [
            "CREATE TEMP TABLE IF NOT EXISTS backfill_embedded
                 (username text PRIMARY KEY, user_id text NOT NULL, full_name text)",
            "CREATE TEMP TABLE IF NOT EXISTS backfill_planned
                 (username text PRIMARY KEY, host_user_id text NOT NULL)",
            "CREATE TEMP TABLE IF NOT EXISTS backfill_mapped
                 (user_id text NOT NULL, host_user_id text NOT NULL)",
            "TRUNCATE pg_temp.backfill_embedded, pg_temp.backfill_planned,
                 pg_temp.backfill_mapped",
        ] {
            sqlx::query(statement).execute(&mut *self).await?;
        }
        Ok(())
    }

    async fn discard(&mut self) -> sqlx::Result<()> {
        sqlx::query(
            "DROP TABLE IF EXISTS pg_temp.backfill_embedded, pg_temp.backfill_planned,
                 pg_temp.backfill_mapped",
        )
        .execute(self)
        .await?;
        Ok(())
    }

    async fn empty_snapshot(&mut self) -> sqlx::Result<()> {
        sqlx::query("TRUNCATE pg_temp.backfill_embedded")
            .execute(self)
            .await?;
        Ok(())
    }

    async fn insert_snapshot(&mut self, users: &[EmbeddedUser]) -> sqlx::Result<u64> {
        if users.is_empty() {
            return Ok(0);
        }
        // The first of each username in the chunk (see below).
        let mut seen = std::collections::HashSet::new();
        let users: Vec<&EmbeddedUser> = users
            .iter()
            .filter(|u| seen.insert(u.username.as_str()))
            .collect();
        let usernames: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
        let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
        let names: Vec<Option<&str>> = users
            .iter()
            .map(|u| u.full_name.as_ref().map(FullName::as_str))
            .collect();
        // Usernames are unique in any letter case; a repeat would be the API's
        // own inconsistency, and the first one is kept: the chunk's repeats
        // are dropped above, an earlier chunk's by the check. Not `ON CONFLICT`,
        // which makes every row a speculative insertion (about twice the
        // cost of the load) for a repeat a consistent API never sends; nor
        // a plain insert retried when refused, since PostgreSQL would print
        // the repeated username in its server log. The table is the
        // session's own, so nothing else writes it between the check and
        // the insert.
        let result = sqlx::query(
            "INSERT INTO pg_temp.backfill_embedded (username, user_id, full_name)
             SELECT t.u, t.i, t.n FROM unnest($1::text[], $2::text[], $3::text[]) AS t(u, i, n)
             WHERE NOT EXISTS (
                 SELECT 1 FROM pg_temp.backfill_embedded s WHERE s.username = t.u OFFSET 0)",
        )
        .bind(&usernames)
        .bind(&ids)
        .bind(&names)
        .execute(self)
        .await?;
        Ok(result.rows_affected())
    }

    async fn snapshot_loaded(&mut self) -> sqlx::Result<()> {
        note_mappings(self).await
    }

    async fn find(&mut self, usernames: &[&str]) -> sqlx::Result<HashMap<Username, EmbeddedUser>> {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT username, user_id, full_name FROM pg_temp.backfill_embedded
             WHERE username = ANY($1::text[])",
        )
        .bind(usernames)
        .fetch_all(self)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(username, id, name)| {
                let user = embedded(Some(id), Some(username), name)?;
                Some((user.username.clone(), user))
            })
            .collect())
    }

    async fn plan_creates(&mut self, planned: &[(&str, &str)]) -> sqlx::Result<()> {
        if planned.is_empty() {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::new();
        let planned: Vec<&(&str, &str)> = planned.iter().filter(|p| seen.insert(p.0)).collect();
        let usernames: Vec<&str> = planned.iter().map(|p| p.0).collect();
        let hosts: Vec<&str> = planned.iter().map(|p| p.1).collect();
        // A username planned twice is a host user planned twice (another
        // one would have met the plan as a conflict), which the scan never
        // does; the first is kept, checked as for the snapshot above.
        sqlx::query(
            "INSERT INTO pg_temp.backfill_planned (username, host_user_id)
             SELECT t.u, t.h FROM unnest($1::text[], $2::text[]) AS t(u, h)
             WHERE NOT EXISTS (
                 SELECT 1 FROM pg_temp.backfill_planned p WHERE p.username = t.u OFFSET 0)",
        )
        .bind(&usernames)
        .bind(&hosts)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn lookup(&mut self, users: &[(HostUserId, Profile)]) -> sqlx::Result<Vec<Known>> {
        let hosts: Vec<&str> = users.iter().map(|(h, _)| h.as_str()).collect();
        let usernames: Vec<&str> = users.iter().map(|(_, p)| p.username.as_str()).collect();
        let rows: Vec<LookupRow> = sqlx::query_as(
            "SELECT u.state, u.updated_at AS claimed_at,
                    u.username_seen_free AS claim_seen_free, h.host_user_id AS holder,
                    s.user_id AS s_user_id, s.username AS s_username, s.full_name AS s_full_name,
                    sm.host_user_id AS s_mapped_to,
                    c.user_id AS c_user_id, c.username AS c_username, c.full_name AS c_full_name,
                    cm.host_user_id AS c_mapped_to,
                    p.host_user_id AS planned_by,
                    EXISTS (SELECT 1 FROM user_sync.events e
                            WHERE e.host_user_id = n.host AND e.state = 'pending'
                              AND trim(e.kind) = 'account_closure') AS closing
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(host, username, ord)
             LEFT JOIN user_sync.users u ON u.host_user_id = n.host
             -- A synced or erased user is decided by its state alone: the
             -- lookups below are skipped for it (each is gated on `open`).
             -- Each lookup has a LIMIT (a no-op: none finds more than one
             -- row) so that PostgreSQL keeps it a subquery and its gate a
             -- test made before the probe; pulled up into the join, the gate
             -- was tested after probing the index for every user.
             CROSS JOIN LATERAL (
                 SELECT u.state IS NULL OR u.state NOT IN ('synced', 'erased') AS open) g
             LEFT JOIN LATERAL (
                 SELECT o.host_user_id FROM user_sync.users o
                 WHERE g.open AND o.username = n.username AND o.state IN ('creating', 'synced')
                   AND o.host_user_id <> n.host
                 LIMIT 1) h ON true
             LEFT JOIN LATERAL (
                 SELECT s.user_id, s.username, s.full_name
                 FROM pg_temp.backfill_embedded s
                 WHERE g.open AND s.username = n.username
                 LIMIT 1) s ON true
             LEFT JOIN LATERAL (
                 SELECT m.host_user_id FROM pg_temp.backfill_mapped m
                 WHERE g.open AND m.user_id = s.user_id AND m.host_user_id <> n.host
                 LIMIT 1) sm ON true
             LEFT JOIN LATERAL (
                 SELECT c.user_id, c.username, c.full_name
                 FROM pg_temp.backfill_embedded c
                 WHERE u.state = 'creating' AND c.username = u.username
                 LIMIT 1) c ON true
             LEFT JOIN LATERAL (
                 SELECT m.host_user_id FROM pg_temp.backfill_mapped m
                 WHERE u.state = 'creating' AND m.user_id = c.user_id
                   AND m.host_user_id <> n.host
                 LIMIT 1) cm ON true
             LEFT JOIN LATERAL (
                 SELECT p.host_user_id FROM pg_temp.backfill_planned p
                 WHERE g.open AND p.username = n.username AND p.host_user_id <> n.host
                 LIMIT 1) p ON true
             ORDER BY n.ord",
        )
        .bind(&hosts)
        .bind(&usernames)
        .fetch_all(self)
        .await?;
        Ok(rows.into_iter().map(LookupRow::into_known).collect())
    }
}

/// Notes which host user each Embedded user is mapped to, as the snapshot
/// is taken, in `backfill_mapped`: one pass over `user_sync.users`, which
/// has no index on `embedded_user_id` (so that a claim turning into a
/// synced user is a HOT update), and an index built once over the copy, for
/// the lookup to probe per open host user (an Embedded user mapped to
/// another host user than the one asking, as on SQLite). A mapping the run
/// makes itself, or the live worker makes meanwhile, has the Embedded
/// user's username, and the lookup finds it by username.
///
/// The copy is written without its index, which is then built in one sort:
/// far cheaper than an index entry per row, or than noting the mapping on
/// every row of the snapshot (an update rewrites each row and its index
/// entry, and leaves the old versions for every later probe to step over).
async fn note_mappings(conn: &mut PgConnection) -> sqlx::Result<()> {
    // The index of an earlier snapshot of this run (batch mode takes a
    // second one), dropped by name only when it is there: `IF EXISTS`
    // would log a notice on every first load.
    let indexed: bool =
        sqlx::query_scalar("SELECT to_regclass('pg_temp.backfill_mapped_user_id') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if indexed {
        sqlx::query("DROP INDEX pg_temp.backfill_mapped_user_id")
            .execute(&mut *conn)
            .await?;
    }
    for statement in [
        "TRUNCATE pg_temp.backfill_mapped",
        "INSERT INTO pg_temp.backfill_mapped (user_id, host_user_id)
         SELECT embedded_user_id, host_user_id FROM user_sync.users
         WHERE embedded_user_id IS NOT NULL",
        "CREATE INDEX backfill_mapped_user_id ON pg_temp.backfill_mapped (user_id)",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The `GET /users` answer, read and parsed on a task of its own in chunks
/// of [`SNAPSHOT_CHUNK`] users while the chunk before is written, so the
/// two overlap. At most [`ReadAhead::CHUNKS`] chunks wait in between, which
/// keeps memory flat however long the list is.
struct ReadAhead {
    arriving: tokio::sync::mpsc::Receiver<Result<Vec<EmbeddedUser>, ApiError>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl ReadAhead {
    const CHUNKS: usize = 2;

    fn start(stream: UserStream) -> Self {
        let (chunks, arriving) = tokio::sync::mpsc::channel(Self::CHUNKS);
        Self {
            arriving,
            reader: Some(tokio::spawn(Self::read(stream, chunks))),
        }
    }

    /// The next chunk; `None` at the end of a whole answer. Dropping the
    /// reader early (on an error) stops its task at its next send.
    async fn next(&mut self) -> Result<Option<Vec<EmbeddedUser>>, LoadError> {
        if let Some(chunk) = self.arriving.recv().await {
            return Ok(Some(chunk?));
        }
        // The channel closes when the task has sent everything (or its
        // error), or when it panicked: only a clean end is a whole answer.
        if let Some(reader) = self.reader.take() {
            reader.await.map_err(|_| LoadError::ReaderStopped)?;
        }
        Ok(None)
    }

    /// Sends the stream's users in chunks; an error is the last item sent.
    async fn read(
        mut stream: UserStream,
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

/// One row of a page lookup, on either backend.
#[derive(sqlx::FromRow)]
pub(super) struct LookupRow {
    state: Option<String>,
    claimed_at: Option<chrono::DateTime<chrono::Utc>>,
    claim_seen_free: Option<bool>,
    holder: Option<String>,
    s_user_id: Option<String>,
    s_username: Option<String>,
    s_full_name: Option<String>,
    s_mapped_to: Option<String>,
    c_user_id: Option<String>,
    c_username: Option<String>,
    c_full_name: Option<String>,
    c_mapped_to: Option<String>,
    planned_by: Option<String>,
    closing: bool,
}

impl LookupRow {
    pub(super) fn into_known(self) -> Known {
        let host = |h: Option<String>| h.and_then(|h| HostUserId::parse(&h).ok());
        Known {
            state: self.state,
            claim: crate::storage::intent_of(self.claimed_at, self.claim_seen_free),
            claimed_found: embedded(self.c_user_id, self.c_username, self.c_full_name),
            claimed_found_mapped_to: host(self.c_mapped_to),
            holder: host(self.holder),
            in_embedded: embedded(self.s_user_id, self.s_username, self.s_full_name),
            in_embedded_mapped_to: host(self.s_mapped_to),
            planned_by: host(self.planned_by),
            closing: self.closing,
        }
    }
}

/// An Embedded user from a snapshot row, if the row has one.
pub(super) fn embedded(
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

/// The same working tables on SQLite: temporary tables of the backfill's
/// own connection (they live with it), read and filled the same way. Lists
/// travel as one JSON parameter (`json_each`), the way SQLite takes an
/// array.
pub(super) mod on_sqlite {
    use std::collections::HashMap;

    use serde_json::json;
    use sqlx::SqliteConnection;

    use crate::domain::{FullName, HostUserId, Profile, Username};
    use crate::embedded::EmbeddedUser;
    use crate::storage::json_list;

    use super::super::decide::Known;
    use super::{LookupRow, WorkingTables};

    impl WorkingTables for SqliteConnection {
        async fn prepare(&mut self) -> sqlx::Result<()> {
            for statement in [
                "CREATE TEMP TABLE IF NOT EXISTS backfill_embedded
                     (username TEXT PRIMARY KEY, user_id TEXT NOT NULL, full_name TEXT)",
                "CREATE TEMP TABLE IF NOT EXISTS backfill_planned
                     (username TEXT PRIMARY KEY, host_user_id TEXT NOT NULL)",
                "DELETE FROM temp.backfill_embedded",
                "DELETE FROM temp.backfill_planned",
            ] {
                sqlx::query(statement).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn discard(&mut self) -> sqlx::Result<()> {
            for statement in [
                "DROP TABLE IF EXISTS temp.backfill_embedded",
                "DROP TABLE IF EXISTS temp.backfill_planned",
            ] {
                sqlx::query(statement).execute(&mut *self).await?;
            }
            Ok(())
        }

        async fn empty_snapshot(&mut self) -> sqlx::Result<()> {
            sqlx::query("DELETE FROM temp.backfill_embedded")
                .execute(self)
                .await?;
            Ok(())
        }

        async fn insert_snapshot(&mut self, users: &[EmbeddedUser]) -> sqlx::Result<u64> {
            if users.is_empty() {
                return Ok(0);
            }
            let list = json_list(users.iter().map(|u| {
                json!([
                    u.username.as_str(),
                    u.user_id.as_str(),
                    u.full_name.as_ref().map(FullName::as_str)
                ])
            }));
            // Usernames are unique in any letter case; a repeat keeps the first.
            let result = sqlx::query(
                "INSERT INTO temp.backfill_embedded (username, user_id, full_name)
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1) WHERE true
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(list)
            .execute(self)
            .await?;
            Ok(result.rows_affected())
        }

        async fn find(
            &mut self,
            usernames: &[&str],
        ) -> sqlx::Result<HashMap<Username, EmbeddedUser>> {
            let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT username, user_id, full_name FROM temp.backfill_embedded
                 WHERE username IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_list(usernames.iter()))
            .fetch_all(&mut *self)
            .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(username, id, name)| {
                    let user = super::embedded(Some(id), Some(username), name)?;
                    Some((user.username.clone(), user))
                })
                .collect())
        }

        async fn plan_creates(&mut self, planned: &[(&str, &str)]) -> sqlx::Result<()> {
            if planned.is_empty() {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO temp.backfill_planned (username, host_user_id)
                 SELECT value ->> 0, value ->> 1 FROM json_each(?1) WHERE true
                 ON CONFLICT (username) DO NOTHING",
            )
            .bind(json_list(planned.iter().map(|(u, h)| [u, h])))
            .execute(&mut *self)
            .await?;
            Ok(())
        }

        async fn lookup(&mut self, users: &[(HostUserId, Profile)]) -> sqlx::Result<Vec<Known>> {
            let list = json_list(users.iter().map(|(h, p)| [h.as_str(), p.username.as_str()]));
            let rows: Vec<LookupRow> = sqlx::query_as(
                "SELECT u.state, u.updated_at AS claimed_at,
                        u.username_seen_free AS claim_seen_free,
                        (SELECT o.host_user_id FROM user_sync_users o
                          WHERE o.username = n.username AND o.state IN ('creating', 'synced')
                            AND o.host_user_id <> n.host LIMIT 1) AS holder,
                        s.user_id AS s_user_id, s.username AS s_username,
                        s.full_name AS s_full_name,
                        (SELECT m.host_user_id FROM user_sync_users m
                          WHERE m.embedded_user_id = s.user_id AND m.host_user_id <> n.host
                          LIMIT 1) AS s_mapped_to,
                        c.user_id AS c_user_id, c.username AS c_username,
                        c.full_name AS c_full_name,
                        (SELECT m.host_user_id FROM user_sync_users m
                          WHERE m.embedded_user_id = c.user_id AND m.host_user_id <> n.host
                          LIMIT 1) AS c_mapped_to,
                        p.host_user_id AS planned_by,
                        EXISTS (SELECT 1 FROM user_sync_events e
                                WHERE e.host_user_id = n.host AND e.state = 'pending'
                                  AND trim(e.kind) = 'account_closure') AS closing
                 FROM (SELECT CAST(key AS INTEGER) AS ord, value ->> 0 AS host,
                              value ->> 1 AS username
                       FROM json_each(?1)) AS n
                 LEFT JOIN user_sync_users u ON u.host_user_id = n.host
                 LEFT JOIN temp.backfill_embedded s ON s.username = n.username
                 LEFT JOIN temp.backfill_embedded c
                     ON u.state = 'creating' AND c.username = u.username
                 LEFT JOIN temp.backfill_planned p
                     ON p.username = n.username AND p.host_user_id <> n.host
                 ORDER BY n.ord",
            )
            .bind(list)
            .fetch_all(&mut *self)
            .await?;
            Ok(rows.into_iter().map(LookupRow::into_known).collect())
        }
    }
}

#[cfg(test)]
mod pg_tests {
    //! The PostgreSQL working tables' inserts, on a session of the test
    //! database: temporary tables only, so nothing outlives the test.

    use sqlx::{Connection, PgConnection};

    use super::WorkingTables;
    use crate::domain::{EmbeddedUserId, Username};
    use crate::embedded::EmbeddedUser;

    async fn session() -> PgConnection {
        let url = std::env::var("USER_SYNC_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut conn = PgConnection::connect(&url).await.expect("PostgreSQL");
        WorkingTables::prepare(&mut conn)
            .await
            .expect("working tables");
        conn
    }

    fn user(id: &str, username: &str) -> EmbeddedUser {
        EmbeddedUser {
            user_id: EmbeddedUserId::parse(id).expect("an id"),
            username: Username::from_api(username),
            full_name: None,
        }
    }

    #[tokio::test]
    async fn a_repeated_username_keeps_its_first_user_in_any_chunk() {
        // Written without a refused statement: PostgreSQL would print the
        // username in its server log.
        let mut conn = session().await;
        let first = [user("a1", "ada@x.io"), user("b1", "bob@x.io")];
        assert_eq!(conn.insert_snapshot(&first).await.expect("insert"), 2);
        // A repeat of an earlier chunk's username, and one within the chunk.
        let again = [
            user("a2", "ada@x.io"),
            user("c1", "cy@x.io"),
            user("c2", "cy@x.io"),
        ];
        assert_eq!(conn.insert_snapshot(&again).await.expect("insert"), 1);
        let found = conn
            .find(&["ada@x.io", "bob@x.io", "cy@x.io"])
            .await
            .expect("find");
        let id = |u: &str| found[&Username::from_api(u)].user_id.as_str().to_owned();
        assert_eq!(
            (id("ada@x.io"), id("bob@x.io"), id("cy@x.io")),
            ("a1".into(), "b1".into(), "c1".into())
        );
    }

    #[tokio::test]
    async fn a_username_planned_again_keeps_its_first_host_user() {
        let mut conn = session().await;
        conn.plan_creates(&[("ada@x.io", "h1")])
            .await
            .expect("plan");
        conn.plan_creates(&[("bob@x.io", "h2"), ("ada@x.io", "h3")])
            .await
            .expect("plan again");
        let planned: Vec<(String, String)> = sqlx::query_as(
            "SELECT username, host_user_id FROM pg_temp.backfill_planned ORDER BY username",
        )
        .fetch_all(&mut conn)
        .await
        .expect("planned");
        assert_eq!(
            planned,
            [
                ("ada@x.io".to_owned(), "h1".to_owned()),
                ("bob@x.io".to_owned(), "h2".to_owned())
            ]
        );
    }
}

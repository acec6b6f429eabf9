//! What a careless host can write into the outbox and its users table:
//! values no column type stops (a SQLite BLOB, bytes that are not UTF-8, a
//! host id of kilobytes, an email of megabytes). None of it may make the
//! host's own transaction fail, block the events beside it, or be read
//! whole over and over.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::Running;
use common::{Backend, Env};
use rand::distr::{Alphanumeric, SampleString};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use user_sync::domain::HostUserId;
use user_sync::host::{self, BackfillOptions, Summary};
use user_sync::storage::{Database, SqliteStore, SyncStore, UserSession};
use user_sync_sandbox::SandboxOptions;

const SETTLE: Duration = Duration::from_secs(30);

on_each_backend!(
    a_long_host_user_id_never_fails_the_hosts_insert,
    a_ten_megabyte_email_ends_invalid_read_bounded,
    host_rows_without_an_id_or_with_huge_values_are_reported_and_skipped,
);

/// Random letters and digits: a value no compression makes short.
fn incompressible(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// Asserts that event `id` ended `invalid` with a reason that says
/// `says` and does not repeat `value`.
async fn invalid_saying(env: &Env, id: i64, says: &str, value: &str) {
    let (state, reason) = env.event_state(id).await;
    let reason = reason.unwrap_or_default();
    assert_eq!(state, "invalid", "event {id}: {reason}");
    assert!(reason.contains(says), "event {id}: {reason}");
    assert!(!reason.contains(&value[..32.min(value.len())]), "{reason}");
}

async fn a_long_host_user_id_never_fails_the_hosts_insert(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let long = incompressible(10 * 1024);
    // The host's insert, as its own code writes it: it must not fail.
    let signup = env
        .event(Some(&long), "signup", Some("long@example.com"), None)
        .await;
    let closure = env.event(Some(&long), "account_closure", None, None).await;
    let good = env.signup("fine", "fine@example.com", None).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    for id in [signup, closure] {
        invalid_saying(&env, id, "host_user_id is longer than 255", &long).await;
    }
    assert_eq!(env.event_state(good).await.0, "applied");
    assert_eq!(env.sandbox.users().len(), 1);
    let users = env
        .scalar("SELECT count(*) FROM user_sync.users WHERE length(host_user_id) > 255")
        .await;
    assert_eq!(users, 0, "no user row for the long id");
    run.stop().await;
    env.finish().await;
}

async fn a_ten_megabyte_email_ends_invalid_read_bounded(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let huge = format!("{}@example.com", incompressible(10 * 1024 * 1024));
    let signup = env.signup("big", &huge, Some("Big Email")).await;
    // What a job reads of it: a bounded prefix, however long the value.
    let host = HostUserId::parse("big").expect("an id");
    let read = match &env.db_pool {
        Database::Postgres(pool) => {
            let mut conn = pool.acquire().await.expect("a connection");
            let mut next = user_sync::storage::newest_pending_many(&mut conn, &["big"])
                .await
                .expect("the job's read");
            next.pop().flatten().expect("the event")
        }
        Database::Sqlite(pool) => {
            let store = SqliteStore::new(pool.clone());
            let mut sessions = store.lock_users(&[host]).await.expect("locked");
            let mut session = sessions.pop().flatten().expect("free");
            let next = session.newest_pending().await.expect("the job's read");
            session.release().await.expect("released");
            next.expect("the event")
        }
    };
    let email = read.event.email.clone().unwrap_or_default();
    assert!(email.len() <= 4096, "the job read {} bytes", email.len());
    assert!(
        read.event.desired().is_err(),
        "an email cut short is never taken for the whole"
    );

    let good = env.signup("fine", "fine@example.com", None).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    invalid_saying(&env, signup, "email is longer than", &huge).await;
    assert_eq!(env.event_state(good).await.0, "applied");
    assert_eq!(env.sandbox.users().len(), 1);
    run.stop().await;
    env.finish().await;
}

/// SQLite stores whatever it is given: a BLOB, or text whose bytes are not
/// UTF-8 (a legacy Latin-1 value). Each such event ends `invalid` alone,
/// with a reason, and the events claimed in the same batch, closures
/// included, go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_sqlite_values_end_invalid_alone_and_their_batch_goes_on() {
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    let synced = env.signup("closing", "closing@example.com", None).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(synced).await.0, "applied");
    run.stop().await;

    let Database::Sqlite(pool) = &env.db_pool else {
        unreachable!("a SQLite test")
    };
    let insert = async |sql: &str| -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(pool)
            .await
            .expect("the host's insert")
    };
    // é in Latin-1 is the byte E9, which UTF-8 never has alone.
    let latin1 = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES ('latin', 'signup', CAST(X'636166E940782E696F' AS TEXT)) RETURNING id",
    )
    .await;
    let blob_email = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES ('blob', 'signup', X'626C6F6240782E696F') RETURNING id",
    )
    .await;
    let blob_host = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES (X'0102', 'signup', 'blobhost@x.io') RETURNING id",
    )
    .await;
    let latin1_host = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES (CAST(X'E9' AS TEXT), 'signup', 'latinhost@x.io') RETURNING id",
    )
    .await;
    let blob_name = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
         VALUES ('name', 'signup', 'name@x.io', CAST(X'41E9' AS TEXT)) RETURNING id",
    )
    .await;
    let bad_kind = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES ('kind', X'00', 'kind@x.io') RETURNING id",
    )
    .await;
    // A closure whose email the host filled with bytes: the closure needs
    // no email, and the user is erased.
    let closure = insert(
        "INSERT INTO user_sync_events (host_user_id, kind, email)
         VALUES ('closing', 'account_closure', X'FF') RETURNING id",
    )
    .await;
    let good = env.signup("good", "good@example.com", None).await;

    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    for (id, says) in [
        (latin1, "email is not valid UTF-8"),
        (blob_email, "email is not text"),
        (blob_host, "host_user_id is not text"),
        (latin1_host, "host_user_id is not valid UTF-8"),
        (blob_name, "full_name is not valid UTF-8"),
        (bad_kind, "kind is not text"),
    ] {
        let (state, reason) = env.event_state(id).await;
        assert_eq!(state, "invalid", "event {id}: {reason:?}");
        let reason = reason.unwrap_or_default();
        assert!(reason.contains(says), "event {id}: {reason}");
    }
    assert_eq!(env.event_state(closure).await.0, "applied");
    assert_eq!(env.event_state(good).await.0, "applied");
    let users: Vec<String> = env
        .sandbox
        .users()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(users, vec!["good@example.com".to_owned()]);
    run.stop().await;
    env.finish().await;
}

/// On PostgreSQL only a database of encoding SQL_ASCII stores bytes that
/// are not text in its encoding; every value sent to the worker is then
/// checked as UTF-8 by the server, and one such value in the outbox would
/// make the dispatcher's claim fail for good. The worker refuses to be
/// installed in such a database, and a worker started on one says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_ascii_database_is_refused_with_the_reason() {
    let admin = common::admin_url();
    let name = format!("user_sync_ascii_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0
         LC_COLLATE 'C' LC_CTYPE 'C'"
    )))
    .execute(&mut conn)
    .await
    .expect("a SQL_ASCII database");
    let url = format!("{}/{name}", &admin[..admin.rfind('/').expect("a database")]);
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    let refused = Database::Postgres(pool.clone())
        .migrate()
        .await
        .expect_err("refused");
    let message = format!("{refused:#}");
    assert!(message.contains("SQL_ASCII"), "{message}");
    let schema: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'user_sync'")
            .fetch_optional(&pool)
            .await
            .expect("read the catalog");
    assert_eq!(schema, None, "nothing was created");
    let refused = Database::Postgres(pool.clone())
        .check_current()
        .await
        .expect_err("run refuses it too");
    assert!(format!("{refused:#}").contains("SQL_ASCII"), "{refused:#}");
    pool.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop");
}

/// Migration 0009 on an outbox that already holds events, beside a host
/// transaction that stays open: the hash index is built without stopping
/// the host's other inserts (a plain `CREATE INDEX` would queue behind
/// that transaction, and every insert behind it), a second `migrate` at
/// the same time waits its turn instead of failing, the btree goes once
/// the hash is valid, and the queries of a worker of the older version
/// still reach their rows by an index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_index_is_built_beside_the_hosts_inserts_and_an_older_worker() {
    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    // The outbox as 0008 left it.
    for sql in [
        "CREATE INDEX events_by_user ON user_sync.events (host_user_id, id)",
        "DROP INDEX user_sync.events_by_user_hash",
        "DELETE FROM user_sync._sqlx_migrations WHERE version = 9",
        "INSERT INTO user_sync.events (host_user_id, kind, email, state)
         SELECT 'h' || (i % 5000), 'signup', 'u' || i || '@example.com', 'applied'
         FROM generate_series(1, 50000) AS i",
        "ANALYZE user_sync.events",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }
    let insert = "INSERT INTO user_sync.events (host_user_id, kind) VALUES ($1, 'signup')";
    let mut open = pool.begin().await.expect("the host's transaction");
    sqlx::query(insert)
        .bind("open")
        .execute(&mut *open)
        .await
        .expect("an insert");

    let (one, two) = (
        Database::Postgres(pool.clone()),
        Database::Postgres(db.pool().await),
    );
    let migrations = async { tokio::join!(one.migrate(), two.migrate()) };
    let host = async {
        common::eventually(
            Duration::from_secs(20),
            "the build waits for the host",
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                 WHERE query LIKE '%CREATE INDEX%events_by_user_hash%' AND wait_event_type = 'Lock'
                   AND datname = current_database()",
                )
                .fetch_one(&pool)
                .await
                .expect("pg_stat_activity");
                waiting > 0
            },
        )
        .await;
        // While the build waits for the open transaction, the host goes on.
        tokio::time::timeout(
            Duration::from_secs(5),
            sqlx::query(insert).bind("beside").execute(&pool),
        )
        .await
        .expect("the host's insert does not wait for the index")
        .expect("an insert");
        open.commit().await.expect("the host commits");
    };
    let ((a, b), ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(migrations, host)
    })
    .await
    .expect("the migrations end");
    let (a, b) = (a.expect("a migration"), b.expect("a migration beside it"));
    assert_eq!(a + b, 1, "0009 ran once");

    let indexes: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'user_sync.events'::regclass AND c.relname LIKE 'events_by_user%'",
    )
    .fetch_all(&pool)
    .await
    .expect("the indexes");
    assert_eq!(indexes, vec![("events_by_user_hash".to_owned(), true)]);
    // The statements of a worker of the older version, which compare the
    // host user id with `=` as this one's do: by the hash index.
    for sql in [
        "SELECT id FROM user_sync.events WHERE host_user_id = 'h42' ORDER BY id DESC LIMIT 1",
        "SELECT max(n.id) FROM user_sync.events n WHERE n.host_user_id = 'h42'",
        "SELECT e.id FROM unnest(ARRAY['h1', 'h2']) AS h(host) CROSS JOIN LATERAL (
             SELECT * FROM user_sync.events e WHERE e.host_user_id = h.host
               AND e.state = 'pending' ORDER BY e.id DESC LIMIT 1) e",
        "UPDATE user_sync.events SET state = 'superseded'
         WHERE host_user_id = 'h7' AND state = 'pending' AND id < 1000000",
    ] {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
            .fetch_all(&pool)
            .await
            .expect("a plan");
        let plan = plan.join("\n");
        assert!(plan.contains("events_by_user_hash"), "{sql}\n{plan}");
    }
    // The host's insert that the btree refused.
    sqlx::query(insert)
        .bind(incompressible(10 * 1024))
        .execute(&pool)
        .await
        .expect("a long host id goes in");

    // A build cut short leaves an invalid index behind: the next migrate
    // builds it again instead of keeping it.
    for sql in [
        "UPDATE pg_index SET indisvalid = false
         WHERE indexrelid = 'user_sync.events_by_user_hash'::regclass",
        "DELETE FROM user_sync._sqlx_migrations WHERE version = 9",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    assert_eq!(
        Database::Postgres(pool.clone())
            .migrate()
            .await
            .expect("migrate"),
        1
    );
    let valid: bool = sqlx::query_scalar(
        "SELECT indisvalid FROM pg_index
         WHERE indexrelid = 'user_sync.events_by_user_hash'::regclass",
    )
    .fetch_one(&pool)
    .await
    .expect("the index");
    assert!(valid, "built again");
    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// The backfill: the host's own users table
// ---------------------------------------------------------------------------

/// Runs the backfill over `table` (id, email, name), two rows a page, and
/// gives up (failing the test) if it has not ended within a minute: a page
/// read again and again never ends.
async fn backfill(env: &Env, table: &str) -> Summary {
    let settings = env.settings_with(&[
        ("USER_SYNC__SOURCE__TABLE", table),
        ("USER_SYNC__SOURCE__NAME_COLUMN", "name"),
        ("USER_SYNC__SOURCE__PAGE_SIZE", "2"),
    ]);
    let options = BackfillOptions {
        progress: false,
        ..BackfillOptions::default()
    };
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        host::run_backfill(&settings, &options, &mut out, CancellationToken::new()),
    )
    .await
    .expect("the backfill ends")
    .expect("the backfill runs to its end")
}

/// The usernames the sandbox holds, in order.
fn usernames(env: &Env) -> Vec<String> {
    let mut users: Vec<String> = env
        .sandbox
        .users()
        .into_iter()
        .map(|u| u.username)
        .collect();
    users.sort();
    users
}

/// Rows with no id (three, more than a page: SQLite puts them first), an
/// id too long, an email of megabytes: each is counted invalid, and every
/// good row around them is created.
async fn host_rows_without_an_id_or_with_huge_values_are_reported_and_skipped(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let table = match backend {
        Backend::Postgres => "public.people",
        Backend::Sqlite => "people",
    };
    env.execute(
        &format!("CREATE TABLE {table} (id TEXT, email TEXT, name TEXT)"),
        0,
    )
    .await;
    let insert = env.sql(&format!(
        "INSERT INTO {table} (id, email, name) VALUES ($1, $2, $3)"
    ));
    let huge = format!("{}@example.com", incompressible(10 * 1024 * 1024));
    let long_id = incompressible(300);
    let rows: Vec<(Option<&str>, &str)> = vec![
        (None, "nobody1@example.com"),
        (None, "nobody2@example.com"),
        (None, "nobody3@example.com"),
        (Some("a"), "a@example.com"),
        (Some("b"), &huge),
        (Some(&long_id), "long@example.com"),
        (Some("c"), "c@example.com"),
        (Some("d"), "d@example.com"),
    ];
    for (id, email) in &rows {
        let sql = sqlx::AssertSqlSafe(insert.clone());
        on_pool!(&env.db_pool, |pool| sqlx::query(sql)
            .bind(id)
            .bind(email)
            .bind("Some One")
            .execute(pool)
            .await
            .map(|_| ()))
        .expect("a host row");
    }
    let summary = backfill(&env, table).await;
    assert_eq!(summary.scanned, 8, "{summary:?}");
    assert_eq!(summary.invalid, 5, "{summary:?}");
    assert_eq!(summary.created, 3, "{summary:?}");
    let users = usernames(&env);
    assert_eq!(users, ["a@example.com", "c@example.com", "d@example.com"]);
    env.finish().await;
}

/// SQLite's host table holds what the host gave it: a legacy Latin-1
/// email, a BLOB email, ids kept as BLOBs (UUIDs often are), a name whose
/// bytes are not UTF-8. The backfill reports and skips each such row and
/// goes on past it: it neither stops at that page on every run nor reads
/// one page forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_host_rows_are_reported_and_skipped() {
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    for sql in [
        "CREATE TABLE people (id, email TEXT, name TEXT)",
        "INSERT INTO people VALUES ('a', 'a@example.com', 'A')",
        "INSERT INTO people VALUES ('b', CAST(X'636166E940782E696F' AS TEXT), 'B')",
        "INSERT INTO people VALUES ('c', 'c@example.com', CAST(X'41E9' AS TEXT))",
        "INSERT INTO people VALUES ('d', 'd@example.com', 'D')",
        "INSERT INTO people VALUES (CAST(X'E9' AS TEXT), 'latin@example.com', 'E')",
        "INSERT INTO people VALUES (X'0102030405', 'blob1@example.com', 'F')",
        "INSERT INTO people VALUES (X'0102030406', 'blob2@example.com', 'G')",
        "INSERT INTO people VALUES (X'0102030407', 'blob3@example.com', 'H')",
        "INSERT INTO people VALUES (7, 'seven@example.com', 'I')",
        "INSERT INTO people VALUES ('z', 'z@example.com', 'Z')",
    ] {
        env.execute(sql, 0).await;
    }
    let summary = backfill(&env, "people").await;
    assert_eq!(summary.scanned, 10, "{summary:?}");
    assert_eq!(summary.invalid, 6, "{summary:?}");
    assert_eq!(summary.created, 4, "{summary:?}");
    let users = usernames(&env);
    assert_eq!(
        users,
        [
            "a@example.com",
            "d@example.com",
            "seven@example.com",
            "z@example.com"
        ]
    );
    env.finish().await;
}

mod properties {
    //! The backfill over any host table, however malformed: every row read
    //! once and accounted for once (a user created or in conflict, or
    //! reported invalid with why), and the run ends: no row skipped unread,
    //! no page read forever. Real tables on both backends, the real run,
    //! pages of one to three rows so that malformed rows fall on every
    //! page boundary.

    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;
    use user_sync::domain::{FullName, Username};

    /// A value as a host may store it. On PostgreSQL only text and `NULL`.
    #[derive(Debug, Clone)]
    enum Value {
        Null,
        Text(String),
        /// SQLite only, as are the two below.
        Integer(i64),
        Blob(Vec<u8>),
        Latin1(Vec<u8>),
    }

    fn id(sqlite: bool) -> BoxedStrategy<Value> {
        let text = prop_oneof![
            3 => "[a-e]".prop_map(Value::Text),
            1 => "[ a-c]{0,3}".prop_map(Value::Text),
            1 => any::<String>().prop_map(Value::Text),
            1 => Just(Value::Text("x".repeat(300))),
            1 => Just(Value::Null),
        ];
        if !sqlite {
            return text.boxed();
        }
        prop_oneof![
            6 => text,
            1 => (0i64..4).prop_map(Value::Integer),
            1 => proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Blob),
            1 => Just(Value::Latin1(b"\xe9t\xe9".to_vec())),
        ]
        .boxed()
    }

    fn email(sqlite: bool) -> BoxedStrategy<Value> {
        let text = prop_oneof![
            4 => "[ \t]?[a-cA-C]{1,2}@[ab]\\.io[ \t]?".prop_map(Value::Text),
            1 => any::<String>().prop_map(Value::Text),
            1 => Just(Value::Text(format!("{}@x.io", "a".repeat(2000)))),
            1 => Just(Value::Null),
        ];
        if !sqlite {
            return text.boxed();
        }
        prop_oneof![
            6 => text,
            1 => Just(Value::Blob(b"blob@x.io".to_vec())),
            1 => Just(Value::Latin1(b"caf\xe9@x.io".to_vec())),
        ]
        .boxed()
    }

    fn name(sqlite: bool) -> BoxedStrategy<Value> {
        let text = prop_oneof![
            3 => Just(Value::Null),
            3 => "[A-Z][a-z]{1,8}".prop_map(Value::Text),
            1 => any::<String>().prop_map(Value::Text),
            1 => Just(Value::Text("N".repeat(2000))),
        ];
        if !sqlite {
            return text.boxed();
        }
        prop_oneof![6 => text, 1 => Just(Value::Latin1(b"Jos\xe9".to_vec()))].boxed()
    }

    /// What the domain makes of a value read as text, if it is text.
    fn as_text(value: &Value) -> Option<Option<String>> {
        match value {
            Value::Null => Some(None),
            Value::Text(t) => Some(Some(t.clone())),
            Value::Integer(n) => Some(Some(n.to_string())),
            // What the backfill's `CAST(… AS TEXT)` makes of it.
            Value::Blob(bytes) => std::str::from_utf8(bytes).ok().map(|t| Some(t.to_owned())),
            Value::Latin1(_) => None,
        }
    }

    /// The username a row gives, if every value of it is usable.
    fn usable(row: &(Value, Value, Value)) -> Option<Username> {
        let host = as_text(&row.0)??;
        user_sync::domain::HostUserId::parse(&host).ok()?;
        let email = as_text(&row.1)?.unwrap_or_default();
        if email.chars().count() > user_sync::storage::VALUE_BOUND {
            return None;
        }
        let name = as_text(&row.2)?;
        if name
            .as_ref()
            .is_some_and(|n| n.chars().count() > user_sync::storage::VALUE_BOUND)
        {
            return None;
        }
        FullName::parse_optional(name.as_deref()).ok()?;
        Username::from_email(&email).ok()
    }

    async fn insert(env: &Env, table: &str, row: &(Value, Value, Value)) {
        let sql = env.sql(&format!(
            "INSERT INTO {table} (id, email, name) VALUES ({}, {}, {})",
            slot(1),
            slot(3),
            slot(5)
        ));
        match &env.db_pool {
            Database::Postgres(pool) => {
                let text = |v: &Value| match v {
                    Value::Text(t) => Some(t.clone()),
                    _ => None,
                };
                let sql = sql
                    .replace(
                        "CASE $2 WHEN 'latin1' THEN CAST($1 AS TEXT) ELSE $1 END",
                        "$1",
                    )
                    .replace(
                        "CASE $4 WHEN 'latin1' THEN CAST($3 AS TEXT) ELSE $3 END",
                        "$2",
                    )
                    .replace(
                        "CASE $6 WHEN 'latin1' THEN CAST($5 AS TEXT) ELSE $5 END",
                        "$3",
                    );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(text(&row.0))
                    .bind(text(&row.1))
                    .bind(text(&row.2))
                    .execute(pool)
                    .await
                    .map(|_| ())
            }
            Database::Sqlite(pool) => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for value in [&row.0, &row.1, &row.2] {
                    query = match value {
                        Value::Null => query.bind(None::<String>).bind("null"),
                        Value::Text(t) => query.bind(t.clone()).bind("text"),
                        Value::Integer(n) => query.bind(*n).bind("integer"),
                        Value::Blob(b) => query.bind(b.clone()).bind("blob"),
                        Value::Latin1(b) => query.bind(b.clone()).bind("latin1"),
                    };
                }
                query.execute(pool).await.map(|_| ())
            }
        }
        .expect("a host row");
    }

    /// A value's placeholder: bytes bound as a BLOB become text for Latin-1.
    fn slot(n: usize) -> String {
        format!(
            "CASE ${} WHEN 'latin1' THEN CAST(${n} AS TEXT) ELSE ${n} END",
            n + 1
        )
    }

    async fn run_case(
        backend: Backend,
        rows: &[(Value, Value, Value)],
        page_size: u32,
    ) -> Result<(), TestCaseError> {
        let env = Env::start_on(backend, SandboxOptions::default()).await;
        let table = match backend {
            Backend::Postgres => "public.people",
            Backend::Sqlite => "people",
        };
        let columns = match backend {
            Backend::Postgres => "id TEXT, email TEXT, name TEXT",
            // No declared types: every value keeps the kind it came in.
            Backend::Sqlite => "id, email, name",
        };
        env.execute(&format!("CREATE TABLE {table} ({columns})"), 0)
            .await;
        for row in rows {
            insert(&env, table, row).await;
        }
        let page = page_size.to_string();
        let settings = env.settings_with(&[
            ("USER_SYNC__SOURCE__TABLE", table),
            ("USER_SYNC__SOURCE__NAME_COLUMN", "name"),
            ("USER_SYNC__SOURCE__PAGE_SIZE", &page),
        ]);
        let options = BackfillOptions {
            progress: false,
            ..BackfillOptions::default()
        };
        let mut out = Vec::new();
        let summary = tokio::time::timeout(
            Duration::from_secs(60),
            host::run_backfill(&settings, &options, &mut out, CancellationToken::new()),
        )
        .await;
        let summary = match summary {
            Ok(Ok(summary)) => summary,
            Ok(Err(e)) => {
                env.finish().await;
                return Err(TestCaseError::fail(format!("the run failed: {e:#}")));
            }
            Err(_) => {
                env.finish().await;
                return Err(TestCaseError::fail("the run never ended"));
            }
        };
        let users: BTreeSet<String> = env
            .sandbox
            .users()
            .into_iter()
            .map(|u| u.username)
            .collect();
        env.finish().await;

        let n = rows.len() as u64;
        prop_assert_eq!(summary.scanned, n, "every row read once: {:?}", summary);
        let accounted = summary.invalid
            + summary.created
            + summary.conflicts
            + summary.in_sync
            + summary.closing
            + summary.resumed
            + summary.adopted
            + summary.failed
            + summary.unresolved;
        prop_assert_eq!(accounted, n, "every row accounted once: {:?}", summary);
        let unusable = rows.iter().filter(|r| usable(r).is_none()).count() as u64;
        prop_assert!(
            summary.invalid >= unusable,
            "{} unusable rows: {:?}",
            unusable,
            summary
        );
        prop_assert_eq!(summary.failed + summary.unresolved, 0, "{:?}", summary);
        // Each user created holds a usable row's username, and each
        // username of a usable row is held by one user (or in conflict).
        let wanted: BTreeSet<String> = rows
            .iter()
            .filter_map(usable)
            .map(|u| u.as_str().to_owned())
            .collect();
        prop_assert!(
            users.is_subset(&wanted),
            "created {:?}, wanted {:?}",
            users,
            wanted
        );
        prop_assert_eq!(summary.created, users.len() as u64, "{:?}", summary);
        Ok(())
    }

    fn table_of(sqlite: bool) -> impl Strategy<Value = (Vec<(Value, Value, Value)>, u32)> {
        (
            proptest::collection::vec((id(sqlite), email(sqlite), name(sqlite)), 0..12),
            1u32..4,
        )
    }

    fn check(backend: Backend, cases: u32) {
        let sqlite = backend == Backend::Sqlite;
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config {
            cases,
            ..Config::default()
        });
        let result = runner.run(&table_of(sqlite), |(rows, page_size)| {
            tokio::task::block_in_place(|| handle.block_on(run_case(backend, &rows, page_size)))
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_host_table_is_read_to_its_end_each_row_accounted_sqlite() {
        check(Backend::Sqlite, 32);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_host_table_is_read_to_its_end_each_row_accounted_postgres() {
        check(Backend::Postgres, 16);
    }
}

// ---------------------------------------------------------------------------
// The ops server: what a client, or hundreds, can hold
// ---------------------------------------------------------------------------

/// `GET path` on the ops server: status and body, or `None` when the
/// connection was refused, closed or timed out.
async fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let response = http.get(format!("http://{addr}{path}")).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Whether the server closed `stream` within `limit` (a read sees the end,
/// or an error).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a 408 or a 503) before the close.
            Ok(Ok(_)) => {}
        }
    }
}

/// A client that sends nothing, or its request head a byte at a time, is
/// cut at `http.header_read_timeout_ms`; a connection past
/// `http.max_connections` is closed at once; and the server goes on
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_server_cuts_slow_clients_and_caps_its_connections() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    let run = Running::with(
        &env,
        &[
            ("USER_SYNC__HTTP__HEADER_READ_TIMEOUT_MS", "1500"),
            ("USER_SYNC__HTTP__MAX_CONNECTIONS", "8"),
        ],
    )
    .await;
    let addr = run.worker.ops_addr;
    let started = tokio::time::Instant::now();
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(addr).await.expect("a connection"));
    }
    // Let the server accept all eight before the ninth comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = TcpStream::connect(addr)
        .await
        .expect("accepted, then closed");
    assert!(
        closed_within(&mut ninth, Duration::from_millis(800)).await,
        "a connection past the cap is closed at once"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the machine was too slow for the timings of this test"
    );
    for stream in &mut silent {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a client that sends nothing is cut"
        );
    }

    // A byte every 300 ms: the head would take 12 s.
    let mut slow = TcpStream::connect(addr).await.expect("a connection");
    let started = tokio::time::Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: ops\r\nAccept: */*\r\n\r\n";
    let mut cut = false;
    for byte in head {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow client was served");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut at the timeout"
    );

    let (status, body) = get(addr, "/healthz").await.expect("served");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    run.stop().await;
    env.finish().await;
}

/// Hundreds of scrapes at once, and slow clients, while the pipeline runs,
/// with the reads behind `/metrics` made slow (a transaction of the test
/// holds a lock on a table they read and jobs never touch, as a large
/// outbox's counts are slow): the scrapes wait for the ops server's own
/// connections and are cut at the request timeout; every job gets its
/// connection and every event is applied while they wait. The scrapes
/// used to take every connection of the pipeline's pool, and held them
/// until the lock went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_and_slow_clients_never_starve_the_jobs() {
    use tokio::io::AsyncWriteExt;
    let env = Env::start_on(Backend::Postgres, SandboxOptions::default()).await;
    let run = Running::with(
        &env,
        &[
            ("USER_SYNC__WORKER__CONCURRENCY", "4"),
            ("USER_SYNC__DATABASE__MAX_CONNECTIONS", "8"),
            ("USER_SYNC__HTTP__REQUEST_TIMEOUT_MS", "2000"),
            ("USER_SYNC__HTTP__MAX_CONNECTIONS", "400"),
        ],
    )
    .await;
    let addr = run.worker.ops_addr;
    let mut lock = env.pg().begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE user_sync.erasures IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .expect("the lock");

    let stop = CancellationToken::new();
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let stop = stop.clone();
        load.spawn(async move {
            let mut answers = 0u32;
            while !stop.is_cancelled() {
                if get(addr, "/metrics").await.is_some() {
                    answers += 1;
                }
            }
            answers
        });
    }
    for _ in 0..50 {
        let stop = stop.clone();
        load.spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut slow) = tokio::net::TcpStream::connect(addr).await else {
                    continue;
                };
                for byte in b"GET /metrics HTTP/1.1\r\n" {
                    if stop.is_cancelled() || slow.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            }
            0
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut signups = Vec::new();
    let writing = tokio::time::Instant::now();
    for i in 0..100 {
        signups.push(
            env.signup(&format!("s{i}"), &format!("s{i}@example.com"), None)
                .await,
        );
    }
    // A job that waited out the pipeline pool's acquire timeout (10 s)
    // for a connection fails then, and its events wait to be dispatched
    // again: settled within it, no job waited it out.
    env.settle(Duration::from_secs(30)).await;
    let took = writing.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "no job waited for a connection: settled in {took:?}"
    );
    let attempts = env
        .scalar("SELECT COALESCE(sum(attempts), 0)::int8 FROM user_sync.events")
        .await;
    assert_eq!(attempts, 0, "no job failed");
    for id in signups {
        assert_eq!(env.event_state(id).await.0, "applied");
    }
    // The scrapes were answered all along (503 once the request timeout
    // cut a read the lock held), and none of them took a connection of
    // the pipeline: the ops server's pool is two.
    let ops_connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(env.pg())
    .await
    .expect("pg_stat_activity");
    assert!(
        ops_connections <= 2,
        "{ops_connections} reads wait for the lock"
    );
    stop.cancel();
    let mut answers = 0;
    while let Some(joined) = load.join_next().await {
        answers += joined.expect("a client");
    }
    assert!(answers > 0, "the scrapes were answered");
    lock.rollback().await.expect("rollback");
    let (status, _) = get(addr, "/metrics").await.expect("served");
    assert_eq!(status, 200);
    run.stop().await;
    env.finish().await;
}

// ---------------------------------------------------------------------------
// /readyz and the Embedded API
// ---------------------------------------------------------------------------

/// The settings of `env` with the Embedded API at `base_url`, with `key`.
fn with_api(env: &Env, base_url: url::Url, key: &str) -> user_sync::config::Settings {
    let mut settings = env.settings();
    settings.embedded =
        user_sync::config::EmbeddedSettings::local(base_url, secrecy::SecretString::from(key));
    settings
}

async fn readiness(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/readyz").await.expect("served");
    (status, serde_json::from_str(&body).expect("JSON"))
}

async fn started(settings: &user_sync::config::Settings) -> Running {
    let shutdown = CancellationToken::new();
    let worker = user_sync::app::Worker::start(settings, shutdown.clone())
        .await
        .expect("the worker starts");
    Running { worker, shutdown }
}

/// `/readyz` says so when no request to the API can be built with the key
/// (one with a newline no header can carry: the settings refuse it, a
/// worker given it in code must not say it is ready) and when the API does
/// not answer; and it costs the API's rate limit at most one request per
/// `http.api_check_interval_ms`, none while the pipeline's own calls say
/// the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_when_no_request_can_be_built_or_sent_and_rarely_asks() {
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;

    let run = started(&with_api(
        &env,
        env.sandbox.base_url(),
        "a key\nwith a newline",
    ))
    .await;
    let (status, ready) = readiness(run.worker.ops_addr).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["api_key"], false, "{ready}");
    run.stop().await;

    let nobody = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let down =
        url::Url::parse(&format!("http://{}", nobody.local_addr().expect("addr"))).expect("a URL");
    drop(nobody);
    let run = started(&with_api(&env, down, common::KEY)).await;
    let (status, ready) = readiness(run.worker.ops_addr).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(
        ready,
        serde_json::json!({"database": true, "queue": true, "api_key": true, "api": false})
    );
    run.stop().await;

    env.sandbox.reset_stats();
    let run = Running::start(&env).await;
    let addr = run.worker.ops_addr;
    for _ in 0..20 {
        let (status, ready) = readiness(addr).await;
        assert_eq!(status, 200, "{ready}");
    }
    assert_eq!(
        env.sandbox.stats().total_requests,
        1,
        "one probe for twenty readiness checks"
    );
    run.stop().await;

    // A worker whose pipeline has just called the API asks nothing.
    let run = Running::start(&env).await;
    env.signup("r1", "r1@example.com", None).await;
    env.settle(SETTLE).await;
    env.sandbox.reset_stats();
    for _ in 0..10 {
        assert_eq!(readiness(run.worker.ops_addr).await.0, 200);
    }
    assert_eq!(env.sandbox.stats().total_requests, 0);
    run.stop().await;
    env.finish().await;
}

/// Migration 0012 (room on the outbox's pages) beside a host transaction
/// that stays open and a claim of a worker of the older version (rows
/// locked `FOR UPDATE`): it neither waits for them nor stops them, and
/// pages written afterwards keep their room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_gets_room_beside_the_hosts_inserts_and_an_older_workers_claim() {
    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    // The outbox as 0011 left it, with events in it.
    for sql in [
        "ALTER TABLE user_sync.events RESET (fillfactor)",
        "DELETE FROM user_sync._sqlx_migrations WHERE version = 12",
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         SELECT 'h' || i, 'signup', 'u' || i || '@example.com'
         FROM generate_series(1, 20000) AS i",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }
    let insert = "INSERT INTO user_sync.events (host_user_id, kind) VALUES ($1, 'signup')";
    let mut host = pool.begin().await.expect("the host's transaction");
    sqlx::query(insert)
        .bind("open")
        .execute(&mut *host)
        .await
        .expect("an insert");
    let mut older = pool.begin().await.expect("an older worker's claim");
    let claimed: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM user_sync.events WHERE state = 'pending' AND dispatched_at IS NULL
         ORDER BY available_at, id LIMIT 500 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *older)
    .await
    .expect("the older claim");
    assert_eq!(claimed.len(), 500);

    let applied = tokio::time::timeout(
        Duration::from_secs(20),
        Database::Postgres(db.pool().await).migrate(),
    )
    .await
    .expect("the migration waits for neither transaction")
    .expect("the migration");
    assert_eq!(applied, 1, "0012 ran");
    // Both go on and end as they would have.
    sqlx::query(insert)
        .bind("during")
        .execute(&mut *host)
        .await
        .expect("the host inserts again");
    host.commit().await.expect("the host commits");
    sqlx::query("UPDATE user_sync.events SET dispatched_at = now() WHERE id = ANY($1::bigint[])")
        .bind(&claimed)
        .execute(&mut *older)
        .await
        .expect("the older worker marks its claim");
    older.commit().await.expect("the older worker commits");

    let options: Option<Vec<String>> = sqlx::query_scalar(
        "SELECT reloptions::text[] FROM pg_class WHERE oid = 'user_sync.events'::regclass",
    )
    .fetch_one(&pool)
    .await
    .expect("the outbox's options");
    assert_eq!(options, Some(vec!["fillfactor=50".to_owned()]));
    // A page the host fills from now on keeps half its room: 20,000 more
    // events take about twice the pages the first 20,000 did.
    let pages = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT pg_relation_size('user_sync.events') / current_setting('block_size')::int8",
        )
        .fetch_one(&pool)
        .await
        .expect("the outbox's pages")
    };
    let before = pages().await;
    sqlx::query(
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         SELECT 'n' || i, 'signup', 'u' || i || '@example.com'
         FROM generate_series(1, 20000) AS i",
    )
    .execute(&pool)
    .await
    .expect("more events");
    let added = pages().await - before;
    assert!(
        added as f64 > 1.6 * before as f64,
        "{added} pages for 20,000 events after, {before} for the first 20,000 (and 500 versions)"
    );
    pool.close().await;
    db.drop_db().await;
}

/// The names of the outbox's indexes.
async fn outbox_indexes(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
         WHERE schemaname = 'user_sync' AND tablename = 'events' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("the outbox's indexes")
}

/// Migration 0014 (an event's end HOT, the sweeper walking the dispatched
/// events) on an outbox a worker of 0013 left: an event it dispatched whose
/// job is gone, one not dispatched yet, one snoozed, a failure recorded
/// without a reason. The older dispatcher's table is gone and its claim of
/// marked events refused (an older worker still running stops
/// dispatching), the event in flight is marked to dispatch at once, the
/// failure gets its state for a reason, the indexes naming the state are
/// dropped; then one worker carries out every pending event, each user
/// created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_takes_over_the_events_an_older_dispatcher_sent() {
    let env = Env::start(SandboxOptions::default()).await;
    let pool = env.pg().clone();
    // The outbox as 0013 left it.
    for sql in [
        "ALTER TABLE user_sync.dispatcher RENAME TO dispatch",
        "ALTER TABLE user_sync.dispatch DROP COLUMN swept, DROP COLUMN sweeping,
             DROP COLUMN swept_txid, DROP COLUMN swept_id",
        "DROP TABLE user_sync.finished_counts",
        "ALTER TABLE user_sync.retention DROP COLUMN events_floor_id,
             DROP COLUMN events_reached_id",
        "DROP TRIGGER events_keep_marks ON user_sync.events",
        "DROP INDEX user_sync.events_by_txid",
        "DROP INDEX user_sync.events_with_reason",
        "DROP INDEX user_sync.events_closures",
        "CREATE INDEX events_pending ON user_sync.events (txid, id)
             WHERE state = 'pending' AND txid IS NOT NULL",
        "CREATE INDEX events_finished ON user_sync.events (state, finished_at)
             WHERE state <> 'pending'",
        "CREATE INDEX events_open_closures ON user_sync.events (occurred_at)
             WHERE kind = 'account_closure' AND state IN ('pending', 'failed')",
        "DELETE FROM user_sync._sqlx_migrations WHERE version = 14",
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         VALUES ('flight', 'signup', 'flight@example.com')",
        "INSERT INTO user_sync.events (host_user_id, kind, email, state, finished_at)
         VALUES ('broken', 'signup', 'broken@example.com', 'failed', now())",
        // The older dispatcher took them.
        "UPDATE user_sync.dispatch SET snapshot = pg_current_snapshot()",
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         VALUES ('fresh', 'signup', 'fresh@example.com')",
        "INSERT INTO user_sync.events (host_user_id, kind, email, redispatch, available_at)
         VALUES ('snoozed', 'signup', 'snoozed@example.com', true, now() + interval '2 seconds')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }
    let applied = Database::Postgres(pool.clone())
        .migrate()
        .await
        .expect("the migration");
    assert_eq!(applied, 1, "0014 ran");
    let older = sqlx::query("UPDATE user_sync.dispatch SET snapshot = pg_current_snapshot()")
        .execute(&pool)
        .await;
    assert!(
        older.is_err(),
        "an older dispatcher's claim fails: {older:?}"
    );
    // An older dispatcher's claim of the marked events takes their marks
    // off, and is refused (it would leave them behind the sweeper).
    let unmarked = sqlx::query(
        "UPDATE user_sync.events SET redispatch = false
         WHERE redispatch AND host_user_id = 'snoozed'",
    )
    .execute(&pool)
    .await;
    assert!(
        matches!(&unmarked, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23514")),
        "{unmarked:?}"
    );
    let flight: (bool, bool, bool) = sqlx::query_as(
        "SELECT redispatch, dispatched_at IS NULL, available_at <= now()
         FROM user_sync.events WHERE host_user_id = 'flight'",
    )
    .fetch_one(&pool)
    .await
    .expect("the event in flight");
    assert_eq!(flight, (true, true, true), "marked, due at once");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.events WHERE redispatch")
            .await,
        2,
        "the fresh event is the dispatcher's, not marked"
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM user_sync.events
             WHERE host_user_id = 'broken' AND reason = 'failed'"
        )
        .await,
        1
    );
    let indexes = outbox_indexes(&pool).await;
    assert!(
        ["events_by_txid", "events_with_reason", "events_closures"]
            .iter()
            .all(|built| indexes.contains(&(*built).to_owned()))
            && ["events_pending", "events_finished", "events_open_closures"]
                .iter()
                .all(|gone| !indexes.contains(&(*gone).to_owned())),
        "{indexes:?}"
    );

    let run = Running::start(&env).await;
    common::eventually(
        Duration::from_secs(60),
        "every event carried out",
        || async {
            env.scalar("SELECT count(*) FROM user_sync.events WHERE state = 'pending'")
                .await
                == 0
        },
    )
    .await;
    for host in ["flight", "fresh", "snoozed"] {
        assert_eq!(
            env.scalar(&format!(
                "SELECT count(*) FROM user_sync.users WHERE host_user_id = '{host}' AND state = 'synced'"
            ))
            .await,
            1,
            "{host}"
        );
    }
    assert_eq!(env.sandbox.stats().creates, 3, "each user created once");
    run.stop().await;
    env.finish().await;
}

/// Migration 0013 (the dispatcher's snapshot instead of a mark on each
/// event) on an outbox an older worker left: events it never dispatched,
/// one it dispatched whose job is gone, one snoozed, a thousand finished;
/// beside a host transaction that holds the outbox. The migration waits for
/// that transaction (its lock times out and it tries again) without holding
/// the host's other inserts up for long; afterwards one worker carries out
/// every pending event, each user created once, and the dispatch marks'
/// indexes are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_moves_to_snapshots_on_an_older_outbox_beside_a_host_transaction() {
    let env = Env::start(SandboxOptions::default()).await;
    let pool = env.pg().clone();
    // The outbox as 0012 left it, with an older worker's events in it.
    for sql in [
        "DROP TABLE user_sync.dispatcher",
        "DROP TABLE user_sync.finished_counts",
        "ALTER TABLE user_sync.retention DROP COLUMN events_floor_id,
             DROP COLUMN events_reached_id",
        "DROP TRIGGER events_keep_marks ON user_sync.events",
        "DROP INDEX user_sync.events_with_reason",
        "DROP INDEX user_sync.events_closures",
        "ALTER TABLE user_sync.events DROP COLUMN txid, DROP COLUMN redispatch",
        "CREATE INDEX events_to_dispatch ON user_sync.events (available_at, id)
             WHERE state = 'pending' AND dispatched_at IS NULL",
        "CREATE INDEX events_in_flight ON user_sync.events (dispatched_at)
             WHERE state = 'pending' AND dispatched_at IS NOT NULL",
        "CREATE INDEX events_finished ON user_sync.events (state, finished_at)
             WHERE state <> 'pending'",
        "CREATE INDEX events_open_closures ON user_sync.events (occurred_at)
             WHERE kind = 'account_closure' AND state IN ('pending', 'failed')",
        "DELETE FROM user_sync._sqlx_migrations WHERE version >= 13",
        "INSERT INTO user_sync.events (host_user_id, kind, email, state, finished_at)
         SELECT 'old' || i, 'signup', 'old' || i || '@example.com', 'applied', now()
         FROM generate_series(1, 1000) AS i",
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         VALUES ('new1', 'signup', 'new1@example.com'), ('new2', 'signup', 'new2@example.com')",
        "INSERT INTO user_sync.events (host_user_id, kind, email, dispatched_at)
         VALUES ('flight', 'signup', 'flight@example.com', now() - interval '1 hour')",
        "INSERT INTO user_sync.events (host_user_id, kind, email, available_at)
         VALUES ('snoozed', 'signup', 'snoozed@example.com', now() + interval '3 seconds')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }
    let insert = "INSERT INTO user_sync.events (host_user_id, kind, email)
                  VALUES ($1, 'signup', $1 || '@example.com')";
    let mut host = pool.begin().await.expect("the host's transaction");
    sqlx::query(insert)
        .bind("held")
        .execute(&mut *host)
        .await
        .expect("an insert");

    let database = Database::Postgres(pool.clone());
    let migrating = database.migrate();
    tokio::pin!(migrating);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut migrating)
            .await
            .is_err(),
        "the migration waits for the host"
    );
    // Another host transaction is held up by the waiting migration for
    // its lock timeout at most.
    let other = tokio::time::timeout(
        Duration::from_secs(6),
        sqlx::query(insert).bind("other").execute(&pool),
    );
    tokio::select! {
        inserted = other => {
            inserted.expect("the host's other inserts go on").expect("an insert");
        }
        migrated = &mut migrating => panic!("migrated while the host held the outbox: {migrated:?}"),
    }
    host.commit().await.expect("the host commits");
    let applied = tokio::time::timeout(Duration::from_secs(60), &mut migrating)
        .await
        .expect("the migration ends once the host committed")
        .expect("the migration");
    assert_eq!(applied, 2, "0013 and 0014 ran");
    let indexes = outbox_indexes(&pool).await;
    assert!(
        indexes.contains(&"events_by_txid".to_owned())
            && [
                "events_to_dispatch",
                "events_in_flight",
                "events_pending",
                "events_finished"
            ]
            .iter()
            .all(|gone| !indexes.contains(&(*gone).to_owned())),
        "{indexes:?}"
    );

    let run = Running::start(&env).await;
    let pending = "SELECT count(*) FROM user_sync.events WHERE state = 'pending'";
    common::eventually(
        Duration::from_secs(60),
        "every event carried out",
        || async { env.scalar(pending).await == 0 },
    )
    .await;
    let hosts = ["new1", "new2", "flight", "snoozed", "held", "other"];
    for host in hosts {
        assert_eq!(
            env.scalar(&format!(
                "SELECT count(*) FROM user_sync.users WHERE host_user_id = '{host}' AND state = 'synced'"
            ))
            .await,
            1,
            "{host}"
        );
    }
    let stats = env.sandbox.stats();
    assert_eq!(stats.creates, hosts.len() as u64, "each user created once");
    assert_eq!(env.sandbox.users().len(), hosts.len());
    run.stop().await;
    env.finish().await;
}

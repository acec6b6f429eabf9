//! What the integration tests share: a database of their own (PostgreSQL
//! with a Redis namespace, or a SQLite file), a sandbox, settings pointing
//! at them, and ways to write outbox events and wait for the pipeline on
//! either backend.

#![allow(dead_code)]

pub mod console;
pub mod process;
mod redis_ns;
pub mod services;

/// Runs each named test on PostgreSQL with Redis and on SQLite: one test
/// function, `name::postgres` and `name::sqlite`.
#[allow(unused_macros)]
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::common::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Backend::Postgres).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }
            }
        )*
    };
}

/// Runs each named test on every API version, against the sandbox (which
/// serves them all): 2025-09 on both backends, the older versions on
/// SQLite only, since what differs between versions is the client's, not
/// the storage's. One test function taking `(Backend, ApiVersion)`:
/// `name::v2025_09_postgres`, `name::v2025_09_sqlite`, `name::v2024_03`,
/// `name::v2023_12` and `name::v2021_12`.
#[allow(unused_macros)]
macro_rules! on_each_version {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::common::Backend;
                use user_sync::config::ApiVersion;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v2025_09_postgres() {
                    super::$name(Backend::Postgres, ApiVersion::V2025_09).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v2025_09_sqlite() {
                    super::$name(Backend::Sqlite, ApiVersion::V2025_09).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v2024_03() {
                    super::$name(Backend::Sqlite, ApiVersion::V2024_03).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v2023_12() {
                    super::$name(Backend::Sqlite, ApiVersion::V2023_12).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v2021_12() {
                    super::$name(Backend::Sqlite, ApiVersion::V2021_12).await;
                }
            }
        )*
    };
}

/// `$body`, an expression over `$pool`, run on the test's pool of either
/// backend: written once, typed for each.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Postgres($pool) => $body,
            Database::Sqlite($pool) => $body,
        }
    };
}

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use user_sync::config::{ApiVersion, EmbeddedSettings, Settings};
use user_sync::domain::{FullName, Username};
use user_sync::embedded::{EmbeddedClient, NewUser};
use user_sync::storage::Database;
use user_sync_sandbox::{Sandbox, SandboxOptions};

pub const KEY: &str = "pipeline-test-key";

/// The server every test database is created on.
pub fn admin_url() -> String {
    std::env::var("USER_SYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("USER_SYNC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// Where a test keeps the worker's tables (and its queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, with the queue on Redis.
    Postgres,
    /// One SQLite file, queue included.
    Sqlite,
}

/// A database of one test, dropped when the test ends well.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// A SQLite test's folder (the file and its lock), removed on drop.
    dir: Option<tempfile::TempDir>,
    /// The server's administrative database, to drop this one from
    /// (PostgreSQL only).
    admin: String,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    /// A database on the server of `admin` (a URL naming some database).
    pub async fn create_on(admin: &str) -> Self {
        let name = unique("user_sync_test");
        let mut conn = PgConnection::connect(admin)
            .await
            .expect("PostgreSQL is reachable (see README: Tests)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let url = match admin.rfind('/') {
            Some(i) => format!("{}/{name}", &admin[..i]),
            None => panic!("admin URL has no database part"),
        };
        Self {
            name,
            url,
            dir: None,
            admin: admin.to_owned(),
        }
    }

    /// A SQLite file in a folder of its own.
    pub fn create_sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("host.db");
        Self {
            name: path.display().to_string(),
            url: format!("sqlite:{}", path.display()),
            dir: Some(dir),
            admin: String::new(),
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// A pool on the database with the worker's migrations applied.
    pub async fn migrated_pool(&self) -> PgPool {
        let pool = self.pool().await;
        Database::Postgres(pool.clone())
            .migrate()
            .await
            .expect("migrate");
        pool
    }

    pub async fn drop_db(self) {
        if self.dir.is_some() {
            return;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await;
        }
    }
}

/// Everything one pipeline test runs against.
pub struct Env {
    pub backend: Backend,
    pub db: TestDb,
    pub db_pool: Database,
    /// The Redis of a PostgreSQL test's queue.
    pub redis_url: String,
    pub namespace: String,
    pub sandbox: Sandbox,
    /// The API version the worker speaks to the sandbox.
    pub version: ApiVersion,
}

impl Env {
    /// A migrated PostgreSQL database, a fresh Redis namespace and a
    /// sandbox with `options`.
    pub async fn start(options: SandboxOptions) -> Self {
        Self::start_on(Backend::Postgres, options).await
    }

    /// A migrated database on `backend` and a sandbox with `options`.
    pub async fn start_on(backend: Backend, options: SandboxOptions) -> Self {
        Self::start_with(backend, &admin_url(), &redis_url(), options).await
    }

    /// The same, with the worker speaking API version `version`.
    pub async fn start_speaking(
        backend: Backend,
        version: ApiVersion,
        options: SandboxOptions,
    ) -> Self {
        Self {
            version,
            ..Self::start_on(backend, options).await
        }
    }

    /// The same on the PostgreSQL server of `admin` and the Redis at
    /// `redis` (both unused on SQLite).
    pub async fn start_with(
        backend: Backend,
        admin: &str,
        redis: &str,
        options: SandboxOptions,
    ) -> Self {
        init_logs();
        let (db, db_pool) = match backend {
            Backend::Postgres => {
                let db = TestDb::create_on(admin).await;
                let pool = db.pool().await;
                Database::Postgres(pool.clone())
                    .migrate()
                    .await
                    .expect("migrations run");
                (db, Database::Postgres(pool))
            }
            Backend::Sqlite => {
                let db = TestDb::create_sqlite();
                let options = SqliteConnectOptions::from_str(&db.url)
                    .expect("a SQLite URL")
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .expect("open the test database");
                Database::Sqlite(pool.clone())
                    .migrate()
                    .await
                    .expect("migrations run");
                (db, Database::Sqlite(pool))
            }
        };
        let sandbox = sandbox_accepting(KEY, options).await;
        Self {
            backend,
            db,
            db_pool,
            redis_url: redis.to_owned(),
            namespace: unique("test").replace('_', "-"),
            sandbox,
            version: ApiVersion::default(),
        }
    }

    /// The variables a worker process of this test runs with: quick
    /// timings so that retries and sweeps happen within a test.
    pub fn vars(&self) -> HashMap<String, String> {
        let mut vars = HashMap::new();
        vars.insert("DATABASE_URL".into(), self.db.url.clone());
        vars.insert("REDIS_URL".into(), self.redis_url.clone());
        vars.insert("EMBEDDED_API_KEY".into(), KEY.into());
        for (key, value) in [
            ("EMBEDDED__BASE_URL", self.sandbox.base_url().to_string()),
            ("EMBEDDED__API_VERSION", self.version.as_str().to_owned()),
            ("EMBEDDED__TIMEOUT_MS", "2000".into()),
            ("REDIS__NAMESPACE", self.namespace.clone()),
            ("HTTP__BIND", "127.0.0.1:0".into()),
            ("WORKER__CONCURRENCY", "8".into()),
            ("WORKER__BACKOFF_BASE_MS", "20".into()),
            ("WORKER__BACKOFF_CAP_MS", "200".into()),
            ("WORKER__AUTH_RETRY_INTERVAL_MS", "200".into()),
            ("WORKER__SHUTDOWN_TIMEOUT_MS", "5000".into()),
            ("DISPATCHER__POLL_INTERVAL_MS", "500".into()),
            ("SWEEPER__INTERVAL_MS", "500".into()),
            ("SWEEPER__REDISPATCH_AFTER_MS", "3000".into()),
            ("RATE_LIMIT__REQUESTS_PER_SECOND", "1000".into()),
            ("RATE_LIMIT__BURST", "100".into()),
            ("LOG__LEVEL", "warn".into()),
        ] {
            vars.insert(format!("USER_SYNC__{key}"), value);
        }
        vars
    }

    /// [`Self::vars`] with the sweeper and the dispatcher on their
    /// default timings (60 times slower than the tests' own): for the tests
    /// of what those quick timings would hide.
    pub fn vars_on_default_timings(&self) -> HashMap<String, String> {
        let mut vars = self.vars();
        for key in [
            "SWEEPER__INTERVAL_MS",
            "SWEEPER__REDISPATCH_AFTER_MS",
            "DISPATCHER__POLL_INTERVAL_MS",
        ] {
            vars.remove(&format!("USER_SYNC__{key}"));
        }
        vars
    }

    /// The settings of [`Self::vars_on_default_timings`], with `extra`.
    pub fn settings_on_default_timings(&self, extra: &[(&str, &str)]) -> Settings {
        let mut vars = self.vars_on_default_timings();
        for (key, value) in extra {
            vars.insert((*key).into(), (*value).into());
        }
        Settings::load_from(&config_dir(), &vars).expect("test settings load")
    }

    pub fn settings_with(&self, extra: &[(&str, &str)]) -> Settings {
        let mut vars = self.vars();
        for (key, value) in extra {
            vars.insert((*key).into(), (*value).into());
        }
        Settings::load_from(&config_dir(), &vars).expect("test settings load")
    }

    pub fn settings(&self) -> Settings {
        self.settings_with(&[])
    }

    /// The PostgreSQL pool of a test that runs on PostgreSQL only.
    pub fn pg(&self) -> &PgPool {
        match &self.db_pool {
            Database::Postgres(pool) => pool,
            Database::Sqlite(_) => panic!("a PostgreSQL-only test runs on SQLite"),
        }
    }

    /// `sql`, written for PostgreSQL, in the dialect of this test's
    /// database: on SQLite the tables are `user_sync_*` and parameters `?N`.
    pub fn sql(&self, sql: &str) -> String {
        match self.backend {
            Backend::Postgres => sql.to_owned(),
            Backend::Sqlite => sql.replace("user_sync.", "user_sync_").replace('$', "?"),
        }
    }

    /// The one integer `sql` returns.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(self.sql(sql));
        on_pool!(&self.db_pool, |pool| sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await)
        .expect("a scalar query")
    }

    /// The rows `sql` returns.
    pub async fn rows<T>(&self, sql: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + Send
            + Unpin,
    {
        let sql = sqlx::AssertSqlSafe(self.sql(sql));
        on_pool!(&self.db_pool, |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await)
        .expect("a query")
    }

    /// The rows of two text columns `sql` returns.
    pub async fn pairs(&self, sql: &str) -> Vec<(Option<String>, Option<String>)> {
        self.rows(sql).await
    }

    /// Runs `sql`, with `$1` bound to `n` when it has one.
    pub async fn execute(&self, sql: &str, n: i64) {
        let binds = sql.contains("$1");
        let sql = sqlx::AssertSqlSafe(self.sql(sql));
        on_pool!(&self.db_pool, |pool| {
            let query = sqlx::query(sql);
            let query = if binds { query.bind(n) } else { query };
            query.execute(pool).await.map(|_| ())
        })
        .expect("a statement");
    }

    /// Writes one outbox event the way a host app does; returns its id.
    pub async fn event(
        &self,
        host_user_id: Option<&str>,
        kind: &str,
        email: Option<&str>,
        full_name: Option<&str>,
    ) -> i64 {
        let sql = sqlx::AssertSqlSafe(self.sql(
            "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
             VALUES ($1, $2, $3, $4) RETURNING id",
        ));
        on_pool!(&self.db_pool, |pool| sqlx::query_scalar(sql)
            .bind(host_user_id)
            .bind(kind)
            .bind(email)
            .bind(full_name)
            .fetch_one(pool)
            .await)
        .expect("insert an outbox event")
    }

    pub async fn signup(&self, host: &str, email: &str, name: Option<&str>) -> i64 {
        self.event(Some(host), "signup", Some(email), name).await
    }

    /// A change of `host`'s email or name, as the host writes it.
    pub async fn change(&self, host: &str, email: &str, name: Option<&str>) -> i64 {
        self.event(Some(host), "profile_change", Some(email), name)
            .await
    }

    /// The closure of `host`'s account, as the host writes it.
    pub async fn closure(&self, host: &str) -> i64 {
        self.event(Some(host), "account_closure", None, None).await
    }

    pub async fn pending(&self) -> i64 {
        self.scalar("SELECT count(*) FROM user_sync.events WHERE state = 'pending'")
            .await
    }

    pub async fn event_state(&self, id: i64) -> (String, Option<String>) {
        let sql = sqlx::AssertSqlSafe(
            self.sql("SELECT state, reason FROM user_sync.events WHERE id = $1"),
        );
        on_pool!(&self.db_pool, |pool| sqlx::query_as(sql)
            .bind(id)
            .fetch_one(pool)
            .await)
        .expect("read an event")
    }

    /// Makes the sandbox answer every call with a server error (`true`),
    /// or none (`false`).
    pub fn fail_every_call(&self, fail: bool) {
        self.sandbox.update_faults(user_sync_sandbox::FaultUpdate {
            fail_rate: Some(if fail { 1.0 } else { 0.0 }),
            ..user_sync_sandbox::FaultUpdate::default()
        });
    }

    /// Once a pause has had its second to take every process: writes
    /// `signups` signups (`u0`, `u1`, ...) and then `then` (one more event),
    /// waits, and checks that no API call was made, that every event waits
    /// and that none used an attempt. Returns the signups' ids.
    pub async fn held_while_paused(
        &self,
        signups: usize,
        then: impl std::future::Future<Output = i64>,
    ) -> Vec<i64> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let requests = self.sandbox.stats().total_requests;
        let mut events = Vec::new();
        for i in 0..signups {
            events.push(
                self.signup(&format!("u{i}"), &format!("u{i}@example.com"), None)
                    .await,
            );
        }
        then.await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            self.sandbox.stats().total_requests,
            requests,
            "no API call while paused"
        );
        let waiting = i64::try_from(signups).expect("a count") + 1;
        assert_eq!(
            self.pending().await,
            waiting,
            "every event waits, none failed"
        );
        let attempts = self
            .scalar("SELECT CAST(coalesce(sum(attempts), 0) AS BIGINT) FROM user_sync.events")
            .await;
        assert_eq!(attempts, 0, "a pause uses no attempt");
        events
    }

    /// Waits until no event is pending (or panics after `limit`).
    pub async fn settle(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let pending = self.pending().await;
            if pending == 0 {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "{pending} events still pending after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Embedded user id stored for `host`, if synced.
    pub async fn embedded_id(&self, host: &str) -> Option<String> {
        let sql = sqlx::AssertSqlSafe(self.sql(
            "SELECT embedded_user_id FROM user_sync.users WHERE host_user_id = $1 AND state = 'synced'",
        ));
        on_pool!(&self.db_pool, |pool| sqlx::query_scalar(sql)
            .bind(host)
            .fetch_optional(pool)
            .await)
        .expect("read users")
        .flatten()
    }

    pub async fn open_conflicts(
        &self,
    ) -> Vec<(String, String, String, Option<String>, Option<String>)> {
        self.rows(
            "SELECT host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id
             FROM user_sync.conflicts WHERE status = 'open' ORDER BY id",
        )
        .await
    }

    /// Everything the queue holds, for leak checks: the Redis namespace, or
    /// the jobs (payloads and results) of the SQLite queue.
    pub async fn queue_dump(&self) -> String {
        match &self.db_pool {
            Database::Postgres(_) => self.redis_dump().await,
            Database::Sqlite(pool) => {
                let rows: Vec<(Option<String>, Option<String>)> =
                    sqlx::query_as("SELECT CAST(job AS TEXT), last_result FROM Jobs ORDER BY id")
                        .fetch_all(pool)
                        .await
                        .expect("read the queue's jobs");
                rows.into_iter()
                    .flat_map(|(job, result)| [job, result])
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    }

    pub async fn finish(self) {
        self.flush_namespace().await;
        self.db_pool.close().await;
        self.sandbox.shutdown().await;
        self.db.drop_db().await;
    }
}

/// A sandbox on a free local port, accepting the API key `key`.
pub async fn sandbox_accepting(key: &str, options: SandboxOptions) -> Sandbox {
    Sandbox::start(
        "127.0.0.1:0".parse().expect("address"),
        SandboxOptions {
            api_key: key.into(),
            ..options
        },
    )
    .await
    .expect("sandbox starts")
}

/// The sandbox's defaults, but every answer to a change is lost after the
/// change was applied.
pub fn answers_lost() -> SandboxOptions {
    SandboxOptions {
        drop_rate: 1.0,
        ..SandboxOptions::default()
    }
}

/// The sandbox's defaults, but every API request is answered after
/// `millis` milliseconds.
pub fn latency(millis: u64) -> SandboxOptions {
    SandboxOptions {
        latency: Duration::from_millis(millis),
        ..SandboxOptions::default()
    }
}

/// The sandbox's defaults, but it answers `429` beyond `per_second`
/// requests a second, with a `Retry-After` header or without.
pub fn rate_limited(per_second: u32, retry_after: bool) -> SandboxOptions {
    SandboxOptions {
        rate_limit: Some(per_second),
        retry_after,
        ..SandboxOptions::default()
    }
}

/// A client of `sandbox` sending the API key `key`, with the default
/// request timeout or `timeout`.
pub fn client_of(sandbox: &Sandbox, key: &str, timeout: Option<Duration>) -> EmbeddedClient {
    client_speaking(sandbox, key, ApiVersion::default(), timeout)
}

/// [`client_of`], speaking API version `version`.
pub fn client_speaking(
    sandbox: &Sandbox,
    key: &str,
    version: ApiVersion,
    timeout: Option<Duration>,
) -> EmbeddedClient {
    let mut settings = EmbeddedSettings::local(sandbox.base_url(), SecretString::from(key));
    settings.api_version = version;
    if let Some(timeout) = timeout {
        settings.timeout = timeout;
    }
    EmbeddedClient::new(&settings).expect("client")
}

/// A user to create, from an email and a name as a host holds them.
pub fn new_user(email: &str, name: Option<&str>) -> NewUser {
    NewUser {
        username: Username::from_email(email).expect("email"),
        full_name: FullName::parse_optional(name).expect("name"),
    }
}

/// The `host_user_id` of each row of a JSON list of events (the CLI's
/// `--format json`, the console's API), in the order listed.
pub fn host_user_ids(rows: &serde_json::Value) -> Vec<&str> {
    rows.as_array()
        .expect("an array")
        .iter()
        .filter_map(|r| r["host_user_id"].as_str())
        .collect()
}

/// Runs `write`, which commits outbox events, while holding the
/// PostgreSQL dispatch lock, then moves the dispatcher past them: they
/// count as dispatched and no job carries them, as if the queue had lost
/// their push. Meant for a worker at rest (events committed and not yet
/// dispatched by then count as dispatched too).
pub async fn dispatched_without_jobs<T>(pool: &PgPool, write: impl Future<Output = T>) -> T {
    let mut hold = pool.begin().await.expect("a transaction");
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('user_sync.dispatch'), 0)")
        .execute(&mut *hold)
        .await
        .expect("hold the dispatch lock");
    let written = write.await;
    // A statement of its own: its snapshot sees what `write` committed.
    sqlx::query(
        "UPDATE user_sync.dispatcher SET snapshot = pg_current_snapshot(), draining = NULL,
             after_txid = NULL, after_id = NULL",
    )
    .execute(&mut *hold)
    .await
    .expect("move the dispatcher on");
    hold.commit().await.expect("commit");
    written
}

/// Polls `condition` every 100 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Logs of the code under test, at RUST_LOG's level (warnings by default),
/// captured per test.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

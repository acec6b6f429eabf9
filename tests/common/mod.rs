//! What the integration tests share: a PostgreSQL database and a Redis
//! namespace of their own, a sandbox, settings pointing at all three, and
//! ways to write outbox events and wait for the pipeline.

#![allow(dead_code)]

pub mod process;
pub mod services;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};
use user_sync::config::Settings;
use user_sync::embedded::sandbox::{Sandbox, SandboxOptions};

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

/// A database of one test, dropped when the test ends well.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server's administrative database, to drop this one from.
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
            admin: admin.to_owned(),
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    pub async fn drop_db(self) {
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
    pub db: TestDb,
    pub pool: PgPool,
    pub redis_url: String,
    pub namespace: String,
    pub sandbox: Sandbox,
}

impl Env {
    /// A migrated database, a fresh namespace and a sandbox with `options`.
    pub async fn start(options: SandboxOptions) -> Self {
        Self::start_on(&admin_url(), &redis_url(), options).await
    }

    /// The same on the PostgreSQL server of `admin` and the Redis at `redis`.
    pub async fn start_on(admin: &str, redis: &str, options: SandboxOptions) -> Self {
        init_logs();
        let db = TestDb::create_on(admin).await;
        let pool = db.pool().await;
        user_sync::store::migrate::run(&pool)
            .await
            .expect("migrations run");
        let sandbox = Sandbox::start(
            "127.0.0.1:0".parse().expect("address"),
            SandboxOptions {
                api_key: KEY.into(),
                ..options
            },
        )
        .await
        .expect("sandbox starts");
        Self {
            db,
            pool,
            redis_url: redis.to_owned(),
            namespace: unique("test").replace('_', "-"),
            sandbox,
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

    /// Writes one outbox event the way a host app does; returns its id.
    pub async fn event(
        &self,
        host_user_id: Option<&str>,
        kind: &str,
        email: Option<&str>,
        full_name: Option<&str>,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(host_user_id)
        .bind(kind)
        .bind(email)
        .bind(full_name)
        .fetch_one(&self.pool)
        .await
        .expect("insert an outbox event")
    }

    pub async fn signup(&self, host: &str, email: &str, name: Option<&str>) -> i64 {
        self.event(Some(host), "signup", Some(email), name).await
    }

    pub async fn pending(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM user_sync.events WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await
            .expect("count pending events")
    }

    pub async fn event_state(&self, id: i64) -> (String, Option<String>) {
        sqlx::query_as("SELECT state, reason FROM user_sync.events WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("read an event")
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
        sqlx::query_scalar(
            "SELECT embedded_user_id FROM user_sync.users WHERE host_user_id = $1 AND state = 'synced'",
        )
        .bind(host)
        .fetch_optional(&self.pool)
        .await
        .expect("read users")
        .flatten()
    }

    pub async fn open_conflicts(
        &self,
    ) -> Vec<(String, String, String, Option<String>, Option<String>)> {
        sqlx::query_as(
            "SELECT host_user_id, username, reason, holder_host_user_id, holder_embedded_user_id
             FROM user_sync.conflicts WHERE status = 'open' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .expect("read conflicts")
    }

    /// A connection to the tests' Redis and the keys of this test's namespace.
    async fn namespace_keys(&self) -> (redis::aio::MultiplexedConnection, Vec<String>) {
        self.keys(&format!("{}*", self.namespace)).await
    }

    /// A connection to the tests' Redis and the keys matching `pattern`.
    async fn keys(&self, pattern: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis is reachable");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("list keys");
        (conn, keys)
    }

    /// Removes every key of this test's namespace, as a flushed Redis would.
    pub async fn flush_namespace(&self) {
        let (mut conn, keys) = self.namespace_keys().await;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut conn)
                .await
                .expect("delete keys");
        }
    }

    /// Every value stored under this test's namespace, for leak checks.
    pub async fn redis_dump(&self) -> String {
        self.redis_dump_matching(&format!("{}*", self.namespace))
            .await
    }

    /// Every key matching `pattern` and its value, one key a line.
    pub async fn redis_dump_matching(&self, pattern: &str) -> String {
        let (mut conn, keys) = self.keys(pattern).await;
        let mut out = String::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("type");
            let value: redis::Value = match kind.as_str() {
                "hash" => redis::cmd("HGETALL").arg(&key).query_async(&mut conn).await,
                "list" => {
                    redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
                "set" => {
                    redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                }
                "zset" => {
                    redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await
                }
                _ => redis::cmd("GET").arg(&key).query_async(&mut conn).await,
            }
            .expect("read a key");
            out.push_str(&key);
            flatten(&value, &mut out);
            out.push('\n');
        }
        out
    }

    pub async fn finish(self) {
        self.flush_namespace().await;
        self.pool.close().await;
        self.sandbox.shutdown().await;
        self.db.drop_db().await;
    }
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

fn flatten(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => {
            out.push(' ');
            out.push_str(&String::from_utf8_lossy(bytes));
        }
        redis::Value::SimpleString(text) => {
            out.push(' ');
            out.push_str(text);
        }
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().for_each(|item| flatten(item, out));
        }
        redis::Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        other => out.push_str(&format!(" {other:?}")),
    }
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

//! The `user-sync` binary as an operator runs it: `migrate`, `run`, `status`
//! and `conflicts` as real processes with explicit environments, the ops
//! endpoints, a SIGKILLed worker, and what the logs may never say.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::process::{Proc, Running, process_vars, run_once};
use common::{Backend, Env, KEY, TestDb, eventually};
use user_sync::storage::Database;
use user_sync_sandbox::{FaultUpdate, SandboxOptions};

const SETTLE: Duration = Duration::from_secs(30);

fn http() -> reqwest::Client {
    // reqwest is built without a bundled crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

async fn get(http: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

// ---------------------------------------------------------------------------
// migrate
// ---------------------------------------------------------------------------

/// The host app's own sqlx migrations: one, creating `public.accounts`.
async fn host_migrator(dir: &Path) -> sqlx::migrate::Migrator {
    std::fs::write(
        dir.join("20240101000000_accounts.sql"),
        "CREATE TABLE public.accounts (id bigserial PRIMARY KEY, email text NOT NULL);\n",
    )
    .expect("write the host migration");
    sqlx::migrate::Migrator::new(dir)
        .await
        .expect("the host migrator loads")
}

fn applied_count(stdout: &str) -> usize {
    let rest = stdout
        .split("migrations applied: ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected migrate output: {stdout}"));
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected migrate output: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_leaves_the_host_migrations_alone() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let host = host_migrator(dir.path()).await;
    host.run(&pool).await.expect("the host's migrations run");

    let vars = HashMap::from([("DATABASE_URL".to_owned(), db.url.clone())]);
    let first = run_once(&vars, &["migrate"]).await;
    assert!(first.status.success(), "first migrate: {first}");
    let applied = applied_count(&first.stdout);
    assert!(applied > 0, "the first run applies the migrations: {first}");
    let second = run_once(&vars, &["migrate"]).await;
    assert!(second.status.success(), "second migrate: {second}");
    assert_eq!(applied_count(&second.stdout), 0, "second migrate: {second}");

    // The host's bookkeeping holds its one migration, nothing of ours.
    let host_rows: Vec<i64> = sqlx::query_scalar("SELECT version FROM public._sqlx_migrations")
        .fetch_all(&pool)
        .await
        .expect("read the host's migrations");
    assert_eq!(host_rows, vec![20240101000000]);
    host.run(&pool)
        .await
        .expect("the host's migrator still runs (no migration it does not know)");
    // Ours are apart, and complete.
    let ours = count(&pool, "SELECT count(*) FROM user_sync._sqlx_migrations").await;
    assert_eq!(usize::try_from(ours).expect("a count"), applied);
    Database::Postgres(pool.clone())
        .check_current()
        .await
        .expect("the schema is current");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM public.accounts").await,
        0
    );

    pool.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrate_runs_wait_for_each_other() {
    let db = TestDb::create().await;
    let vars = HashMap::from([("DATABASE_URL".to_owned(), db.url.clone())]);
    let (a, b) = tokio::join!(run_once(&vars, &["migrate"]), run_once(&vars, &["migrate"]));
    assert!(a.status.success(), "first migrate: {a}");
    assert!(b.status.success(), "second migrate: {b}");
    // Each migration ran once and completed, and the two reports add up to
    // what was applied: each run counts under the lock.
    let pool = db.pool().await;
    let (rows, versions, all_ok): (i64, i64, bool) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT version), bool_and(success)
         FROM user_sync._sqlx_migrations",
    )
    .fetch_one(&pool)
    .await
    .expect("read our migrations");
    assert!(
        rows > 0 && all_ok,
        "{rows} migrations, all successful: {all_ok}"
    );
    assert_eq!(rows, versions, "no migration recorded twice");
    assert_eq!(
        (applied_count(&a.stdout) + applied_count(&b.stdout)) as i64,
        rows,
        "the runs report {a} and {b}"
    );
    Database::Postgres(pool.clone())
        .check_current()
        .await
        .expect("the schema is current");
    pool.close().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------

/// `user-sync run` with one thing wrong in an otherwise working environment.
struct ConfigCase {
    case: &'static str,
    remove: Option<&'static str>,
    add: Option<(&'static str, &'static str)>,
    expected: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_are_one_line_naming_the_key() {
    let env = Env::start(SandboxOptions::default()).await;
    const SECRET: &str = "cli-test-secret-3f9b1c";
    let mut base = env.vars();
    base.insert("EMBEDDED_API_KEY".into(), SECRET.into());
    // The level operators run with, so any early log line would show.
    base.remove("USER_SYNC__LOG__LEVEL");

    let cases = [
        ConfigCase {
            case: "no API key",
            remove: Some("EMBEDDED_API_KEY"),
            add: None,
            expected: "embedded.api_key is empty: set EMBEDDED_API_KEY",
        },
        ConfigCase {
            case: "no database",
            remove: Some("DATABASE_URL"),
            add: None,
            expected: "database.url",
        },
        ConfigCase {
            case: "a concurrency that is no number",
            remove: None,
            add: Some(("USER_SYNC__WORKER__CONCURRENCY", "abc")),
            expected: "worker.concurrency",
        },
        ConfigCase {
            case: "an environment file that does not exist",
            remove: None,
            add: Some(("USER_SYNC_ENV", "nope")),
            expected: "USER_SYNC_ENV",
        },
    ];
    for ConfigCase {
        case,
        remove,
        add,
        expected,
    } in cases
    {
        let mut vars = base.clone();
        if let Some(key) = remove {
            vars.remove(key);
        }
        if let Some((key, value)) = add {
            vars.insert(key.into(), value.into());
        }
        let out = run_once(&vars, &["run"]).await;
        assert_eq!(out.status.code(), Some(2), "{case}: {out}");
        assert_eq!(out.stderr.lines().count(), 1, "{case}: one line: {out}");
        assert!(out.stderr.starts_with("error: "), "{case}: {out}");
        assert!(
            out.stderr.contains(expected),
            "{case}: names {expected:?}: {out}"
        );
        assert!(out.stdout.is_empty(), "{case}: {out}");
        for secret in [SECRET, KEY] {
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "{case}: the API key is printed: {out}"
            );
        }
    }
    // Nothing was dispatched or started anywhere.
    assert_eq!(env.sandbox.stats().total_requests, 0);
    env.finish().await;
}

on_each_backend!(
    commands_on_a_database_never_migrated_say_to_migrate,
    status_and_conflicts_report_what_the_pipeline_did,
    health_readiness_and_metrics,
    logs_never_contain_personal_data,
);

async fn commands_on_a_database_never_migrated_say_to_migrate(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let bare = match backend {
        Backend::Postgres => TestDb::create().await,
        Backend::Sqlite => TestDb::create_sqlite(),
    };
    let mut vars = env.vars();
    vars.insert("DATABASE_URL".into(), bare.url.clone());
    for command in [
        &["run"][..],
        &["status"],
        &["status", "--json"],
        &["conflicts"],
        &["webhooks"],
    ] {
        let out = run_once(&vars, command).await;
        assert!(!out.status.success(), "{command:?}: {out}");
        assert!(
            out.stderr.contains("run `user-sync migrate`"),
            "{command:?}: {out}"
        );
        assert!(
            !out.stderr.contains("relation"),
            "{command:?}: a raw SQL error: {out}"
        );
        assert!(
            !out.stderr.contains("no such table"),
            "{command:?}: a raw SQL error: {out}"
        );
        assert!(!out.stderr.contains(KEY), "{command:?}: {out}");
    }
    bare.drop_db().await;
    env.finish().await;
}

/// Behind PgBouncer in transaction mode the per-user locks and LISTEN
/// would not hold: `run` refuses at start, saying what to configure; in
/// session mode it runs. Needs `pgbouncer` (installed by `.ci/run`); without
/// it the test says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_pooler_in_transaction_mode() {
    if std::process::Command::new("pgbouncer")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("pgbouncer is not installed: skipping (see .ci/run)");
        return;
    }
    let env = Env::start(SandboxOptions::default()).await;
    for (mode, refused) in [
        ("transaction", true),
        ("statement", true),
        ("session", false),
    ] {
        let bouncer = common::services::PgBouncer::start(mode).await;
        let mut vars = if refused {
            env.vars()
        } else {
            process_vars(&env)
        };
        vars.insert("DATABASE_URL".into(), bouncer.url_of(&env.db.name));
        if refused {
            let out = run_once(&vars, &["run"]).await;
            assert!(!out.status.success(), "{mode}: {out}");
            assert!(
                out.stderr.contains("connection pooler") && out.stderr.contains("session mode"),
                "{mode}: {out}"
            );
            assert_eq!(
                out.stderr.trim().lines().count(),
                1,
                "{mode}: one line: {out}"
            );
        } else {
            let mut proc = Proc::spawn(&vars, &["run"]);
            proc.ready().await;
            let (status, log) = proc.terminate(Duration::from_secs(20)).await;
            assert!(status.success(), "{mode}: {status}\n{log}");
        }
    }
    env.finish().await;
}

// ---------------------------------------------------------------------------
// status and conflicts
// ---------------------------------------------------------------------------

async fn status_and_conflicts_report_what_the_pipeline_did(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let holder = env
        .sandbox
        .insert_user("taken@example.com", Some("Someone Else"));
    env.signup("host-ok", "ok@example.com", Some("Okay User"))
        .await;
    let taken = env.signup("host-taken", "Taken@Example.com", None).await;
    env.event(Some("host-bad"), "upgrade", Some("bad@example.com"), None)
        .await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let vars = env.vars();

    let out = run_once(&vars, &["status", "--json"]).await;
    assert!(out.status.success(), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("status is JSON");
    assert_eq!(status["synced_users"], 1, "{out}");
    assert_eq!(status["open_conflicts"], 1, "{out}");
    assert_eq!(status["invalid_events"], 1, "{out}");
    assert_eq!(status["pending_events"], 0, "{out}");
    assert_eq!(status["failed_events"], 0, "{out}");
    assert_eq!(status["conflict_events"], 1, "{out}");

    let out = run_once(&vars, &["status"]).await;
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("synced users"), "{out}");

    let out = run_once(&vars, &["conflicts", "--format", "csv"]).await;
    assert!(out.status.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {out}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(header.len(), row.len(), "{out}");
    let field = |name: &str| {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}: {out}"));
        row[i]
    };
    assert_eq!(field("host_user_id"), "host-taken");
    assert_eq!(field("username"), "taken@example.com");
    assert_eq!(field("reason"), "taken_in_embedded");
    assert_eq!(field("holder_embedded_user_id"), holder);
    assert_eq!(field("event_id"), taken.to_string());

    let out = run_once(&vars, &["conflicts", "--format", "json"]).await;
    assert!(out.status.success(), "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("conflicts JSON");
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["host_user_id"], "host-taken");
    assert_eq!(rows[0]["username"], "taken@example.com");
    assert_eq!(rows[0]["reason"], "taken_in_embedded");
    assert_eq!(rows[0]["holder_embedded_user_id"], holder.as_str());
    assert_eq!(rows[0]["holder_host_user_id"], serde_json::Value::Null);

    let out = run_once(&vars, &["conflicts", "--format", "table"]).await;
    assert!(out.status.success(), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {out}");
    for expected in [
        "host-taken",
        "taken@example.com",
        "taken_in_embedded",
        &holder,
    ] {
        assert!(lines[1].contains(expected), "{expected}: {out}");
    }

    env.finish().await;
}

// ---------------------------------------------------------------------------
// A killed worker
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_nothing_and_duplicates_nothing() {
    let env = Env::start(common::latency(300)).await;
    let vars = process_vars(&env);
    let mut victim = Proc::spawn(&vars, &["run"]);
    let mut survivor = Proc::spawn(&vars, &["run"]);
    victim.ready().await;
    survivor.ready().await;

    kill_mid_work(&env, victim, 0..40).await;
    sign_up(&env, 40..60).await;
    let mut replacement = Proc::spawn(&vars, &["run"]);
    replacement.ready().await;
    env.settle(Duration::from_secs(60)).await;

    let stats = env.sandbox.stats();
    let users = env.sandbox.users();
    assert_eq!(users.len(), 60, "every host user has an Embedded user");
    assert_eq!(stats.creates, 60, "no user was created twice");
    assert_eq!(stats.duplicate_attempts, 0);
    assert!(
        env.open_conflicts().await.is_empty(),
        "{:?}",
        env.open_conflicts().await
    );
    assert_eq!(
        count(
            env.pg(),
            "SELECT count(*) FROM user_sync.events WHERE state <> 'applied'"
        )
        .await,
        0,
        "every event applied (none failed, invalid or in conflict)"
    );
    assert_eq!(
        count(
            env.pg(),
            "SELECT count(DISTINCT embedded_user_id) FROM user_sync.users WHERE state = 'synced'"
        )
        .await,
        60,
        "each host user maps to its own Embedded user"
    );

    for proc in [survivor, replacement] {
        let (status, log) = proc.terminate(Duration::from_secs(10)).await;
        assert!(
            status.success(),
            "SIGTERM ends the worker cleanly: {status}\n{log}"
        );
    }
    env.finish().await;
}

/// Signs up the host users `k{i}` of `users`.
async fn sign_up(env: &Env, users: std::ops::Range<usize>) {
    for i in users {
        env.signup(&format!("k{i}"), &format!("kill{i}@example.com"), None)
            .await;
    }
}

/// Signs up `users`, then kills `victim` once their creates are under way:
/// the kill cuts work short (jobs in flight or queued for the victim).
async fn kill_mid_work(env: &Env, victim: Proc, users: std::ops::Range<usize>) {
    sign_up(env, users).await;
    eventually(SETTLE, "creates reach the sandbox", || async {
        env.sandbox.stats().creates > 5
    })
    .await;
    victim.kill().await;
    assert!(
        env.pending().await > 0,
        "everything finished before the kill"
    );
}

/// On SQLite one process works on a file (its per-user locks are in the
/// process): a second refuses to start, and a killed one is replaced
/// without losing or duplicating anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_one_process_per_file_and_a_killed_one_is_replaced() {
    let env = Env::start_on(Backend::Sqlite, common::latency(300)).await;
    let vars = process_vars(&env);
    let mut victim = Proc::spawn(&vars, &["run"]);
    victim.ready().await;
    let second = run_once(&vars, &["run"]).await;
    assert!(!second.status.success(), "{second}");
    assert!(
        second.stderr.contains("one process per database file"),
        "{second}"
    );
    let mut backfill_vars = vars.clone();
    backfill_vars.insert("USER_SYNC__SOURCE__TABLE".into(), "accounts".into());
    let backfill = run_once(&backfill_vars, &["backfill", "--no-progress"]).await;
    assert!(!backfill.status.success(), "{backfill}");
    assert!(
        backfill.stderr.contains("one process per database file"),
        "a backfill beside run on one SQLite file: {backfill}"
    );

    kill_mid_work(&env, victim, 0..30).await;
    // The lock died with the process: a replacement starts.
    let mut replacement = Proc::spawn(&vars, &["run"]);
    replacement.ready().await;
    env.settle(Duration::from_secs(60)).await;

    let stats = env.sandbox.stats();
    assert_eq!(env.sandbox.users().len(), 30);
    assert_eq!(stats.creates, 30, "no user was created twice");
    assert_eq!(stats.duplicate_attempts, 0);
    assert!(env.open_conflicts().await.is_empty());
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.events WHERE state <> 'applied'")
            .await,
        0
    );
    let (status, log) = replacement.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM ends the worker: {status}\n{log}");
    env.finish().await;
}

// ---------------------------------------------------------------------------
// Ops endpoints
// ---------------------------------------------------------------------------

async fn health_readiness_and_metrics(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    let addr = run.worker.ops_addr;
    let http = http();

    let (status, _) = get(&http, addr, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = get(&http, addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(
        ready,
        serde_json::json!({"database": true, "queue": true, "api_key": true, "api": true})
    );

    const EMAIL: &str = "metrics.person@example.com";
    const ROTATED: &str = "rotated-secret-7d2e";
    env.signup("m1", EMAIL, Some("Metrics Person")).await;
    env.settle(SETTLE).await;
    assert!(env.embedded_id("m1").await.is_some());
    let (status, metrics) = get(&http, addr, "/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("user_sync_events_total"), "{metrics}");
    assert!(
        metrics.contains("user_sync_api_request_duration_seconds"),
        "{metrics}"
    );

    // The key is refused: one call meets a 401 and readiness says so.
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(ROTATED.into()),
        ..FaultUpdate::default()
    });
    env.signup("m2", "metrics.second@example.com", None).await;
    eventually(
        Duration::from_secs(10),
        "readyz reports the refused key",
        || async {
            let (status, body) = get(&http, addr, "/readyz").await;
            status == 503
                && serde_json::from_str::<serde_json::Value>(&body).ok()
                    == Some(serde_json::json!({
                        "database": true, "queue": true, "api_key": false, "api": true
                    }))
        },
    )
    .await;
    let (_, metrics) = get(&http, addr, "/metrics").await;
    for secret in [EMAIL, "metrics.second", "Metrics Person", KEY, ROTATED] {
        assert!(!metrics.contains(secret), "/metrics shows {secret:?}");
    }

    // The key is accepted again: ready, and the waiting signup goes through.
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(KEY.into()),
        ..FaultUpdate::default()
    });
    eventually(Duration::from_secs(10), "readyz recovers", || async {
        get(&http, addr, "/readyz").await.0 == 200
    })
    .await;
    env.settle(SETTLE).await;
    assert!(env.embedded_id("m2").await.is_some());

    run.stop().await;
    env.finish().await;
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

async fn logs_never_contain_personal_data(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let mut vars = env.vars();
    vars.insert("USER_SYNC__LOG__LEVEL".into(), "debug".into());
    vars.insert("USER_SYNC__LOG__FORMAT".into(), "json".into());
    let mut proc = Proc::spawn(&vars, &["run"]);
    proc.ready().await;

    // Distinctive values, so that any trace of them in the logs is found.
    let holder_email = "Philippa.Holdsworth@pii-holder.example";
    let holder_name = "Philippa Holdsworth";
    env.sandbox.insert_user(holder_email, Some(holder_name));
    let personal = [
        (
            "pii-a",
            "Zebulon.Quartermaine@pii-check.example",
            "Zebulon Quartermaine",
        ),
        (
            "pii-b",
            "Ottoline.Fairweather@pii-check.example",
            "Ottoline Fairweather",
        ),
        ("pii-c", holder_email, "Cressida Vantongeren"),
        (
            "pii-d",
            "Wilhelmina Invalidsson at nowhere",
            "Wilhelmina Invalidsson",
        ),
    ];
    for (host, email, name) in personal {
        env.signup(host, email, Some(name)).await;
    }
    env.settle(SETTLE).await;
    let renamed_email = "Barnaby.Renamed@pii-check.example";
    let renamed_name = "Barnaby Renamed-Smythe";
    env.change("pii-a", renamed_email, Some(renamed_name)).await;
    env.closure("pii-b").await;
    env.settle(SETTLE).await;

    // The pipeline did what the logs are about.
    assert_eq!(env.open_conflicts().await.len(), 1, "one conflict");
    let users = env.sandbox.users();
    assert!(
        users
            .iter()
            .any(|u| u.username == renamed_email.to_lowercase()),
        "the profile change reached the API"
    );
    assert!(
        !users
            .iter()
            .any(|u| u.username == "ottoline.fairweather@pii-check.example"),
        "the closed user is deleted"
    );

    let (status, log) = proc.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.trim().is_empty(), "the worker logged nothing");
    let mut debug_lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        if value["level"] == "DEBUG" {
            debug_lines += 1;
        }
    }
    assert!(debug_lines > 0, "debug logging was on");

    let lowered = log.to_lowercase();
    let mut secrets: Vec<String> = vec![KEY.to_owned()];
    let mut add_person = |email: &str, name: &str| {
        secrets.push(email.to_owned());
        if let Some((local, _)) = email.split_once('@') {
            secrets.push(local.to_owned());
        }
        secrets.push(name.to_owned());
        secrets.extend(name.split_whitespace().map(str::to_owned));
    };
    add_person(holder_email, holder_name);
    for (_, email, name) in personal {
        add_person(email, name);
    }
    add_person(renamed_email, renamed_name);
    for secret in secrets {
        assert!(
            !lowered.contains(&secret.to_lowercase()),
            "the logs contain {secret:?}:\n{}",
            log.lines()
                .filter(|l| l.to_lowercase().contains(&secret.to_lowercase()))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    env.finish().await;
}

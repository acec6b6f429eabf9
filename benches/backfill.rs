//! Backfill benchmark: the release binary against a sandbox limited to 10
//! requests per second, on a host table of 100,000 users (set
//! `BACKFILL_BENCH_USERS` for another size).
//!
//! Measures, with a fresh database:
//! 1. a dry run before anything exists (scanning and planning alone);
//! 2. the batch backfill: wall time, API calls, peak RSS of the process;
//! 3. a dry run after it, with every user in the `GET /users` snapshot.
//!
//! Needs PostgreSQL (`USER_SYNC_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). Run:
//! `cargo bench --bench backfill`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use user_sync_sandbox::{Sandbox, SandboxOptions};

const KEY: &str = "bench-key";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: i64 = std::env::var("BACKFILL_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let admin = std::env::var("USER_SYNC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("user_sync_bench_{:08x}", rand::random::<u32>());
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let url = match admin.rfind('/') {
        Some(i) => format!("{}/{name}", &admin[..i]),
        None => anyhow::bail!("the admin URL has no database part"),
    };
    let result = bench(&url, users).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    result
}

async fn bench(url: &str, users: i64) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    user_sync::storage::Database::Postgres(pool.clone())
        .migrate()
        .await?;
    sqlx::query(
        "CREATE TABLE public.accounts (id bigint PRIMARY KEY, email text NOT NULL,
             name text, closed_at timestamptz)",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "INSERT INTO public.accounts
         SELECT g, 'user' || g || '@example.com', 'User ' || g, NULL
         FROM generate_series(1, $1) AS g",
    )
    .bind(users)
    .execute(&pool)
    .await?;
    sqlx::query("ANALYZE public.accounts")
        .execute(&pool)
        .await?;
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse()?,
        SandboxOptions {
            api_key: KEY.into(),
            rate_limit: Some(10),
            ..SandboxOptions::default()
        },
    )
    .await?;
    let mut vars: HashMap<&str, String> = HashMap::new();
    vars.insert("DATABASE_URL", url.to_owned());
    vars.insert("EMBEDDED_API_KEY", KEY.into());
    vars.insert(
        "USER_SYNC__EMBEDDED__BASE_URL",
        sandbox.base_url().to_string(),
    );
    vars.insert("USER_SYNC__EMBEDDED__TIMEOUT_MS", "30000".into());
    // Just under the sandbox's 10 per sliding second, one at a time.
    vars.insert("USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND", "9".into());
    vars.insert("USER_SYNC__RATE_LIMIT__BURST", "1".into());
    vars.insert("USER_SYNC__SOURCE__TABLE", "public.accounts".into());
    vars.insert("USER_SYNC__SOURCE__NAME_COLUMN", "name".into());
    vars.insert(
        "USER_SYNC__SOURCE__CLOSED_CONDITION",
        "closed_at IS NOT NULL".into(),
    );
    if let Ok(size) = std::env::var("BACKFILL_BENCH_PAGE_SIZE") {
        vars.insert("USER_SYNC__SOURCE__PAGE_SIZE", size);
    }
    vars.insert("USER_SYNC__LOG__LEVEL", "warn".into());

    println!("backfill benchmark: {users} host users, sandbox limited to 10 requests/s");
    let dry = run(&vars, &["--dry-run"]).await?;
    println!(
        "dry run (empty Embedded):   {:>7.2} s  {:>9.0} users/s  peak RSS {:>5.1} MB",
        dry.elapsed.as_secs_f64(),
        users as f64 / dry.elapsed.as_secs_f64(),
        dry.peak_rss_mb
    );
    let before = sandbox.stats().total_requests;
    let batch = run(&vars, &[]).await?;
    let calls = sandbox.stats().total_requests - before;
    let stats = sandbox.stats();
    println!(
        "batch backfill:             {:>7.2} s  {calls:>4} API calls ({} batches, {} lists, {} answered 429)  peak RSS {:>5.1} MB",
        batch.elapsed.as_secs_f64(),
        stats.route_total("POST /users/batch"),
        stats.route_total("GET /users"),
        stats.rate_limited,
        batch.peak_rss_mb
    );
    let synced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_sync.users WHERE state = 'synced'")
            .fetch_one(&pool)
            .await?;
    println!(
        "                            {synced} users synced, {} Embedded users, {} created",
        sandbox.users().len(),
        stats.creates
    );
    let again = run(&vars, &["--dry-run"]).await?;
    println!(
        "dry run (all in Embedded):  {:>7.2} s  {:>9.0} users/s  peak RSS {:>5.1} MB",
        again.elapsed.as_secs_f64(),
        users as f64 / again.elapsed.as_secs_f64(),
        again.peak_rss_mb
    );
    pool.close().await;
    sandbox.shutdown().await;
    Ok(())
}

struct Measured {
    elapsed: Duration,
    peak_rss_mb: f64,
}

/// Runs `user-sync backfill` and samples its peak resident set (VmHWM).
async fn run(vars: &HashMap<&str, String>, args: &[&str]) -> anyhow::Result<Measured> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_user-sync"))
        .arg("backfill")
        .arg("--no-progress")
        .args(args)
        .env_clear()
        .envs(vars)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let mut peak_kb = 0u64;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let elapsed = started.elapsed();
    // Exit status 1 is "something failed", which this data never causes.
    anyhow::ensure!(status.success(), "backfill exited with {status}");
    Ok(Measured {
        elapsed,
        peak_rss_mb: peak_kb as f64 / 1024.0,
    })
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

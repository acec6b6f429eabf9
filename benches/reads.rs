//! What operators' reads cost as history grows: `cargo bench --bench reads`.
//!
//! On PostgreSQL (and a SQLite file), with a fixed set of live rows, grows
//! the outbox to 0, 1,000,000 and 10,000,000 finished events (SQLite: 0 and
//! 1,000,000) and measures, at each size, the median of several runs of:
//!
//! - `status_cmd`: the `user-sync status` command, start to exit (the
//!   process's start and connection included: about what an operator
//!   waits);
//! - `status`: the counts behind it (`Reports::status`), in this process;
//! - `metrics`: one `/metrics` scrape of a running `user-sync run`;
//! - `overview`: the console's overview, `/api/v1/status` and
//!   `/api/v1/activity` fetched together as the page does.
//!
//! The live rows, the same at every size: 10,000 synced users, 1,000
//! pending events (the deployment is paused, so they stay pending), 100
//! each of failed, invalid and conflict events, 10 open conflicts, 10
//! pending closures and 1,000 events finished within the last hour. The
//! history added is applied and superseded events of 100,000 host users,
//! finished between six days and five hours ago (inside the default
//! retention: nothing is deleted during the bench), inserted with
//! `generate_series` and followed by `VACUUM ANALYZE`, as autovacuum
//! would leave the table.
//!
//! Then a retention pass over a million events finished a month ago
//! (SQLite: 100,000), while the host inserts an event every 10 ms: its
//! rate, and the host's inserts' latency meanwhile.
//!
//! `READS_BENCH_SIZES` (e.g. `0,1000000`) and `READS_BENCH_SQLITE_SIZES`
//! (empty: no SQLite run) change the sizes; `READS_BENCH_RUNS` (default 9)
//! the runs per figure; `READS_BENCH_RETENTION` the old events (0: no
//! retention pass).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, Env, process};
use user_sync::storage::Database;
use user_sync_sandbox::SandboxOptions;

const TOKEN: &str = "reads-bench-console-token";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg_sizes = sizes("READS_BENCH_SIZES", &[0, 1_000_000, 10_000_000]);
    let sqlite_sizes = sizes("READS_BENCH_SQLITE_SIZES", &[0, 1_000_000]);
    let runs: usize = std::env::var("READS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    println!(
        "reads benchmark: medians of {runs} runs; live rows fixed, history grown with finished events"
    );
    bench(Backend::Postgres, &pg_sizes, runs).await;
    if !sqlite_sizes.is_empty() {
        bench(Backend::Sqlite, &sqlite_sizes, runs).await;
    }
}

/// The sizes `var` lists, or `default` when it is not set.
fn sizes(var: &str, default: &[i64]) -> Vec<i64> {
    match std::env::var(var) {
        Ok(list) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

async fn bench(backend: Backend, sizes: &[i64], runs: usize) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    seed_live_rows(&env).await;
    let vars = worker_vars(&env);
    let mut worker = process::Proc::spawn(&vars, &["run"]);
    let ops = worker.ready().await;
    let client = reqwest::Client::new();
    let store = env.db_pool.clone().into_store();
    let name = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    let metrics_url = format!("http://{ops}/metrics");
    let status_url = format!("http://{ops}/api/v1/status");
    let activity_url = format!("http://{ops}/api/v1/activity");
    let mut history = 0;
    for &size in sizes {
        let started = Instant::now();
        grow_history(&env, history, size).await;
        let grown = started.elapsed();
        history = history.max(size);
        // A warm-up of each, then the measured runs.
        let status_cmd = median(runs.min(5), || status_command(&vars)).await;
        let status = median(runs, || async {
            let started = Instant::now();
            store.status().await.expect("status");
            started.elapsed()
        })
        .await;
        let metrics = median(runs, || get(&client, &metrics_url)).await;
        let overview = median(runs, || async {
            let started = Instant::now();
            tokio::join!(get(&client, &status_url), get(&client, &activity_url));
            started.elapsed()
        })
        .await;
        println!(
            "reads       backend={name} finished_events={size} status_cmd_ms={:.1} status_ms={:.1} metrics_ms={:.1} overview_ms={:.1} (history written in {:.0} s)",
            ms(status_cmd),
            ms(status),
            ms(metrics),
            ms(overview),
            grown.as_secs_f64()
        );
    }
    worker.kill().await;
    let old = match backend {
        Backend::Postgres => 1_000_000,
        Backend::Sqlite => 100_000,
    };
    let old = std::env::var("READS_BENCH_RETENTION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(old);
    if old > 0 {
        retention(&env, name, old).await;
    }
    env.finish().await;
}

/// A retention pass over `old` events finished a month ago (ten for each
/// of other host users, whose newest event each stays), while the host
/// inserts an event every 10 ms: how fast the pass deletes, and how long
/// the host's inserts took meanwhile.
async fn retention(env: &Env, name: &str, old: i64) {
    let month_ago = (chrono::Utc::now() - chrono::TimeDelta::days(30))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    // Finished a month ago, 64 a millisecond (a job's round ends 64 at once).
    let (with, table, rows) = match env.backend {
        Backend::Postgres => (
            String::new(),
            "user_sync.events",
            format!(
                "generate_series(1, {old}) g,
                 LATERAL (SELECT '{month_ago}'::timestamptz
                                 + (g / 64) * interval '1 millisecond' AS t) x"
            ),
        ),
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {old}) "
            ),
            "user_sync_events",
            format!(
                "(SELECT g, strftime('%Y-%m-%dT%H:%M:%fZ', '{month_ago}',
                                     printf('+%.3f seconds', (g / 64) / 1000.0)) AS t FROM s)"
            ),
        ),
    };
    // On PostgreSQL, where retention walks the outbox by id, they come
    // before the history by id as well, as rows written a month ago do:
    // below every id the host's inserts were given (`OVERRIDING SYSTEM
    // VALUE`, negative ids).
    let (id_column, overriding, id) = match env.backend {
        Backend::Postgres => ("id, ", "OVERRIDING SYSTEM VALUE ", "-g, "),
        Backend::Sqlite => ("", "", ""),
    };
    run_sql(
        env,
        &format!(
            "{with}INSERT INTO {table}
                 ({id_column}host_user_id, kind, email, state, occurred_at, finished_at)
             {overriding}SELECT {id}'o' || (g % {users}), 'signup', 'o@example.com', 'applied', t, t
             FROM {rows}",
            users = (old / 10).max(1)
        ),
    )
    .await;
    // The worker's passes set a floor above those rows: this one starts
    // from the oldest event, as the daily pass does.
    run_sql(
        env,
        &env.sql(&format!(
            "UPDATE user_sync.retention SET next_pass_at = '{month_ago}', full_pass_at = NULL"
        )),
    )
    .await;
    let store: std::sync::Arc<dyn user_sync::storage::Retention> = match &env.db_pool {
        Database::Postgres(pool) => {
            std::sync::Arc::new(user_sync::storage::PgStore::new(pool.clone()))
        }
        Database::Sqlite(pool) => {
            std::sync::Arc::new(user_sync::storage::SqliteStore::new(pool.clone()))
        }
    };
    let started = Instant::now();
    let pass = tokio::spawn(async move {
        user_sync::ops::run_pass(
            store.as_ref(),
            &user_sync::config::RetentionSettings::default(),
            "bench",
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
    });
    let insert = env.sql(
        "INSERT INTO user_sync.events (host_user_id, kind, email) VALUES ('host', 'signup', 'host@example.com')",
    );
    let mut waits = Vec::new();
    while !pass.is_finished() {
        let at = Instant::now();
        run_sql(env, &insert).await;
        waits.push(at.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let removed = match pass.await.expect("the pass ran").expect("the pass") {
        user_sync::ops::PassOutcome::Done(removed) => removed.events,
        other => panic!("the pass did not run to its end: {other:?}"),
    };
    waits.sort();
    let p99 = waits
        .get(waits.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "retention   backend={name} old_events={old} removed={removed} seconds={:.1} rows_per_s={:.0} host_inserts={} host_insert_p99_ms={:.1} host_insert_max_ms={:.1}",
        elapsed.as_secs_f64(),
        removed as f64 / elapsed.as_secs_f64(),
        waits.len(),
        ms(p99),
        ms(waits.last().copied().unwrap_or_default())
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `runs` runs of `measure`, after one run not counted.
async fn median<F, Fut>(runs: usize, mut measure: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Duration>,
{
    measure().await;
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        all.push(measure().await);
    }
    all.sort();
    all[all.len() / 2]
}

async fn get(client: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    let response = client
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the ops server answers");
    assert!(
        response.status().is_success(),
        "{url}: {}",
        response.status()
    );
    response.bytes().await.expect("a body");
    started.elapsed()
}

/// The live rows, the same at every size; the deployment paused, so that
/// the pending events stay pending.
async fn seed_live_rows(env: &Env) {
    let pg = env.backend == Backend::Postgres;
    let statements: &[&str] = if pg {
        &[
            "INSERT INTO user_sync.users (host_user_id, embedded_user_id, username, full_name, state)
             SELECT 'u' || g, lpad(to_hex(g), 24, '0'), 'u' || g || '@example.com', 'User ' || g,
                    'synced'
             FROM generate_series(1, 10000) g",
            "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
             SELECT 'p' || g, 'signup', 'p' || g || '@example.com', 'Pending ' || g
             FROM generate_series(1, 1000) g",
            // The finished live rows as a worker leaves them: of
            // transactions the sweeper walked past, their ends counted.
            "INSERT INTO user_sync.events
                 (host_user_id, kind, email, state, reason, dispatched_at, finished_at, attempts,
                  txid)
             SELECT 'x' || g, 'signup', 'x' || g || '@example.com',
                    (ARRAY['failed', 'invalid', 'conflict'])[g % 3 + 1], 'bench',
                    now() - interval '1 day', now() - interval '1 day', 1, '3'::xid8
             FROM generate_series(1, 300) g",
            "INSERT INTO user_sync.conflicts (host_user_id, username, reason, holder_host_user_id)
             SELECT 'x' || g, 'x' || g || '@example.com', 'taken_by_host_user', 'u' || g
             FROM generate_series(1, 10) g",
            "INSERT INTO user_sync.events (host_user_id, kind)
             SELECT 'c' || g, 'account_closure' FROM generate_series(1, 10) g",
            "INSERT INTO user_sync.events
                 (host_user_id, kind, email, state, dispatched_at, finished_at, occurred_at, txid)
             SELECT 'r' || g, 'signup', 'r' || g || '@example.com', 'applied',
                    now() - make_interval(secs => g * 3.6), now() - make_interval(secs => g * 3.6),
                    now() - make_interval(secs => g * 3.6), '3'::xid8
             FROM generate_series(1, 1000) g",
            "INSERT INTO user_sync.finished_counts (minute, state, events, compacted)
             SELECT date_trunc('minute', now() - make_interval(secs => g * 3.6)), 'applied',
                    count(*), true
             FROM generate_series(1, 1000) g GROUP BY 1",
            "UPDATE user_sync.pause SET paused_at = now(), paused_by = 'bench', reason = 'reads bench'",
        ]
    } else {
        &[
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10000)
             INSERT INTO user_sync_users (host_user_id, embedded_user_id, username, full_name, state)
             SELECT 'u' || n, printf('%024x', n), 'u' || n || '@example.com', 'User ' || n, 'synced'
             FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000)
             INSERT INTO user_sync_events (host_user_id, kind, email, full_name)
             SELECT 'p' || n, 'signup', 'p' || n || '@example.com', 'Pending ' || n FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 300)
             INSERT INTO user_sync_events
                 (host_user_id, kind, email, state, reason, dispatched_at, finished_at, attempts)
             SELECT 'x' || n, 'signup', 'x' || n || '@example.com',
                    CASE n % 3 WHEN 0 THEN 'failed' WHEN 1 THEN 'invalid' ELSE 'conflict' END,
                    'bench', strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day'),
                    strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day'), 1
             FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10)
             INSERT INTO user_sync_conflicts (host_user_id, username, reason, holder_host_user_id)
             SELECT 'x' || n, 'x' || n || '@example.com', 'taken_by_host_user', 'u' || n FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 10)
             INSERT INTO user_sync_events (host_user_id, kind)
             SELECT 'c' || n, 'account_closure' FROM g",
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000)
             INSERT INTO user_sync_events
                 (host_user_id, kind, email, state, dispatched_at, finished_at, occurred_at)
             SELECT 'r' || n, 'signup', 'r' || n || '@example.com', 'applied',
                    strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%d seconds', n * 36 / 10)),
                    strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%d seconds', n * 36 / 10)),
                    strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('-%d seconds', n * 36 / 10))
             FROM g",
            "UPDATE user_sync_pause SET paused_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                 paused_by = 'bench', reason = 'reads bench'",
        ]
    };
    for sql in statements {
        run_sql(env, sql).await;
    }
}

/// Adds finished events until the outbox holds `to` of them beyond the
/// live rows: applied and superseded events of 100,000 host users,
/// finished between six days and five hours ago, in a few statements.
async fn grow_history(env: &Env, from: i64, to: i64) {
    // SQLite has one writer: smaller statements keep the worker's waits short.
    let chunk: i64 = match env.backend {
        Backend::Postgres => 1_000_000,
        Backend::Sqlite => 100_000,
    };
    let mut at = from;
    while at < to {
        let end = (at + chunk).min(to);
        let (with, table, rows) = match env.backend {
            Backend::Postgres => (
                String::new(),
                "user_sync.events",
                format!(
                    "generate_series({}, {end}) g,
                     LATERAL (SELECT now() - interval '6 days'
                                     + (g % 5000000) * interval '100 milliseconds' AS t) x",
                    at + 1
                ),
            ),
            Backend::Sqlite => (
                format!(
                    "WITH RECURSIVE s(g) AS (SELECT {} UNION ALL SELECT g + 1 FROM s WHERE g < {end}) ",
                    at + 1
                ),
                "user_sync_events",
                "(SELECT g, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-6 days',
                                     printf('+%.1f seconds', (g % 5000000) / 10.0)) AS t
                  FROM s)"
                    .to_owned(),
            ),
        };
        // On PostgreSQL the history is of transactions long past, as a
        // worker leaves it: dispatched, ended and walked past by the
        // sweeper (`txid` older than any snapshot it kept).
        let (txid_column, txid) = match env.backend {
            Backend::Postgres => (", txid", ", '3'::xid8"),
            Backend::Sqlite => ("", ""),
        };
        let sql = format!(
            "{with}INSERT INTO {table}
                 (host_user_id, kind, email, full_name, state, occurred_at, available_at,
                  dispatched_at, finished_at{txid_column})
             SELECT 'h' || (g % 100000), CASE WHEN g % 4 = 0 THEN 'signup' ELSE 'profile_change' END,
                    'h' || (g % 100000) || '@example.com', 'History ' || g,
                    CASE WHEN g % 10 = 0 THEN 'superseded' ELSE 'applied' END,
                    t, t, t, t{txid}
             FROM {rows}"
        );
        run_sql(env, &sql).await;
        at = end;
    }
    let analyze = match env.backend {
        Backend::Postgres => "VACUUM (ANALYZE) user_sync.events",
        Backend::Sqlite => "ANALYZE",
    };
    run_sql(env, analyze).await;
}

async fn run_sql(env: &Env, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    let done = match &env.db_pool {
        Database::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        Database::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
    };
    done.expect("a bench statement");
}

/// The variables of the bench's processes: the tests' own, at the
/// defaults' pace, with the console on.
fn worker_vars(env: &Env) -> HashMap<String, String> {
    let mut vars = process::process_vars(env);
    for (key, value) in [
        ("USER_SYNC__DISPATCHER__POLL_INTERVAL_MS", "5000"),
        ("USER_SYNC__SWEEPER__INTERVAL_MS", "60000"),
        ("USER_SYNC__SWEEPER__REDISPATCH_AFTER_MS", "300000"),
        ("USER_SYNC_CONSOLE_TOKEN", TOKEN),
    ] {
        vars.insert(key.into(), value.into());
    }
    vars
}

/// `user-sync status`, start to exit.
async fn status_command(vars: &HashMap<String, String>) -> Duration {
    let started = Instant::now();
    let finished = process::run_once(vars, &["status"]).await;
    assert!(finished.status.success(), "user-sync status: {finished}");
    started.elapsed()
}

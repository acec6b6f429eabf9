//! Benchmarks of the continuous pipeline: `cargo bench --bench pipeline`.
//!
//! Starts a sandbox in this process and a real `user-sync run` process (the
//! bench-profile binary) on PostgreSQL and Redis from the machine, and prints
//! one line per scenario ending in `key=value` pairs:
//!
//! - `baseline`: a bare reqwest loop making the call the worker makes for a
//!   signup (the create), at the worker's concurrency, against the same
//!   sandbox: the ceiling of the HTTP side;
//! - `baseline2`: the same loop making two calls a signup (the username
//!   looked up, then created), as the worker did before
//!   `sync.lookup_before_create`, and still does with `always`: the
//!   baseline of earlier figures;
//! - `throughput`: signups committed to the outbox in one statement until
//!   every user is created and mapped, with the API calls per signup;
//! - `dbcost`: what the same run cost the PostgreSQL server, per signup:
//!   the CPU time of every server process (backends, the background
//!   writers, autovacuum, the children that exited during the run), the
//!   WAL bytes (`pg_current_wal_lsn()` before and after), its records and
//!   full-page images (`pg_stat_wal`), and how much of the WAL the host's
//!   own insert wrote. A checkpoint before the run makes the full-page
//!   images the same from run to run;
//! - `cpu`: the CPU time of every party to the same run, per signup: the
//!   worker process, this process (the sandbox, and the host's insert),
//!   Redis (when it runs on this machine) and the PostgreSQL server, against
//!   this process's per create in the `baseline` runs (the bare loop and the
//!   sandbox): on a machine whose cores are all busy, `ratio` is about the
//!   second over the sum of the first;
//! - `statement`: when the server preloads `pg_stat_statements`, the
//!   statements that took most of the run's execution time, per signup
//!   (time waiting for a core included: execution time, not CPU), with
//!   their calls and WAL records; without it, one line saying how to get
//!   them;
//! - `ratio`: `throughput` against the median of three `baseline` runs, two
//!   before the pipeline's run and one after it; `ratio2` the same against
//!   `baseline2`;
//! - `latency`: 50 signups/s, each committed alone; from its commit to the
//!   create arriving at the sandbox;
//! - `idle`: outbox reads per second and RSS of an idle worker.
//!
//! `BENCH_EVENTS` (default 30,000) sets the size of the throughput runs:
//! long enough that the host's insert of the burst (about 0.1 s on a fresh
//! table) and the pipeline filling up are a small part of the run, as
//! they are of any sustained load;
//! `BENCH_THROUGHPUT_ONLY=1` stops after the `ratio` line;
//! `USER_SYNC__…` variables set for the bench reach the worker (after the
//! bench's own), to try other settings.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Env, KEY};
use tokio::process::{Child, Command};
use user_sync_sandbox::SandboxOptions;

const CONCURRENCY: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; filters are not supported.
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    // reqwest is built without a bundled crypto provider; the crate uses ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let env = Env::start(SandboxOptions::default()).await;

    // The loop is short and the machine shared: the median of three runs,
    // two before the pipeline's run and one after it, so that the machine
    // slowing down or speeding up during the bench moves both sides.
    let (mut runs, mut runs2, mut baseline_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..2 {
        let (rate, cpu) = bare_loop(&env, (2 * run) * events, events, false).await;
        runs.push(rate);
        baseline_cpu.push(cpu);
        runs2.push(
            bare_loop(&env, (2 * run + 1) * events, events, true)
                .await
                .0,
        );
    }
    println!(
        "baseline    bare reqwest create, concurrency {CONCURRENCY}, before the pipeline: events={events} runs={:.0}/{:.0}",
        runs[0], runs[1]
    );
    println!(
        "baseline2   bare reqwest lookup + create, concurrency {CONCURRENCY}, before the pipeline: events={events} runs={:.0}/{:.0}",
        runs2[0], runs2[1]
    );

    let (mut worker, ops) = spawn_worker(&env).await;
    let (throughput, calls, cost) = pipeline_throughput(&env, events, &worker).await;
    println!(
        "throughput  outbox commit -> created and mapped: events={events} calls_per_signup={calls:.2} rate={throughput:.0}"
    );
    println!(
        "dbcost      PostgreSQL server per signup, whole run: events={events} cpu_us={:.1} wal_bytes={:.0} wal_records={:.2} wal_fpi={:.3} host_insert_wal_bytes={:.0} wal={}..{}",
        cost.cpu_us,
        cost.wal_bytes,
        cost.wal_records,
        cost.wal_fpi,
        cost.host_insert_wal_bytes,
        cost.wal_range.0,
        cost.wal_range.1
    );
    match &cost.statements {
        Some(statements) => {
            for st in statements {
                println!(
                    "statement   per signup: exec_us={:.1} calls={} wal_records={:.2} query={:?}",
                    st.exec_us / events as f64,
                    st.calls,
                    st.wal_records / events as f64,
                    st.query
                );
            }
        }
        None => println!(
            "statement   not counted: preload pg_stat_statements (shared_preload_libraries) to see each statement's share"
        ),
    }

    let (rate, cpu) = bare_loop(&env, 4 * events, events, false).await;
    runs.push(rate);
    baseline_cpu.push(cpu);
    runs2.push(bare_loop(&env, 5 * events, events, true).await.0);
    baseline_cpu.sort_by(f64::total_cmp);
    let parties = cost.worker_us + cost.bench_us + cost.redis_us.unwrap_or(0.0) + cost.cpu_us;
    println!(
        "cpu         per signup, whole run: worker_us={:.1} sandbox_and_bench_us={:.1} redis_us={} postgres_us={:.1} sum_us={parties:.1}; per baseline create (median of 3): bare_loop_and_sandbox_us={:.1} ratio={:.2}",
        cost.worker_us,
        cost.bench_us,
        cost.redis_us
            .map_or_else(|| "not-local".to_owned(), |us| format!("{us:.1}")),
        cost.cpu_us,
        baseline_cpu[1],
        baseline_cpu[1] / parties
    );
    for (name, base, runs) in [
        ("ratio ", "baseline", &mut runs),
        ("ratio2", "baseline2", &mut runs2),
    ] {
        let after = runs[2];
        runs.sort_by(f64::total_cmp);
        let baseline = runs[1];
        println!(
            "{name}      throughput / {base} (median of 2 runs before, 1 after = {after:.0}): rate={throughput:.0} baseline={baseline:.0} ratio={:.2}",
            throughput / baseline
        );
    }
    if std::env::var_os("BENCH_THROUGHPUT_ONLY").is_some() {
        let _ = worker.start_kill();
        let _ = worker.wait().await;
        env.finish().await;
        return;
    }

    let (p50, p99, max) = latency(&env, 50, Duration::from_secs(10)).await;
    println!(
        "latency     50 signups/s for 10 s, commit -> create received: p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1}"
    );

    let busy_rss = rss_kib(&worker, "VmHWM");
    let (reads_per_second, idle_rss) = idle(&env, &worker).await;
    println!(
        "idle        worker at rest for 20 s: outbox_reads_per_s={reads_per_second:.2} rss_mib={:.1} peak_rss_mib={:.1}",
        idle_rss / 1024.0,
        busy_rss / 1024.0
    );
    let _ = ops;
    let _ = worker.start_kill();
    let _ = worker.wait().await;
    env.finish().await;
}

/// Signs `count` users up with plain reqwest calls, `CONCURRENCY` at a
/// time: each created, after a lookup of its username (not found) when
/// `lookup`. Returns signups per second, and this process's CPU (the loop
/// and the sandbox) per signup, in microseconds.
async fn bare_loop(env: &Env, first: usize, count: usize, lookup: bool) -> (f64, f64) {
    let client = reqwest::Client::new();
    let ticks = own_ticks();
    let url = format!("{}users/", env.sandbox.base_url());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let client = client.clone();
        let url = url.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let username = format!("baseline{}@example.com", first + i);
                if lookup {
                    let found = client
                        .get(format!("{url}{username}"))
                        .bearer_auth(KEY)
                        .header("x-api-version", "2025-09")
                        .send()
                        .await
                        .expect("the sandbox answers");
                    assert_eq!(found.status(), reqwest::StatusCode::NOT_FOUND);
                    let _ = found.bytes().await;
                }
                let response = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("x-api-version", "2025-09")
                    .json(&serde_json::json!({
                        "username": username,
                        "fullName": "Baseline User",
                    }))
                    .send()
                    .await
                    .expect("the sandbox answers");
                assert!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a baseline task");
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    (rate, micros(own_ticks() - ticks) / count as f64)
}

async fn spawn_worker(env: &Env) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let ops = format!("127.0.0.1:{port}");
    let mut vars: HashMap<String, String> = env.vars();
    vars.insert("USER_SYNC__HTTP__BIND".into(), ops.clone());
    vars.insert(
        "USER_SYNC__WORKER__CONCURRENCY".into(),
        CONCURRENCY.to_string(),
    );
    vars.insert(
        "USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND".into(),
        "1000000".into(),
    );
    vars.insert("USER_SYNC__RATE_LIMIT__BURST".into(), "100000".into());
    vars.insert(
        "USER_SYNC__DISPATCHER__POLL_INTERVAL_MS".into(),
        "5000".into(),
    );
    vars.insert("USER_SYNC__SWEEPER__INTERVAL_MS".into(), "60000".into());
    vars.insert(
        "USER_SYNC__SWEEPER__REDISPATCH_AFTER_MS".into(),
        "300000".into(),
    );
    vars.insert(
        "USER_SYNC_CONFIG_DIR".into(),
        common::config_dir().display().to_string(),
    );
    vars.extend(std::env::vars().filter(|(key, _)| key.starts_with("USER_SYNC__")));
    let child = Command::new(env!("CARGO_BIN_EXE_user-sync"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(&vars)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("user-sync run starts");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("http://{ops}/readyz"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, ops)
}

async fn applied(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM user_sync.events WHERE state = 'applied'")
        .fetch_one(env.pg())
        .await
        .expect("count applied events")
}

/// Events not finished yet: read through the pending events' partial index,
/// so that waiting costs the database little beside the worker.
async fn pending(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM user_sync.events WHERE state = 'pending'")
        .fetch_one(env.pg())
        .await
        .expect("count pending events")
}

/// What the PostgreSQL server has spent so far: CPU ticks of all its
/// processes, the WAL position, and its WAL records and full-page images.
struct ServerSpent {
    ticks: u64,
    lsn: f64,
    /// The WAL position as PostgreSQL writes it, for `pg_waldump`.
    at: String,
    records: f64,
    fpi: f64,
}

/// Per signup: the server's CPU, its WAL and the host insert's share.
struct DbCost {
    cpu_us: f64,
    /// The CPU of the worker process, of this one, and of Redis if local.
    worker_us: f64,
    bench_us: f64,
    redis_us: Option<f64>,
    wal_bytes: f64,
    wal_records: f64,
    wal_fpi: f64,
    host_insert_wal_bytes: f64,
    /// The run's WAL, from and to, for `pg_waldump --start … --end …`.
    wal_range: (String, String),
    /// The run's costliest statements, if the server counts them.
    statements: Option<Vec<StatementCost>>,
}

/// One statement's share of a run, from `pg_stat_statements`.
struct StatementCost {
    calls: i64,
    exec_us: f64,
    wal_records: f64,
    query: String,
}

/// Whether the server counts statements (`pg_stat_statements` in
/// `shared_preload_libraries`); if so, the bench's database gets the view
/// and the counts start from zero.
async fn statements_reset(env: &Env) -> bool {
    let loaded: bool = sqlx::query_scalar(
        "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
    )
    .fetch_one(env.pg())
    .await
    .expect("shared_preload_libraries");
    if loaded {
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(env.pg())
            .await
            .expect("pg_stat_statements");
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(env.pg())
            .await
            .expect("pg_stat_statements_reset");
    }
    loaded
}

/// The bench database's eight statements that took the most execution
/// time since [`statements_reset`]: their text is the parameterised one,
/// with no value in it.
async fn statements_spent(env: &Env) -> Vec<StatementCost> {
    let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time * 1000, wal_records::float8,
                left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
         FROM pg_stat_statements
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT 8",
    )
    .fetch_all(env.pg())
    .await
    .expect("pg_stat_statements");
    rows.into_iter()
        .map(|(calls, exec_us, wal_records, query)| StatementCost {
            calls,
            exec_us,
            wal_records,
            query,
        })
        .collect()
}

async fn wal_lsn(env: &Env) -> f64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
        .fetch_one(env.pg())
        .await
        .expect("the WAL position")
}

async fn server_spent(env: &Env) -> ServerSpent {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(env.pg())
        .await
        .expect("a backend's pid");
    let (records, fpi): (f64, f64) =
        sqlx::query_as("SELECT wal_records::float8, wal_fpi::float8 FROM pg_stat_wal")
            .fetch_one(env.pg())
            .await
            .expect("pg_stat_wal");
    let at: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(env.pg())
        .await
        .expect("the WAL position");
    ServerSpent {
        ticks: server_ticks(pid as u32),
        lsn: wal_lsn(env).await,
        at,
        records,
        fpi,
    }
}

/// The fields of `/proc/<pid>/stat` after the command name.
fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // State is the first field and not a number: stand a zero in for it.
    Some(
        rest.split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU ticks of the whole server that `backend` belongs to: the postmaster
/// (with the children it has reaped) and every live child.
fn server_ticks(backend: u32) -> u64 {
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let postmaster = proc_stat(backend).expect("the backend's /proc entry")[1];
    let own = proc_stat(postmaster as u32).expect("the postmaster's /proc entry");
    let mut ticks = own[11] + own[12] + own[13] + own[14];
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = proc_stat(pid).filter(|s| s.len() > 12 && s[1] == postmaster) {
            ticks += stat[11] + stat[12];
        }
    }
    ticks
}

/// User and system CPU ticks of process `pid`, all its threads.
fn process_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid)
        .filter(|stat| stat.len() > 12)
        .map(|stat| stat[11] + stat[12])
}

/// [`process_ticks`] of this process.
fn own_ticks() -> u64 {
    process_ticks(std::process::id()).expect("this process's /proc entry")
}

/// The pid of a Redis server running on this machine, if there is one.
fn redis_pid() -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (name.trim() == "redis-server").then_some(pid)
        })
}

/// `ticks` of CPU time in microseconds.
fn micros(ticks: u64) -> f64 {
    ticks as f64 / ticks_per_second() * 1e6
}

/// Clock ticks per second of `/proc`'s CPU times, asked of `getconf` once.
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Commits `count` signups at once and waits until all are applied;
/// returns events per second from the commit, API calls per event and what
/// the run cost the database server.
async fn pipeline_throughput(env: &Env, count: usize, worker: &Child) -> (f64, f64, DbCost) {
    let worker_pid = worker.id().expect("the worker runs");
    let redis_pid = redis_pid();
    let before = applied(env).await;
    let stats = env.sandbox.stats();
    let (creates, requests) = (stats.creates, stats.total_requests);
    // The first change of each page after a checkpoint writes the whole
    // page: one now, so that no run has one in its middle and each starts
    // alike. Then the statistics of that settle (flushed once a second).
    sqlx::query("CHECKPOINT")
        .execute(env.pg())
        .await
        .expect("a checkpoint");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counted = statements_reset(env).await;
    let spent = server_spent(env).await;
    let others = (
        process_ticks(worker_pid),
        own_ticks(),
        redis_pid.and_then(process_ticks),
    );
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         SELECT 'tp' || i, 'signup', 'tp' || i || '@example.com', 'Throughput User'
         FROM generate_series(1, $1) AS i",
    )
    .bind(count as i64)
    .execute(env.pg())
    .await
    .expect("insert signups");
    let inserted_lsn = wal_lsn(env).await;
    // The sandbox counts the creates in this process: waiting on it costs
    // the database nothing; then the last mappings land.
    while env.sandbox.stats().creates < creates + count as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "throughput run stalled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while pending(env).await > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        applied(env).await,
        before + count as i64,
        "every signup applied"
    );
    let stats = env.sandbox.stats();
    assert_eq!(stats.duplicate_attempts, 0, "a duplicate create");
    let calls = (stats.total_requests - requests) as f64 / count as f64;
    // Every backend flushes its WAL statistics within a second of idling.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let end = server_spent(env).await;
    let n = count as f64;
    let since = |before: Option<u64>, now: Option<u64>| {
        before
            .zip(now)
            .map(|(before, now)| micros(now.saturating_sub(before)) / n)
    };
    let cost = DbCost {
        cpu_us: micros(end.ticks - spent.ticks) / n,
        worker_us: since(others.0, process_ticks(worker_pid)).unwrap_or(f64::NAN),
        bench_us: micros(own_ticks() - others.1) / n,
        redis_us: since(others.2, redis_pid.and_then(process_ticks)),
        wal_bytes: (end.lsn - spent.lsn) / n,
        wal_records: (end.records - spent.records) / n,
        wal_fpi: (end.fpi - spent.fpi) / n,
        host_insert_wal_bytes: (inserted_lsn - spent.lsn) / n,
        wal_range: (spent.at, end.at),
        statements: if counted {
            Some(statements_spent(env).await)
        } else {
            None
        },
    };
    (rate, calls, cost)
}

/// Commits `per_second` signups a second for `duration`; returns p50, p99
/// and max of commit → create received, in milliseconds.
async fn latency(env: &Env, per_second: u32, duration: Duration) -> (f64, f64, f64) {
    let total = (f64::from(per_second) * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(per_second));
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let before = applied(env).await;
    let mut tick = tokio::time::interval(interval);
    for i in 0..total {
        tick.tick().await;
        let email = format!("lat{i}@example.com");
        env.signup(&format!("lat{i}"), &email, Some("Latency User"))
            .await;
        committed.insert(email, Instant::now());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(env).await > 0 {
        assert!(Instant::now() < deadline, "latency run stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        applied(env).await,
        before + total as i64,
        "every signup applied"
    );
    let mut millis: Vec<f64> = env
        .sandbox
        .creation_times()
        .into_iter()
        .filter_map(|(username, created)| {
            committed
                .get(&username)
                .map(|t0| created.saturating_duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(millis.len(), total, "every signup was created");
    millis.sort_by(f64::total_cmp);
    let at = |q: f64| millis[((millis.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// Outbox reads per second over 20 s of idleness, and the RSS at its end.
async fn idle(env: &Env, worker: &Child) -> (f64, f64) {
    let reads = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT (seq_scan + COALESCE(idx_scan, 0))::int8 FROM pg_stat_user_tables
             WHERE relid = 'user_sync.events'::regclass",
        )
        .fetch_one(env.pg())
        .await
        .expect("table statistics");
        n
    };
    // Statistics arrive up to ~10 s late: let the busy period's land first.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = reads().await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = reads().await;
    ((after - before) as f64 / 20.0, rss_kib(worker, "VmRSS"))
}

/// A memory figure of the worker process from /proc, in KiB.
fn rss_kib(worker: &Child, field: &str) -> f64 {
    let Some(pid) = worker.id() else {
        return f64::NAN;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

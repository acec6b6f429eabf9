//! Rate-limit benchmarks: `cargo bench --bench ratelimit`.
//!
//! A sandbox in this process enforces a limit; real `user-sync run`
//! processes (the bench-profile binary) work through a backlog of signups
//! that keeps them saturated. One line per scenario, ending in `key=value`
//! pairs:
//!
//! - `fixed-1p`: one process configured at the sandbox's limit (50/s, burst 2);
//! - `fixed-4p`: four processes sharing the limit through Redis;
//! - `adaptive`: one process not told the limit (40/s), starting at 10/s:
//!   its shares over its first 15 s and over the 30 s after.
//!
//! Each scenario runs with both settings of `sync.lookup_before_create`
//! (`after_lost_answer`, the default: one call per signup; `always`: a
//! lookup before each create). Per window, each a share:
//! `requests_share` is requests the sandbox admitted (every route) over what
//! the limit allowed; `share_429` is the part of the requests answered 429;
//! `signups_share` is signups synced (creates answered 200) over what the
//! limit allowed, which is what users get. `BENCH_SECONDS` (default 60)
//! sets the length of the fixed scenarios.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Env;
use common::process::{Proc, process_vars};
use user_sync_sandbox::{SandboxOptions, SandboxStats};

const CREATE: &str = "POST /users/";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);

    // BENCH_ONLY=fixed-4p (a comma-separated list) runs some scenarios only;
    // BENCH_LOOKUP=always (or after_lost_answer) one setting of
    // sync.lookup_before_create only.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let lookup = std::env::var("BENCH_LOOKUP").unwrap_or_default();
    let lookups: Vec<&str> = ["after_lost_answer", "always"]
        .into_iter()
        .filter(|l| lookup.is_empty() || lookup == *l)
        .collect();
    for lookup in lookups {
        if run("fixed-1p") {
            let w = fixed(1, 50, seconds, lookup).await;
            println!(
                "fixed-1p    lookup={lookup:<17} sandbox 50/s, worker at 50/s, {seconds} s saturated: processes=1 {w}"
            );
        }
        if run("fixed-4p") {
            let w = fixed(4, 50, seconds, lookup).await;
            println!(
                "fixed-4p    lookup={lookup:<17} sandbox 50/s, global limit 50/s, {seconds} s saturated: processes=4 {w}"
            );
        }
        if run("adaptive") {
            let (first, then) = adaptive(40, lookup).await;
            println!(
                "adaptive    lookup={lookup:<17} sandbox 40/s, worker not told (starts at 10/s): 0-15s: {first}"
            );
            println!(
                "adaptive    lookup={lookup:<17} sandbox 40/s, worker not told (starts at 10/s): 15-45s: {then}"
            );
        }
    }
}

/// What a window of a scenario gave, each as a share.
struct Shares {
    /// Requests the sandbox admitted (every route) over what the limit
    /// allowed in the window.
    requests: f64,
    /// Requests answered 429 over all requests received.
    rate_limited: f64,
    /// Signups synced (creates answered 200) over what the limit allowed:
    /// what users get.
    signups: f64,
}

impl std::fmt::Display for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests_share={:.3} share_429={:.4} signups_share={:.3}",
            self.requests, self.rate_limited, self.signups
        )
    }
}

fn window(before: &SandboxStats, after: &SandboxStats, limit: u32, span: Duration) -> Shares {
    let created = after.count(CREATE, 200) - before.count(CREATE, 200);
    let limited = after.rate_limited - before.rate_limited;
    let requests = after.total_requests - before.total_requests;
    let allowed = f64::from(limit) * span.as_secs_f64();
    Shares {
        requests: requests.saturating_sub(limited) as f64 / allowed,
        rate_limited: limited as f64 / (requests.max(1)) as f64,
        signups: created as f64 / allowed,
    }
}

async fn backlog(env: &Env, count: u32) {
    sqlx::query(
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         SELECT 'rl' || i, 'signup', 'rl' || i || '@example.com', 'Rate Limited'
         FROM generate_series(1, $1) AS i",
    )
    .bind(i64::from(count))
    .execute(env.pg())
    .await
    .expect("insert the backlog");
}

async fn start(env: &Env, processes: usize, extra: &[(&str, String)]) -> Vec<Proc> {
    let mut vars = process_vars(env);
    vars.insert("USER_SYNC__WORKER__MAX_ATTEMPTS".into(), "1000".into());
    vars.insert("USER_SYNC__WORKER__CONCURRENCY".into(), "16".into());
    // The defaults, not the tests' quick timings.
    vars.insert("USER_SYNC__SWEEPER__INTERVAL_MS".into(), "60000".into());
    vars.insert(
        "USER_SYNC__SWEEPER__REDISPATCH_AFTER_MS".into(),
        "300000".into(),
    );
    for (key, value) in extra {
        vars.insert((*key).into(), value.clone());
    }
    let mut procs: Vec<Proc> = (0..processes)
        .map(|_| Proc::spawn(&vars, &["run"]))
        .collect();
    for proc in &mut procs {
        proc.ready().await;
    }
    procs
}

/// Waits until the first create, so that start-up is not measured.
async fn first_create(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.sandbox.stats().creates == 0 {
        assert!(Instant::now() < deadline, "no create reached the sandbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fixed(processes: usize, limit: u32, seconds: u64, lookup: &str) -> Shares {
    let env = Env::start(SandboxOptions {
        rate_limit: Some(limit),
        ..SandboxOptions::default()
    })
    .await;
    let span = Duration::from_secs(seconds);
    backlog(&env, limit * (seconds as u32 + 30)).await;
    let scope = if processes > 1 { "global" } else { "process" };
    let procs = start(
        &env,
        processes,
        &[
            ("USER_SYNC__RATE_LIMIT__SCOPE", scope.into()),
            (
                "USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND",
                limit.to_string(),
            ),
            ("USER_SYNC__RATE_LIMIT__BURST", "2".into()),
            ("USER_SYNC__SYNC__LOOKUP_BEFORE_CREATE", lookup.into()),
        ],
    )
    .await;
    first_create(&env).await;
    let before = env.sandbox.stats();
    tokio::time::sleep(span).await;
    let after = env.sandbox.stats();
    let degraded: usize = procs
        .iter()
        .map(|p| p.log().matches("shared rate limit is unreachable").count())
        .sum();
    if degraded > 0 {
        let first = procs
            .iter()
            .flat_map(|p| {
                p.log()
                    .lines()
                    .filter(|l| l.contains("shared rate limit is unreachable"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .next()
            .unwrap_or_default();
        eprintln!(
            "note: the shared limit degraded to local shares {degraded} times, first: {first}"
        );
    }
    drop(procs);
    env.finish().await;
    window(&before, &after, limit, span)
}

async fn adaptive(limit: u32, lookup: &str) -> (Shares, Shares) {
    let env = Env::start(SandboxOptions {
        rate_limit: Some(limit),
        ..SandboxOptions::default()
    })
    .await;
    backlog(&env, limit * 60).await;
    let procs = start(
        &env,
        1,
        &[
            ("USER_SYNC__RATE_LIMIT__ADAPTIVE", "true".into()),
            ("USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND", "10".into()),
            ("USER_SYNC__RATE_LIMIT__BURST", "1".into()),
            ("USER_SYNC__SYNC__LOOKUP_BEFORE_CREATE", lookup.into()),
        ],
    )
    .await;
    first_create(&env).await;
    let start = env.sandbox.stats();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let converged = env.sandbox.stats();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let end = env.sandbox.stats();
    drop(procs);
    env.finish().await;
    (
        window(&start, &converged, limit, Duration::from_secs(15)),
        window(&converged, &end, limit, Duration::from_secs(30)),
    )
}

//! Rate limits against a sandbox that enforces one: shared across
//! processes through Redis, surviving a killed process, and found by the
//! adaptive limiter when nobody told the worker.

mod common;

use std::time::{Duration, Instant};

use common::Env;
use common::process::{Proc, Running, process_vars};
use common::services::OwnRedis;
use user_sync::ratelimit::Slot;

const LIMIT: u32 = 20;
const BURST: u32 = 5;

fn global() -> Vec<(&'static str, String)> {
    vec![
        ("USER_SYNC__RATE_LIMIT__SCOPE", "global".into()),
        (
            "USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND",
            LIMIT.to_string(),
        ),
        ("USER_SYNC__RATE_LIMIT__BURST", BURST.to_string()),
        ("USER_SYNC__WORKER__MAX_ATTEMPTS", "100".into()),
    ]
}

async fn signups(env: &Env, prefix: &str, count: usize) {
    for i in 0..count {
        env.signup(
            &format!("{prefix}{i}"),
            &format!("{prefix}{i}@example.com"),
            None,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_one_limit() {
    let env = Env::start(common::rate_limited(LIMIT, true)).await;
    let vars = global();
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Running::with(&env, &extra).await);
    }
    signups(&env, "g", 120).await;
    env.settle(Duration::from_secs(60)).await;

    let stats = env.sandbox.stats();
    eprintln!("sandbox: {stats:?}");
    assert_eq!(stats.creates, 120);
    assert!(
        stats.max_received_per_second <= u64::from(LIMIT + BURST),
        "{} requests reached the API within one second (limit {LIMIT}, burst {BURST})",
        stats.max_received_per_second
    );
    assert!(
        stats.rate_limited * 100 <= stats.total_requests * 5,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.total_requests
    );
    for worker in workers {
        worker.stop().await;
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_process_does_not_break_the_limit() {
    let env = Env::start(common::rate_limited(LIMIT, true)).await;
    let mut vars = process_vars(&env);
    for (key, value) in global() {
        vars.insert(key.into(), value);
    }
    let mut a = Proc::spawn(&vars, &["run"]);
    let mut b = Proc::spawn(&vars, &["run"]);
    let mut c = Proc::spawn(&vars, &["run"]);
    a.ready().await;
    b.ready().await;
    c.ready().await;
    signups(&env, "k", 100).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.sandbox.stats().creates < 20 {
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill().await;
    let mut d = Proc::spawn(&vars, &["run"]);
    d.ready().await;
    env.settle(Duration::from_secs(90)).await;

    let stats = env.sandbox.stats();
    eprintln!("sandbox: {stats:?}");
    assert_eq!(stats.creates, 100);
    assert_eq!(stats.duplicate_attempts, 0);
    assert!(
        stats.max_received_per_second <= u64::from(LIMIT + BURST),
        "{} requests within one second",
        stats.max_received_per_second
    );
    drop((a, c, d));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_mode_finds_an_unknown_limit() {
    let env = Env::start(common::rate_limited(LIMIT, true)).await;
    // Told 5/s, may grow to 1000/s; the API allows 20/s.
    let worker = Running::with(
        &env,
        &[
            ("USER_SYNC__RATE_LIMIT__ADAPTIVE", "true"),
            ("USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND", "5"),
            ("USER_SYNC__RATE_LIMIT__BURST", "1"),
            ("USER_SYNC__WORKER__MAX_ATTEMPTS", "100"),
        ],
    )
    .await;
    signups(&env, "a", 240).await;
    env.settle(Duration::from_secs(90)).await;

    let stats = env.sandbox.stats();
    eprintln!("sandbox: {stats:?}");
    assert_eq!(stats.creates, 240);
    // It climbed from 5/s to near the limit, and did not hammer past it.
    assert!(
        stats.max_admitted_per_second >= u64::from(LIMIT * 3 / 4),
        "never got near the limit: {} in the best second",
        stats.max_admitted_per_second
    );
    assert!(
        stats.rate_limited * 100 <= stats.total_requests * 15,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.total_requests
    );
    worker.stop().await;
    env.finish().await;
}

/// Admitted calls within `span`, calling as fast as the limit allows.
async fn admitted_within(limit: &user_sync::ratelimit::SharedLimit, span: Duration) -> u32 {
    let end = Instant::now() + span;
    let mut admitted = 0;
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        match limit.reserve(left).await {
            Slot::After(wait) => {
                tokio::time::sleep(wait).await;
                admitted += 1;
            }
            Slot::Retry(wait) => tokio::time::sleep(wait.min(left)).await,
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_a_local_share() {
    use user_sync::ratelimit::{SharedLimit, SharedParams};
    let mut redis = OwnRedis::start().await;
    let client = redis::Client::open(redis.url.as_str()).expect("url");
    let params = SharedParams {
        rate: 20.0,
        burst: 1,
        adaptive: false,
        floor: 1.0,
        ceiling: 20.0,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut limits = Vec::new();
    for member in ["one", "two"] {
        let conn = redis::aio::ConnectionManager::new(client.clone())
            .await
            .expect("connect");
        let limit = SharedLimit::new(conn, "outage-test", member.into(), params);
        tokio::spawn(limit.clone().keep_membership(shutdown.clone()));
        limits.push(limit);
    }
    // Both processes together get the shared 20/s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (a, b) = tokio::join!(
        admitted_within(&limits[0], Duration::from_secs(2)),
        admitted_within(&limits[1], Duration::from_secs(2))
    );
    assert!(
        (30..=45).contains(&(a + b)),
        "{a} + {b} admitted in 2 s at 20/s"
    );

    // Redis goes away: each keeps to half of the rate, and never stops.
    redis.child.start_kill().expect("stop redis");
    let _ = redis.child.wait().await;
    let alone = admitted_within(&limits[0], Duration::from_secs(2)).await;
    assert!(
        (10..=24).contains(&alone),
        "{alone} admitted in 2 s with Redis down (its share is 10/s)"
    );
    shutdown.cancel();
}

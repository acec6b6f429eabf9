//! Recovery in seconds on the default settings: a killed process, a
//! flushed Redis, a claim cut off before its push, events marked
//! dispatched with no job anywhere, a SIGTERM while creates are in flight,
//! and a PostgreSQL restart under the dispatcher's LISTEN. The other suites
//! run the sweeper every 0.5 s and give up on a job after 3 s; these run it
//! as production does (every 5 s, the last net at 5 minutes), so that what
//! finds a lost job quickly is the mechanism meant to, not the quick net.
//!
//! Each test waits at most [`RECOVERY`] for the work to end once the fault
//! is over: the promise is "within 30 s by default".

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::process::{Proc, Running, process_vars_on_default_timings};
use common::services::{OwnPostgres, OwnRedis};
use common::{Backend, Env, eventually};
use user_sync::storage::Database;
use user_sync_sandbox::SandboxOptions;

/// How long work cut short by a fault may take to end once it is over.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long a test waits for its setup (processes starting, creates
/// reaching the sandbox) on a busy machine.
const SETUP: Duration = Duration::from_secs(60);

/// Every one of `users` host users has an Embedded user, created once.
fn each_created_once(env: &Env, users: usize) {
    let stats = env.sandbox.stats();
    assert_eq!(env.sandbox.users().len(), users);
    assert_eq!(stats.creates, users as u64, "no user created twice");
    assert_eq!(stats.duplicate_attempts, 0);
}

on_each_backend!(
    events_marked_dispatched_with_no_job_go_again_within_seconds,
    an_event_fails_after_exactly_max_attempts_and_keeps_its_intent,
    a_create_refused_with_no_holder_fails_at_once_and_frees_its_username,
);

/// What a push the queue lost, or a crash between the dispatcher's claim
/// and its push on SQLite (where the claim commits first), leaves behind:
/// pending events dispatched whose job is nowhere. The worker runs the whole time, so
/// neither a start nor a lost Redis explains them: the sweeper's look at an
/// empty queue does.
async fn events_marked_dispatched_with_no_job_go_again_within_seconds(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::on_default_timings(&env, &[]).await;
    env.signup("before", "before@example.com", None).await;
    env.settle(SETUP).await;

    let mut ids = Vec::new();
    for i in 0..5 {
        let host = format!("u{i}");
        let email = format!("u{i}@example.com");
        let id: i64 = match &env.db_pool {
            // The dispatcher moves past the events without a push.
            Database::Postgres(pool) => {
                common::dispatched_without_jobs(
                    pool,
                    sqlx::query_scalar(
                        "INSERT INTO user_sync.events (host_user_id, kind, email)
                         VALUES ($1, 'signup', $2) RETURNING id",
                    )
                    .bind(&host)
                    .bind(&email)
                    .fetch_one(pool),
                )
                .await
            }
            // The worker's own spelling of a time on SQLite.
            Database::Sqlite(pool) => {
                sqlx::query_scalar(
                    "INSERT INTO user_sync_events (host_user_id, kind, email, dispatched_at)
                 VALUES (?1, 'signup', ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')) RETURNING id",
                )
                .bind(&host)
                .bind(&email)
                .fetch_one(pool)
                .await
            }
        }
        .expect("insert an event marked dispatched");
        ids.push(id);
    }
    let marked = Instant::now();
    env.settle(RECOVERY).await;
    for id in ids {
        assert_eq!(env.event_state(id).await.0, "applied");
    }
    let waited = marked.elapsed();
    let stats = env.sandbox.stats();
    assert_eq!(stats.creates, 6, "each user created once");
    assert!(
        waited >= Duration::from_secs(5),
        "went again after {waited:?}: before the first sweep could have seen them"
    );

    run.stop().await;
    env.finish().await;
}

/// A flushed Redis loses every job: the next sweep (5 s) hears of it from
/// the queue's marker and sends every event in flight again at once, even
/// while new jobs keep the queue busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_loses_nothing_within_seconds() {
    let env = Env::start(common::latency(300)).await;
    // One user a job, two jobs at a time: most jobs wait in Redis when it
    // is flushed.
    let run = Running::on_default_timings(
        &env,
        &[
            ("USER_SYNC__WORKER__CONCURRENCY", "2"),
            ("USER_SYNC__DISPATCHER__USERS_PER_JOB", "1"),
        ],
    )
    .await;
    for i in 0..40 {
        env.signup(&format!("u{i}"), &format!("f{i}@example.com"), None)
            .await;
    }
    eventually(SETUP, "creates reach the sandbox", || async {
        env.sandbox.stats().creates >= 5
    })
    .await;
    env.flush_namespace().await;
    assert!(env.pending().await > 0, "everything ended before the flush");
    env.settle(RECOVERY).await;

    each_created_once(&env, 40);
    let applied = env
        .scalar("SELECT count(*) FROM user_sync.events WHERE state = 'applied'")
        .await;
    assert_eq!(applied, 40);

    run.stop().await;
    env.finish().await;
}

/// A process SIGKILLed with jobs in flight: the survivor takes them over
/// once the dead one misses its heartbeats, without any duplicate create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_jobs_run_again_within_seconds() {
    let env = Env::start(common::latency(500)).await;
    let vars = process_vars_on_default_timings(&env);
    let mut victim = Proc::spawn(&vars, &["run"]);
    victim.ready().await;
    for i in 0..30 {
        env.signup(&format!("k{i}"), &format!("kill{i}@example.com"), None)
            .await;
    }
    eventually(SETUP, "creates reach the sandbox", || async {
        env.sandbox.stats().creates >= 3
    })
    .await;
    victim.kill().await;
    assert!(env.pending().await > 0, "everything ended before the kill");
    let mut survivor = Proc::spawn(&vars, &["run"]);
    survivor.ready().await;
    env.settle(RECOVERY).await;

    each_created_once(&env, 30);
    let (status, log) = survivor.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{log}");
    env.finish().await;
}

/// A process killed while its dispatcher has claimed a batch and waits on
/// Redis to take the push: its claim's transaction dies with it, and the
/// next dispatcher takes the events at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cut_off_before_its_push_is_dispatched_again() {
    // A Redis of this test alone: pausing it must not stall other tests.
    let redis = OwnRedis::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &common::admin_url(),
        &redis.url,
        SandboxOptions::default(),
    )
    .await;
    let vars = process_vars_on_default_timings(&env);
    let mut victim = Proc::spawn(&vars, &["run"]);
    victim.ready().await;

    redis_command(&redis, &["CLIENT", "PAUSE", "20000", "WRITE"]).await;
    for i in 0..10 {
        env.signup(&format!("c{i}"), &format!("claim{i}@example.com"), None)
            .await;
    }
    // The claim is made and its transaction waits on the push.
    eventually(SETUP, "the claim waits on Redis", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'idle in transaction'",
        )
        .fetch_one(env.pg())
        .await
        .expect("pg_stat_activity");
        waiting > 0
    })
    .await;
    victim.kill().await;
    redis_command(&redis, &["CLIENT", "UNPAUSE"]).await;
    assert_eq!(env.sandbox.stats().creates, 0, "nothing was pushed");

    let mut survivor = Proc::spawn(&vars, &["run"]);
    survivor.ready().await;
    env.settle(RECOVERY).await;
    each_created_once(&env, 10);
    let (status, log) = survivor.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{log}");
    env.finish().await;
}

async fn redis_command(redis: &OwnRedis, args: &[&str]) {
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("own redis is reachable");
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.expect("redis command");
}

/// SIGTERM while creates take longer than `worker.shutdown_timeout_ms`:
/// the process exits 0 in time, and another process finishes the users it
/// cut off with no duplicate create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_long_creates_exits_in_time_and_loses_nothing() {
    let env = Env::start(common::latency(1500)).await;
    let mut vars = process_vars_on_default_timings(&env);
    vars.insert(
        "USER_SYNC__WORKER__SHUTDOWN_TIMEOUT_MS".into(),
        "300".into(),
    );
    let mut stopping = Proc::spawn(&vars, &["run"]);
    stopping.ready().await;
    for i in 0..12 {
        env.signup(&format!("t{i}"), &format!("term{i}@example.com"), None)
            .await;
    }
    // Creates have reached the sandbox and are waiting on its latency.
    eventually(SETUP, "creates under way", || async {
        env.sandbox.stats().total_requests >= 3
    })
    .await;
    let asked = Instant::now();
    let (status, log) = stopping.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "SIGTERM exits 0: {status}\n{log}");
    assert!(
        log.contains("jobs still running at the end of the shutdown timeout"),
        "creates were cut off by the shutdown timeout:\n{log}"
    );
    let exited = asked.elapsed();
    assert!(
        exited < Duration::from_secs(5),
        "exited {exited:?} after SIGTERM with a 300 ms shutdown timeout"
    );

    let mut other = Proc::spawn(&vars, &["run"]);
    other.ready().await;
    env.settle(RECOVERY).await;
    each_created_once(&env, 12);
    let (status, log) = other.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}\n{log}");
    env.finish().await;
}

/// A PostgreSQL restart under a running worker whose poll is far slower
/// than the test allows: its LISTEN must come back by itself for new
/// events to be dispatched in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_listens_again_after_a_postgresql_restart() {
    let pg = OwnPostgres::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &pg.admin_url(),
        &common::redis_url(),
        SandboxOptions::default(),
    )
    .await;
    let run = Running::on_default_timings(
        &env,
        &[("USER_SYNC__DISPATCHER__POLL_INTERVAL_MS", "600000")],
    )
    .await;
    env.signup("before", "before@example.com", None).await;
    env.settle(SETUP).await;

    pg.crash_and_restart(Duration::from_millis(500)).await;
    // The host writes again as soon as its database is back.
    let deadline = Instant::now() + SETUP;
    loop {
        let written = sqlx::query(
            "INSERT INTO user_sync.events (host_user_id, kind, email)
             VALUES ('after', 'signup', 'after@example.com')",
        )
        .execute(env.pg())
        .await;
        match written {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "the outbox is unwritable: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eventually(
        RECOVERY,
        "the event after the restart is applied",
        || async { env.embedded_id("after").await.is_some() },
    )
    .await;
    // More after the first: the listener did not only catch up once.
    env.signup("later", "later@example.com", None).await;
    eventually(RECOVERY, "a later event is applied", || async {
        env.embedded_id("later").await.is_some()
    })
    .await;
    assert_eq!(env.sandbox.stats().creates, 3);

    run.stop().await;
    env.finish().await;
}

/// The queue's own account of a loss, which the sweeper acts on: one
/// process of many hears of each loss, and an empty queue is told apart
/// from one that holds a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_tells_one_process_of_each_loss() {
    use user_sync::queue::{JobEvent, JobQueue, QueueLoss, RedisQueue, SyncJob};
    let env = Env::start(SandboxOptions::default()).await;
    let settings = env.settings();
    let one = RedisQueue::connect(&settings.redis).await.expect("redis");
    let other = RedisQueue::connect(&settings.redis).await.expect("redis");

    // A queue never seen before has no marker: the first to look is told.
    assert_eq!(one.jobs_lost().await.expect("look"), QueueLoss::Emptied);
    assert_eq!(other.jobs_lost().await.expect("look"), QueueLoss::None);
    assert_eq!(one.jobs_lost().await.expect("look"), QueueLoss::None);
    assert!(one.holds_no_jobs().await.expect("look"));

    let job = SyncJob::pack(
        vec![JobEvent {
            event_id: 1,
            host_user_id: Some("h".into()),
        }],
        64,
    );
    one.push(job).await.expect("push");
    assert!(!other.holds_no_jobs().await.expect("look"), "a job waits");

    // Flushed: one of the two hears of it, once.
    env.flush_namespace().await;
    let heard = [
        other.jobs_lost().await.expect("look"),
        one.jobs_lost().await.expect("look"),
    ];
    assert_eq!(heard, [QueueLoss::Emptied, QueueLoss::None]);
    assert!(one.holds_no_jobs().await.expect("look"));

    // Another server's mark (a failover, a restart) is a loss too.
    let client = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("SET")
        .arg(format!("{}.sync:server", env.namespace))
        .arg("another-server")
        .query_async(&mut conn)
        .await
        .expect("set the mark");
    assert_eq!(
        one.jobs_lost().await.expect("look"),
        QueueLoss::ServerChanged
    );
    assert_eq!(other.jobs_lost().await.expect("look"), QueueLoss::None);
    env.finish().await;
}

/// A permanent server error: the event ends `failed` after exactly
/// `worker.max_attempts` attempts (the last counted, and not one call
/// more). A 5xx does not say whether the create was made, so the claim on
/// the username stays as the intent it is: a retry, or the host user's next
/// event, confirms by a lookup before anything is created.
async fn an_event_fails_after_exactly_max_attempts_and_keeps_its_intent(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    env.fail_every_call(true);
    let run = Running::with(&env, &[("USER_SYNC__WORKER__MAX_ATTEMPTS", "3")]).await;
    let id = env.signup("first", "shared@example.com", None).await;
    eventually(SETUP, "the event fails", || async {
        env.event_state(id).await.0 == "failed"
    })
    .await;
    let attempts = env
        .scalar(&format!(
            "SELECT CAST(attempts AS BIGINT) FROM user_sync.events WHERE id = {id}"
        ))
        .await;
    assert_eq!(attempts, 3, "exactly worker.max_attempts attempts");
    let (_, reason) = env.event_state(id).await;
    let reason = reason.expect("a failed event says why");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    let calls = env.sandbox.stats().total_requests;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.sandbox.stats().total_requests,
        calls,
        "no call after the last attempt"
    );
    assert_eq!(
        env.pairs("SELECT state, username FROM user_sync.users WHERE host_user_id = 'first'")
            .await,
        vec![(Some("creating".into()), Some("shared@example.com".into()))],
        "the intent stays"
    );
    run.stop().await;
    env.finish().await;
}

/// The default rate limit (10 a second, bursts of 10) binds: 40 signups
/// take at least 3 s, no second of the API's sees more than 20 requests, and
/// an API limited to 20 a second never answers 429. The other suites raise
/// the limit to 1,000 a second, where it never binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rate_limit_binds_and_keeps_under_the_apis_limit() {
    let env = Env::start(common::rate_limited(20, true)).await;
    let vars: std::collections::HashMap<String, String> = env
        .vars_on_default_timings()
        .into_iter()
        .filter(|(key, _)| !key.starts_with("USER_SYNC__RATE_LIMIT__"))
        .collect();
    let settings =
        user_sync::config::Settings::load_from(&common::config_dir(), &vars).expect("settings");
    assert_eq!(settings.rate_limit.requests_per_second, 10);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = user_sync::app::Worker::start(&settings, shutdown.clone())
        .await
        .expect("worker starts");
    let started = Instant::now();
    for i in 0..40 {
        env.signup(&format!("r{i}"), &format!("rate{i}@example.com"), None)
            .await;
    }
    env.settle(SETUP).await;
    let took = started.elapsed();

    each_created_once(&env, 40);
    let stats = env.sandbox.stats();
    assert_eq!(stats.rate_limited, 0, "never over the API's limit");
    assert!(
        stats.max_admitted_per_second <= 20,
        "{} in one second",
        stats.max_admitted_per_second
    );
    assert!(
        took >= Duration::from_secs(3),
        "40 creates in {took:?}: the limit did not bind"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), worker.stopped())
        .await
        .expect("the worker stops")
        .expect("no part stopped on its own");
    env.finish().await;
}

/// PostgreSQL down for 12 s under running jobs (each waits on the pool
/// for a connection, then tries again in its slot): once the database is
/// back, every event ends, each user created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cut_off_by_a_long_database_outage_end_once_it_is_back() {
    let pg = OwnPostgres::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &pg.admin_url(),
        &common::redis_url(),
        common::latency(300),
    )
    .await;
    let run = Running::on_default_timings(
        &env,
        &[
            ("USER_SYNC__WORKER__CONCURRENCY", "2"),
            ("USER_SYNC__DISPATCHER__USERS_PER_JOB", "1"),
        ],
    )
    .await;
    for i in 0..12 {
        env.signup(&format!("o{i}"), &format!("outage{i}@example.com"), None)
            .await;
    }
    eventually(SETUP, "creates reach the sandbox", || async {
        env.sandbox.stats().creates >= 1
    })
    .await;
    pg.crash_and_restart(Duration::from_secs(12)).await;
    env.settle(RECOVERY).await;
    each_created_once(&env, 12);

    run.stop().await;
    env.finish().await;
}

/// The queue's clean-up drops finished jobs only: a job marked failed and
/// scheduled to run again (one that could not reach the database) keeps
/// its data. Without it, its id would stop every worker that fetched it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_clean_up_keeps_jobs_scheduled_to_run_again() {
    use user_sync::queue::{JobEvent, JobQueue, RedisQueue, SyncJob};
    let env = Env::start(SandboxOptions::default()).await;
    let queue = RedisQueue::connect(&env.settings().redis)
        .await
        .expect("redis");
    let job = |event_id| {
        SyncJob::pack(
            vec![JobEvent {
                event_id,
                host_user_id: Some(format!("h{event_id}")),
            }],
            64,
        )
    };
    queue.push(job(1)).await.expect("push");
    queue.push(job(2)).await.expect("push");
    let client = redis::Client::open(env.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let prefix = format!("{}.sync", env.namespace);
    let ids: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{prefix}:data"))
        .query_async(&mut conn)
        .await
        .expect("the jobs");
    assert_eq!(ids.len(), 2);
    // As apalis-redis leaves them: one done, one failed and scheduled again.
    for (id, status) in ids.iter().zip(["Done", "Failed"]) {
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}:meta:{id}"))
            .arg("status")
            .arg(status)
            .query_async(&mut conn)
            .await
            .expect("HSET");
    }
    let _: () = redis::cmd("ZREM")
        .arg(format!("{prefix}:scheduled"))
        .arg(&ids[0])
        .query_async(&mut conn)
        .await
        .expect("ZREM");

    assert_eq!(queue.vacuum().await.expect("clean-up"), 1);
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("{prefix}:data"))
        .query_async(&mut conn)
        .await
        .expect("the jobs");
    assert_eq!(left, [ids[1].clone()], "the failed job waits to run again");
    assert!(!queue.holds_no_jobs().await.expect("look"));
    env.finish().await;
}

/// A `429` with a long `Retry-After` (the whole key throttled for 6 s):
/// every process pauses all its calls until then instead of retrying on
/// its own backoff, and then finishes, each user created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_pauses_every_process() {
    let env = Env::start(SandboxOptions::default()).await;
    let vars = process_vars_on_default_timings(&env);
    let mut one = Proc::spawn(&vars, &["run"]);
    let mut two = Proc::spawn(&vars, &["run"]);
    one.ready().await;
    two.ready().await;
    env.sandbox.update_faults(user_sync_sandbox::FaultUpdate {
        throttle_secs: Some(6),
        ..user_sync_sandbox::FaultUpdate::default()
    });
    let throttled = Instant::now();
    for i in 0..20 {
        env.signup(&format!("p{i}"), &format!("pause{i}@example.com"), None)
            .await;
    }
    // Both processes meet the throttle within its first second.
    tokio::time::sleep_until((throttled + Duration::from_millis(1500)).into()).await;
    let early = env.sandbox.stats().total_requests;
    assert!(early > 0, "the processes met the throttle");
    tokio::time::sleep_until((throttled + Duration::from_millis(5500)).into()).await;
    let late = env.sandbox.stats().total_requests;
    assert_eq!(late, early, "no call while Retry-After holds");
    env.settle(RECOVERY).await;
    each_created_once(&env, 20);
    for proc in [one, two] {
        let (status, log) = proc.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{status}\n{log}");
    }
    env.finish().await;
}

/// The key revoked between a lookup and the create it cleared (the create
/// before had met a server error, so its outcome was looked up first):
/// the create meets `401`, calls pause, nothing fails, and once the key is
/// back the user is created once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_between_a_lookup_and_its_create_pauses_and_creates_once() {
    use user_sync_sandbox::{FaultUpdate, routes};
    let env = Env::start(SandboxOptions::default()).await;
    env.fail_every_call(true);
    let run = Running::with(
        &env,
        &[
            ("USER_SYNC__WORKER__BACKOFF_BASE_MS", "500"),
            ("USER_SYNC__WORKER__BACKOFF_CAP_MS", "1000"),
        ],
    )
    .await;
    let id = env.signup("l1", "lookup@example.com", None).await;
    eventually(SETUP, "a create meets a server error", || async {
        env.sandbox.stats().count(routes::CREATE, 500)
            + env.sandbox.stats().count(routes::CREATE, 502)
            + env.sandbox.stats().count(routes::CREATE, 503)
            > 0
    })
    .await;
    // The next call (the lookup) goes through; the one after (the create)
    // meets a revoked key.
    env.sandbox.update_faults(FaultUpdate {
        fail_rate: Some(0.0),
        revoke_key_after: Some(1),
        ..FaultUpdate::default()
    });
    eventually(SETUP, "the create meets 401", || async {
        env.sandbox.stats().count(routes::CREATE, 401) > 0
    })
    .await;
    let stats = env.sandbox.stats();
    assert!(
        stats.count(routes::GET, 404) >= 1,
        "looked up first: {stats:?}"
    );
    assert_eq!(env.event_state(id).await.0, "pending", "paused, not failed");
    assert_eq!(stats.creates, 0);

    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(common::KEY.into()),
        ..FaultUpdate::default()
    });
    env.settle(RECOVERY).await;
    assert_eq!(env.event_state(id).await.0, "applied");
    each_created_once(&env, 1);
    run.stop().await;
    env.finish().await;
}

/// A create the API refuses as taken when nobody holds the username (a
/// lookup finds no one): a definite refusal, so the event ends `failed`
/// after that one attempt (no retry can change the answer), and its claim
/// is released: another host user with that email is created once the API
/// takes creates again.
async fn a_create_refused_with_no_holder_fails_at_once_and_frees_its_username(backend: Backend) {
    use user_sync_sandbox::{FaultUpdate, routes};
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    env.sandbox.update_faults(FaultUpdate {
        refuse_creates: Some(true),
        ..FaultUpdate::default()
    });
    let run = Running::with(&env, &[("USER_SYNC__WORKER__MAX_ATTEMPTS", "3")]).await;
    let id = env.signup("first", "refused@example.com", None).await;
    eventually(SETUP, "the event fails", || async {
        env.event_state(id).await.0 == "failed"
    })
    .await;
    let attempts = env
        .scalar(&format!(
            "SELECT CAST(attempts AS BIGINT) FROM user_sync.events WHERE id = {id}"
        ))
        .await;
    assert_eq!(attempts, 1, "a definite refusal is not tried again");
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::CREATE), 1);
    assert_eq!(
        stats.count(routes::GET, 404),
        1,
        "its holder was looked for"
    );
    // A row holds its username only while `creating` or `synced`.
    assert_eq!(
        env.pairs("SELECT state, NULL FROM user_sync.users WHERE host_user_id = 'first'")
            .await,
        vec![(Some("failed".into()), None)],
        "the claim is released"
    );

    env.sandbox.update_faults(FaultUpdate {
        refuse_creates: Some(false),
        ..FaultUpdate::default()
    });
    let other = env.signup("second", "refused@example.com", None).await;
    env.settle(SETUP).await;
    assert_eq!(env.event_state(other).await.0, "applied");
    assert!(env.embedded_id("second").await.is_some());
    each_created_once(&env, 1);
    run.stop().await;
    env.finish().await;
}

/// Answers slower than the tests' 2 s timeout but within the default 10 s:
/// on the default timeout they are answers, not lost ones (no lookup, no
/// unconfirmed create).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_within_the_default_timeout_are_not_taken_for_lost() {
    use user_sync_sandbox::routes;
    let env = Env::start(common::latency(3000)).await;
    let mut vars = env.vars_on_default_timings();
    vars.remove("USER_SYNC__EMBEDDED__TIMEOUT_MS");
    let settings =
        user_sync::config::Settings::load_from(&common::config_dir(), &vars).expect("settings");
    assert_eq!(settings.embedded.timeout, Duration::from_secs(10));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = user_sync::app::Worker::start(&settings, shutdown.clone())
        .await
        .expect("worker starts");
    for i in 0..4 {
        env.signup(&format!("s{i}"), &format!("slow{i}@example.com"), None)
            .await;
    }
    env.settle(SETUP).await;
    each_created_once(&env, 4);
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::GET), 0, "no answer was lost");
    let unconfirmed = env
        .scalar("SELECT count(*) FROM user_sync.users WHERE state <> 'synced'")
        .await;
    assert_eq!(unconfirmed, 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), worker.stopped())
        .await
        .expect("the worker stops")
        .expect("no part stopped on its own");
    env.finish().await;
}

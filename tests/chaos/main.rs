//! The chaos suite: the whole pipeline on loopback (a private PostgreSQL
//! cluster and Redis, the sandbox with faults, several `user-sync run`
//! processes) under a mixed workload and deliberate breakage, then an exact
//! check of the end state against the workload's own model.
//!
//! `USER_SYNC_CHAOS` chooses the length: unset or `short` (CI, under two
//! minutes), `long` (30 minutes, 100,000+ events), or a number of seconds
//! of live workload. `USER_SYNC_CHAOS_SEED` replays a workload (the timing of
//! faults and kills is the machine's). See the README, "Chaos suite".

mod checks;
#[path = "../common/mod.rs"]
mod common;
mod model;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::process::{Proc, process_vars, run_once};
use common::services::{OwnPostgres, OwnRedis};
use common::{Backend, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use user_sync_sandbox::{FaultUpdate, SandboxOptions, SandboxStats};

use crate::checks::{Observed, check};
use crate::model::{Event, Model};

/// How big and how long a run is.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Accounts the backfill starts from.
    historical: usize,
    /// Length of the live workload.
    live: Duration,
    /// Outbox events written per second, on average.
    rate: u32,
    /// How long the pipeline may take to go quiet afterwards.
    settle: Duration,
}

impl Mode {
    fn from_env() -> Self {
        match std::env::var("USER_SYNC_CHAOS").as_deref() {
            Err(_) | Ok("" | "short") => Self {
                historical: 1000,
                live: Duration::from_secs(45),
                rate: 70,
                settle: Duration::from_secs(120),
            },
            Ok("long") => Self::of_seconds(1800),
            Ok(secs) => Self::of_seconds(
                secs.parse()
                    .expect("USER_SYNC_CHAOS is short, long or a number of seconds"),
            ),
        }
    }

    fn of_seconds(secs: u64) -> Self {
        Self {
            historical: 20_000,
            live: Duration::from_secs(secs),
            rate: 60,
            settle: Duration::from_secs(600),
        }
    }
}

const WORKERS: usize = 3;
const BASE_FAILURES: FaultUpdate = FaultUpdate {
    api_key: None,
    rate_limit: Some(Some(200)),
    retry_after: None,
    fail_rate: Some(0.05),
    drop_rate: Some(0.05),
    latency_ms: Some(2),
    duplicate_status: None,
    refuse_rename: None,
    throttle_secs: None,
    revoke_key_after: None,
    refuse_creates: None,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_exactly_under_crashes_lost_answers_and_bad_input() {
    let started = Instant::now();
    let mode = Mode::from_env();
    let seed: u64 = std::env::var("USER_SYNC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut figures: BTreeMap<String, String> = BTreeMap::new();
    figures.insert("seed".into(), seed.to_string());

    // The machine: a PostgreSQL cluster and a Redis of this run alone, the
    // sandbox failing 5% of requests and cutting 5% of changes after
    // applying them.
    let pg = OwnPostgres::start().await;
    let redis = OwnRedis::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &pg.admin_url(),
        &redis.url,
        SandboxOptions {
            seed: Some(seed),
            ..SandboxOptions::default()
        },
    )
    .await;
    env.sandbox.update_faults(BASE_FAILURES);
    let mut model = Model::new(seed);

    // Before the worker: users made in Embedded by hand, and the host's
    // historical accounts.
    // Made well before the worker starts, as their ids say: a refusal
    // of one whose answer is lost is told apart from the worker's create.
    for (email, name) in model.outside_users(20) {
        env.sandbox
            .insert_user_made(&email, name.as_deref(), Duration::from_secs(3600));
    }
    let rows = model.historical(mode.historical);
    host_accounts(env.pg(), &rows).await;

    let mut vars = process_vars(&env);
    // Lost jobs are found as in production: the sweeper and the dispatcher
    // on their default timings, not the other tests' quick ones.
    for key in [
        "SWEEPER__INTERVAL_MS",
        "SWEEPER__REDISPATCH_AFTER_MS",
        "DISPATCHER__POLL_INTERVAL_MS",
    ] {
        vars.remove(&format!("USER_SYNC__{key}"));
    }
    for (key, value) in [
        ("WORKER__MAX_ATTEMPTS", "1000"),
        // Retries far enough apart for the host to write in between, as in
        // production (500 ms base there).
        ("WORKER__BACKOFF_BASE_MS", "250"),
        ("WORKER__BACKOFF_CAP_MS", "1000"),
        ("WORKER__CONCURRENCY", "8"),
        ("SOURCE__TABLE", "public.accounts"),
        ("SOURCE__NAME_COLUMN", "display_name"),
        ("SOURCE__CLOSED_CONDITION", "closed"),
    ] {
        vars.insert(format!("USER_SYNC__{key}"), value.into());
    }
    let mut fleet = Fleet::start(&vars).await;

    // The backfill, killed once midway, then run until it completes.
    let backfill_runs = backfill(&env, &vars, &mut fleet.logs).await;
    figures.insert("backfill runs".into(), backfill_runs.to_string());

    // The live workload, and breakage meanwhile.
    let live_started = Instant::now();
    let done = AtomicBool::new(false);
    let ((model, bad_ids, good_ids), (chaos, faults)) =
        tokio::join!(write_workload(&env, model, mode, &done), async {
            let chaos = break_things(&env, &pg, &redis, &mut fleet, mode, seed).await;
            done.store(true, Ordering::SeqCst);
            chaos
        });
    figures.insert(
        "live phase".into(),
        format!("{:.0} s", live_started.elapsed().as_secs_f64()),
    );

    // Quiet: faults stay on; every event must still end.
    let backlog: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_sync.events WHERE state = 'pending'")
            .fetch_one(env.pg())
            .await
            .unwrap_or(-1);
    figures.insert(
        "pending at the end of the live phase".into(),
        backlog.to_string(),
    );
    let quiet_started = Instant::now();
    let quiet = settle(env.pg(), mode.settle).await;
    figures.insert(
        "quiescence".into(),
        format!("{:.0} s", quiet_started.elapsed().as_secs_f64()),
    );
    fleet.stop().await;
    let waits = waits_after_faults(env.pg(), &faults).await;
    let slowest: Vec<SlowEvent> = sqlx::query_as(
        "SELECT id, host_user_id, kind,
                EXTRACT(EPOCH FROM (finished_at - occurred_at))::float8, attempts
         FROM user_sync.events WHERE finished_at IS NOT NULL
         ORDER BY finished_at - occurred_at DESC LIMIT 5",
    )
    .fetch_all(env.pg())
    .await
    .unwrap_or_default();
    figures.insert(
        "slowest events (id host kind seconds attempts)".into(),
        slowest
            .iter()
            .map(|(id, host, kind, secs, attempts)| {
                format!(
                    "{id} {} {} {secs:.1} {attempts}",
                    host.as_deref().unwrap_or("-"),
                    kind.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    for (kind, wait) in &waits {
        figures.insert(
            format!("longest wait after a fault: {kind}"),
            format!("{wait:.1} s"),
        );
    }

    let mut seen = Observed::read(env.pg()).await;
    seen.embedded = env.sandbox.users();
    seen.created = env.sandbox.created();
    seen.refused_creates = env.sandbox.refused_creates();
    seen.deleted_with_logs = env.sandbox.stats().deleted_with_logs;
    seen.redis = env.redis_dump_matching("*").await;
    seen.logs = std::mem::take(&mut fleet.logs);
    seen.logs.push(("postgresql".into(), pg.server_log()));
    let verdict = check(
        &model,
        &bad_ids,
        &good_ids,
        &seen,
        &[common::KEY, REVOKED_KEY],
    );

    // The summary.
    let stats = env.sandbox.stats();
    for (name, value) in &model.counts {
        figures.insert((*name).into(), value.to_string());
    }
    figures.insert("historical accounts".into(), mode.historical.to_string());
    figures.insert(
        "events".into(),
        (bad_ids.len() + good_ids.len()).to_string(),
    );
    for (name, value) in [
        ("api requests", stats.total_requests),
        ("injected 5xx", stats.failed),
        ("cut connections (applied, no answer)", stats.dropped),
        ("429 answers", stats.rate_limited),
        ("401 answers", unauthorized(&stats)),
        ("refused duplicate creates", stats.duplicate_attempts),
        (
            "requests overlapping another for one user",
            stats.overlapping_user_requests,
        ),
    ] {
        figures.insert(name.into(), value.to_string());
    }
    for (name, value) in &chaos {
        figures.insert((*name).into(), value.to_string());
    }
    for (name, value) in &verdict.figures {
        figures.insert((*name).into(), value.to_string());
    }
    figures.insert(
        "violations".into(),
        verdict
            .violations
            .values()
            .map(BTreeSet::len)
            .sum::<usize>()
            .to_string(),
    );
    figures.insert(
        "wall time".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    let summary = figures
        .iter()
        .map(|(k, v)| format!("  {k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("chaos summary ({mode:?})\n{summary}");

    let mut failures = Vec::new();
    if let Err(stuck) = quiet {
        failures.push(format!("never quiet: {stuck}"));
    }
    for (kind, wait) in &waits {
        if *wait > MAX_WAIT_AFTER_FAULT.as_secs_f64() {
            failures.push(format!(
                "an event waited {wait:.1} s after a fault ({kind}); at most {} s",
                MAX_WAIT_AFTER_FAULT.as_secs()
            ));
        }
    }
    for (what, ids) in &verdict.violations {
        let shown: Vec<&str> = ids.iter().take(25).map(String::as_str).collect();
        failures.push(format!(
            "{what}: {} ({})",
            shown.join(", "),
            if ids.len() > shown.len() {
                format!("{} in all", ids.len())
            } else {
                ids.len().to_string()
            }
        ));
    }
    if failures.is_empty() && std::env::var_os("USER_SYNC_CHAOS_KEEP_LOGS").is_some() {
        let dir = save_logs(&seen.logs, seed);
        eprintln!("logs in {}", dir.display());
    }
    if !failures.is_empty() {
        let dir = save_logs(&seen.logs, seed);
        let _ = std::fs::write(
            dir.join("diagnosis.txt"),
            checks::diagnose(&model, &seen, &verdict),
        );
        panic!(
            "chaos run failed (seed {seed}; logs in {}):\n{}",
            dir.display(),
            failures.join("\n")
        );
    }
    env.finish().await;
}

/// The key the sandbox is switched to while the real one is revoked.
const REVOKED_KEY: &str = "chaos-revoked-key";

/// How long any event may wait after a fault is over before it ends.
const MAX_WAIT_AFTER_FAULT: Duration = Duration::from_secs(30);

/// A fault: its kind, when it began and when it was over (a kill is over
/// when it is made).
type Faults = Vec<(&'static str, DateTime, DateTime)>;
type DateTime = chrono::DateTime<chrono::Utc>;

/// An event's id, host user, kind, seconds from written to ended, attempts.
type SlowEvent = (i64, Option<String>, Option<String>, f64, i32);

/// For each kind of fault, the longest any event written before one of
/// them was over took to end after it, in seconds, not counting the time
/// later faults were on meanwhile (an API refusing every call for 3 s is
/// not a slow recovery from the fault before it). The database runs on
/// this machine, so its clock is the test's.
async fn waits_after_faults(pool: &PgPool, faults: &Faults) -> BTreeMap<&'static str, f64> {
    let events: Vec<(DateTime, DateTime)> = sqlx::query_as(
        "SELECT occurred_at, finished_at FROM user_sync.events WHERE finished_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .expect("read the events' times");
    let seconds = |d: chrono::TimeDelta| d.num_milliseconds() as f64 / 1000.0;
    let mut waits = BTreeMap::new();
    for (kind, _, over) in faults {
        let longest = events
            .iter()
            .filter(|(written, finished)| written <= over && finished > over)
            .map(|(_, finished)| {
                let later: f64 = faults
                    .iter()
                    .filter(|(_, began, _)| began > over && began < finished)
                    .map(|(_, began, ended)| seconds((*ended).min(*finished) - *began))
                    .sum();
                seconds(*finished - *over) - later
            })
            .fold(0.0, f64::max);
        let wait = waits.entry(*kind).or_insert(0.0);
        *wait = f64::max(*wait, longest);
    }
    waits
}

async fn host_accounts(pool: &PgPool, rows: &[(String, String, String, bool)]) {
    sqlx::query(
        "CREATE TABLE public.accounts (
             id text PRIMARY KEY, email text NOT NULL, display_name text,
             closed boolean NOT NULL DEFAULT false)",
    )
    .execute(pool)
    .await
    .expect("create the host's users table");
    for chunk in rows.chunks(5000) {
        let (ids, emails, names, closed): (Vec<_>, Vec<_>, Vec<_>, Vec<_>) = chunk.iter().fold(
            (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |mut acc, (id, email, name, closed)| {
                acc.0.push(id.as_str());
                acc.1.push(email.as_str());
                acc.2.push(name.as_str());
                acc.3.push(*closed);
                acc
            },
        );
        sqlx::query(
            "INSERT INTO public.accounts (id, email, display_name, closed)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[])",
        )
        .bind(ids)
        .bind(emails)
        .bind(names)
        .bind(closed)
        .execute(pool)
        .await
        .expect("insert historical accounts");
    }
}

/// Runs `user-sync backfill`, SIGKILLs the first run as soon as it has
/// created users, and runs it again until it succeeds. Returns the runs.
async fn backfill(
    env: &Env,
    vars: &HashMap<String, String>,
    logs: &mut Vec<(String, String)>,
) -> u32 {
    let args = ["backfill", "--no-progress"];
    let first = Proc::spawn(vars, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.sandbox.stats().creates == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    logs.push(("backfill 1 (killed)".into(), first.kill().await));
    for run in 2..=6 {
        let done = run_once(vars, &args).await;
        logs.push((
            format!("backfill {run}"),
            format!("{}{}", done.stdout, done.stderr),
        ));
        if done.status.success() {
            return run;
        }
        eprintln!("chaos: backfill run {run} ended {}", done.status);
    }
    panic!("the backfill never completed");
}

/// The `user-sync run` processes, and the logs of those that ended.
struct Fleet {
    vars: HashMap<String, String>,
    procs: Vec<Option<Proc>>,
    logs: Vec<(String, String)>,
    spawned: usize,
}

impl Fleet {
    async fn start(vars: &HashMap<String, String>) -> Self {
        let mut fleet = Self {
            vars: vars.clone(),
            procs: Vec::new(),
            logs: Vec::new(),
            spawned: 0,
        };
        for _ in 0..WORKERS {
            let proc = fleet.spawn().await;
            fleet.procs.push(Some(proc));
        }
        fleet
    }

    async fn spawn(&mut self) -> Proc {
        self.spawned += 1;
        let mut proc = Proc::spawn(&self.vars, &["run"]);
        proc.ready().await;
        proc
    }

    async fn kill(&mut self, i: usize) {
        if let Some(proc) = self.procs[i].take() {
            let log = proc.kill().await;
            self.logs.push((format!("worker {i} (killed)"), log));
        }
    }

    async fn restart(&mut self, i: usize) {
        let proc = self.spawn().await;
        self.procs[i] = Some(proc);
    }

    async fn stop(&mut self) {
        for (i, slot) in self.procs.iter_mut().enumerate() {
            if let Some(proc) = slot.take() {
                let (status, log) = proc.terminate(Duration::from_secs(30)).await;
                assert!(status.success(), "worker {i} ended {status}:\n{log}");
                self.logs.push((format!("worker {i}"), log));
            }
        }
    }
}

/// Writes the live workload into the outbox at `mode.rate` (in uneven
/// ticks, with bursts) until `done`; returns the model and the ids of the
/// bad and the good events.
async fn write_workload(
    env: &Env,
    mut model: Model,
    mode: Mode,
    done: &AtomicBool,
) -> (Model, BTreeSet<i64>, BTreeSet<i64>) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&env.db.url)
        .await
        .expect("the writer connects");
    let mut rng = StdRng::from_os_rng();
    let (mut bad, mut good) = (BTreeSet::new(), BTreeSet::new());
    let tick = Duration::from_millis(100);
    let per_tick = f64::from(mode.rate) / 10.0;
    let mut next = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let burst = if rng.random_bool(0.02) { 5.0 } else { 1.0 };
        let n = (per_tick * burst * rng.random_range(0.5..1.5)).round() as usize;
        let names: BTreeSet<String> = env
            .sandbox
            .users()
            .into_iter()
            .filter_map(|u| u.full_name)
            .collect();
        let undos = model.undos_due(|name| names.contains(name));
        let new = std::iter::repeat_with(|| None).take(n);
        for event in undos.into_iter().map(Some).chain(new) {
            let event = event.unwrap_or_else(|| model.next_event());
            let id = insert(&pool, &event).await;
            if event.bad {
                bad.insert(id);
            } else {
                good.insert(id);
            }
        }
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    pool.close().await;
    (model, bad, good)
}

/// Inserts one event as a host app does, again and again while PostgreSQL
/// is away.
async fn insert(pool: &PgPool, event: &Event) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inserted = sqlx::query_scalar(
            "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(&event.host)
        .bind(&event.kind)
        .bind(&event.email)
        .bind(&event.name)
        .fetch_one(pool)
        .await;
        match inserted {
            Ok(id) => return id,
            Err(e) => {
                assert!(Instant::now() < deadline, "the outbox is unwritable: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What to break, and when (as a share of the live phase).
enum Breakage {
    Kill,
    Storm(Duration),
    Slow(Duration),
    FlushRedis,
    RestartPostgres,
    RevokeKey(Duration),
}

/// Breaks things on a schedule for the live phase; returns what it did,
/// and when each fault was over.
async fn break_things(
    env: &Env,
    pg: &OwnPostgres,
    redis: &OwnRedis,
    fleet: &mut Fleet,
    mode: Mode,
    seed: u64,
) -> (BTreeMap<&'static str, u64>, Faults) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x000c_4a05);
    let live = mode.live;
    let at = |share: f64| live.mul_f64(share);
    let mut plan: Vec<(Duration, Breakage)> = vec![
        (at(0.2), Breakage::Storm(Duration::from_secs(4))),
        (at(0.3), Breakage::FlushRedis),
        (at(0.4), Breakage::Slow(Duration::from_secs(3))),
        (at(0.5), Breakage::RestartPostgres),
        (at(0.65), Breakage::RevokeKey(Duration::from_secs(3))),
        (at(0.8), Breakage::Storm(Duration::from_secs(3))),
    ];
    let mut t = Duration::from_secs(3);
    while t + Duration::from_secs(3) < live {
        plan.push((t, Breakage::Kill));
        t += Duration::from_millis(rng.random_range(4000..9000));
    }
    plan.sort_by_key(|(when, _)| *when);

    let mut done: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut faults = Faults::new();
    let start = Instant::now();
    for (when, breakage) in plan {
        tokio::time::sleep_until((start + when).into()).await;
        let kind = breakage.kind();
        let began = chrono::Utc::now();
        match breakage {
            Breakage::Kill => {
                let victim = rng.random_range(0..WORKERS);
                fleet.kill(victim).await;
                let now = chrono::Utc::now();
                faults.push((kind, now, now));
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..1500))).await;
                fleet.restart(victim).await;
                *done.entry("SIGKILLs").or_default() += 1;
            }
            Breakage::Storm(length) => {
                let before = env.sandbox.stats().rate_limited;
                env.sandbox.update_faults(FaultUpdate {
                    rate_limit: Some(Some(5)),
                    ..FaultUpdate::default()
                });
                tokio::time::sleep(length).await;
                until_seen(|| env.sandbox.stats().rate_limited > before, "a 429").await;
                env.sandbox.update_faults(BASE_FAILURES);
                *done.entry("429 storms").or_default() += 1;
            }
            Breakage::Slow(length) => {
                // Slower than the worker's 2 s timeout: answers lost.
                env.sandbox.update_faults(FaultUpdate {
                    latency_ms: Some(2500),
                    ..FaultUpdate::default()
                });
                tokio::time::sleep(length).await;
                env.sandbox.update_faults(BASE_FAILURES);
                *done.entry("latency spikes (timeouts)").or_default() += 1;
            }
            Breakage::FlushRedis => {
                redis.flush_all().await;
                *done.entry("Redis flushes").or_default() += 1;
            }
            Breakage::RestartPostgres => {
                pg.crash_and_restart(Duration::from_millis(1500)).await;
                *done.entry("PostgreSQL restarts").or_default() += 1;
            }
            Breakage::RevokeKey(length) => {
                let before = unauthorized(&env.sandbox.stats());
                env.sandbox.update_faults(FaultUpdate {
                    api_key: Some(REVOKED_KEY.into()),
                    ..FaultUpdate::default()
                });
                tokio::time::sleep(length).await;
                until_seen(|| unauthorized(&env.sandbox.stats()) > before, "a 401").await;
                env.sandbox.update_faults(FaultUpdate {
                    api_key: Some(common::KEY.into()),
                    ..FaultUpdate::default()
                });
                *done.entry("API key revocations").or_default() += 1;
            }
        }
        if kind != "SIGKILL" {
            faults.push((kind, began, chrono::Utc::now()));
        }
    }
    tokio::time::sleep_until((start + live).into()).await;
    (done, faults)
}

impl Breakage {
    /// Its kind, as the summary names it.
    fn kind(&self) -> &'static str {
        match self {
            Breakage::Kill => "SIGKILL",
            Breakage::Storm(_) => "429 storm",
            Breakage::Slow(_) => "latency spike",
            Breakage::FlushRedis => "Redis flush",
            Breakage::RestartPostgres => "PostgreSQL restart",
            Breakage::RevokeKey(_) => "key revocation",
        }
    }
}

/// Keeps a fault on until it has hit the worker at least once, so that
/// every run really goes through it.
async fn until_seen(hit: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hit() {
        assert!(Instant::now() < deadline, "the worker never got {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn unauthorized(stats: &SandboxStats) -> u64 {
    stats
        .requests
        .values()
        .filter_map(|by_status| by_status.get(&401))
        .sum()
}

/// Waits until no event is pending and no create is unconfirmed, three
/// looks in a row; `Err` names what is still open at `limit`.
async fn settle(pool: &PgPool, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut quiet_looks = 0;
    loop {
        let open: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM user_sync.events WHERE state = 'pending'),
                    (SELECT count(*) FROM user_sync.users WHERE state = 'creating')",
        )
        .fetch_one(pool)
        .await;
        match open {
            Ok((0, 0)) => quiet_looks += 1,
            Ok((pending, creating)) => {
                quiet_looks = 0;
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{pending} events pending, {creating} creates unconfirmed"
                    ));
                }
            }
            Err(e) => {
                quiet_looks = 0;
                if Instant::now() >= deadline {
                    return Err(format!("the database does not answer: {e}"));
                }
            }
        }
        if quiet_looks == 3 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes every process's output under `target/chaos-<seed>/`.
fn save_logs(logs: &[(String, String)], seed: u64) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("chaos-{seed}"));
    let _ = std::fs::create_dir_all(&dir);
    for (i, (name, log)) in logs.iter().enumerate() {
        let file = format!("{i:03}-{}.log", name.replace([' ', '(', ')'], "_"));
        let _ = std::fs::write(dir.join(file), log);
    }
    dir
}

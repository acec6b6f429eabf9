//! The backfill end to end: a host users table in a real PostgreSQL or a
//! SQLite file, the sandbox over real HTTP, the backfill in process or as
//! the real binary (killed with SIGKILL mid-run), and `user-sync run`
//! beside it (PostgreSQL: on SQLite one process works on a file).

#[macro_use]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{Backend, Env};
use user_sync::config::ApiVersion;

const SETTLE: Duration = Duration::from_secs(30);
use tokio_util::sync::CancellationToken;
use user_sync::host::{self, BackfillOptions, Mode, OutputFormat, Summary};
use user_sync_sandbox::{FaultUpdate, SandboxOptions};

/// Host accounts `1..=n` in `public.accounts`:
/// - every 10th is closed;
/// - 7 and 17 have an email the API would refuse;
/// - 1001..=1005 repeat the emails of 1..=5 (another letter case): the
///   second of each pair is a conflict with the first;
/// - the usernames of 2001..=2020 are already held in Embedded by users the
///   worker did not create (the open ones are conflicts).
async fn host_accounts(env: &Env, n: i64) {
    let create = match env.backend {
        Backend::Postgres => [
            "CREATE TABLE public.accounts (
                 id bigint PRIMARY KEY, email text, display_name text, plan text,
                 closed_at timestamptz)",
            "INSERT INTO public.accounts (id, email, display_name, plan, closed_at)
             SELECT g, 'user' || g || '@example.com', 'User ' || g, 'free',
                    CASE WHEN g % 10 = 0 THEN now() END
             FROM generate_series(1, $1) AS g",
        ],
        Backend::Sqlite => [
            "CREATE TABLE accounts (
                 id INTEGER PRIMARY KEY, email TEXT, display_name TEXT, plan TEXT,
                 closed_at TEXT)",
            "INSERT INTO accounts (id, email, display_name, plan, closed_at)
             WITH RECURSIVE g(x) AS (SELECT 1 WHERE $1 >= 1
                                     UNION ALL SELECT x + 1 FROM g WHERE x < $1)
             SELECT x, 'user' || x || '@example.com', 'User ' || x, 'free',
                    CASE WHEN x % 10 = 0 THEN datetime('now') END
             FROM g",
        ],
    };
    let table = accounts(env);
    let update = [
        format!("UPDATE {table} SET email = 'not-an-email' WHERE id IN (7, 17)"),
        format!(
            "UPDATE {table} SET email = ' USER' || (id - 1000) || '@Example.com'
             WHERE id BETWEEN 1001 AND 1005"
        ),
    ];
    for statement in create.into_iter().map(str::to_owned).chain(update) {
        env.execute(&statement, n).await;
    }
    for id in 2001..=2020 {
        env.sandbox
            .insert_user(&format!("user{id}@example.com"), Some("Someone Else"));
    }
}

/// The id of the Embedded user holding `username`.
fn seeded_id(env: &Env, username: &str) -> String {
    env.sandbox
        .users()
        .into_iter()
        .find(|u| u.username == username)
        .expect("seeded")
        .user_id
}

/// What the accounts above must end in.
struct Expected {
    mapped: BTreeSet<String>,
    conflicts: BTreeSet<String>,
    closed: BTreeSet<String>,
}

fn expected(n: i64) -> Expected {
    let mut e = Expected {
        mapped: BTreeSet::new(),
        conflicts: BTreeSet::new(),
        closed: BTreeSet::new(),
    };
    for id in 1..=n {
        let host = id.to_string();
        if id % 10 == 0 {
            e.closed.insert(host);
        } else if id == 7 || id == 17 {
        } else if (1001..=1005).contains(&id) || (2001..=2020).contains(&id) {
            e.conflicts.insert(host);
        } else {
            e.mapped.insert(host);
        }
    }
    e
}

/// The host's users table, as the backend names it.
fn accounts(env: &Env) -> &'static str {
    match env.backend {
        Backend::Postgres => "public.accounts",
        Backend::Sqlite => "accounts",
    }
}

fn source_vars(env: &Env) -> Vec<(&'static str, &'static str)> {
    vec![
        ("USER_SYNC__SOURCE__TABLE", accounts(env)),
        ("USER_SYNC__SOURCE__NAME_COLUMN", "display_name"),
        (
            "USER_SYNC__SOURCE__CLOSED_CONDITION",
            "closed_at IS NOT NULL",
        ),
        ("USER_SYNC__SOURCE__PAGE_SIZE", "500"),
    ]
}

async fn backfill_with(
    env: &Env,
    extra: &[(&str, &str)],
    options: BackfillOptions,
) -> (Summary, String) {
    let mut vars = source_vars(env);
    vars.extend_from_slice(extra);
    let settings = env.settings_with(&vars);
    let mut out = Vec::new();
    let summary = host::run_backfill(&settings, &options, &mut out, CancellationToken::new())
        .await
        .expect("backfill runs");
    (summary, String::from_utf8_lossy(&out).into_owned())
}

fn options(mode: Mode) -> BackfillOptions {
    BackfillOptions {
        mode,
        progress: false,
        ..BackfillOptions::default()
    }
}

fn dry(mode: Mode, format: OutputFormat) -> BackfillOptions {
    BackfillOptions {
        dry_run: true,
        format,
        ..options(mode)
    }
}

fn mutating_calls(env: &Env) -> u64 {
    let stats = env.sandbox.stats();
    [
        "POST /users/",
        "POST /users/batch",
        "PUT /users/{id}",
        "DELETE /users/{id}",
    ]
    .iter()
    .map(|r| stats.route_total(r))
    .sum()
}

/// Every expected account mapped to the Embedded user holding its
/// username, one Embedded user per username, each conflict open once, no
/// closed account in Embedded.
async fn assert_final_state(env: &Env, e: &Expected) {
    let by_username: HashMap<String, String> = env
        .sandbox
        .users()
        .into_iter()
        .map(|u| (u.username.to_lowercase(), u.user_id))
        .collect();
    let synced: Vec<(String, String, String)> = env
        .rows(
            "SELECT host_user_id, embedded_user_id, username FROM user_sync.users
             WHERE state = 'synced'",
        )
        .await;
    let synced_hosts: BTreeSet<String> = synced.iter().map(|s| s.0.clone()).collect();
    assert_eq!(
        synced_hosts, e.mapped,
        "exactly the open accounts are mapped"
    );
    for (host, id, username) in &synced {
        assert_eq!(username, &format!("user{host}@example.com"));
        assert_eq!(by_username.get(username), Some(id), "host {host}");
    }
    // Seeded holders of 2001..=2020 plus one user per mapped account.
    assert_eq!(env.sandbox.users().len(), e.mapped.len() + 20);
    let conflicts = env.open_conflicts().await;
    let hosts: Vec<&String> = conflicts.iter().map(|c| &c.0).collect();
    let unique: BTreeSet<String> = hosts.iter().map(|h| (*h).clone()).collect();
    assert_eq!(hosts.len(), unique.len(), "each conflict reported once");
    assert_eq!(unique, e.conflicts, "no false conflict, none missing");
    for (host, username, reason, holder_host, holder_embedded) in &conflicts {
        let id: i64 = host.parse().expect("numeric host id");
        if id <= 1005 {
            assert_eq!(reason, "taken_by_host_user");
            assert_eq!(
                holder_host.as_deref(),
                Some((id - 1000).to_string().as_str())
            );
            assert_eq!(username, &format!("user{}@example.com", id - 1000));
        } else {
            assert_eq!(reason, "taken_in_embedded");
            assert_eq!(holder_embedded.as_ref(), by_username.get(username));
        }
    }
    for host in &e.closed {
        let id: i64 = host.parse().expect("numeric host id");
        let seeded = (2001..=2020).contains(&id);
        assert!(
            seeded || !by_username.contains_key(&format!("user{host}@example.com")),
            "closed account {host} has an Embedded user"
        );
    }
    assert_eq!(
        env.sandbox.stats().duplicate_attempts,
        0,
        "no create was sent twice"
    );
}

fn same_plan(dry: &Summary, real: &Summary) {
    assert_eq!(
        (
            dry.scanned,
            dry.in_sync,
            dry.created,
            dry.resumed,
            dry.adopted,
            dry.conflicts,
            dry.invalid
        ),
        (
            real.scanned,
            real.in_sync,
            real.created,
            real.resumed,
            real.adopted,
            real.conflicts,
            real.invalid
        ),
        "the dry run said what the real run did\n{dry:?}\n{real:?}"
    );
}

async fn backfill_both_ways(backend: Backend, version: ApiVersion, mode: Mode, n: i64) {
    let env = Env::start_speaking(backend, version, SandboxOptions::default()).await;
    host_accounts(&env, n).await;
    let e = expected(n);

    let (plan, listing) = backfill_with(&env, &[], dry(mode, OutputFormat::Csv)).await;
    assert_eq!(mutating_calls(&env), 0, "a dry run changes nothing");
    assert_eq!(env.sandbox.stats().total_requests, 1, "one GET /users");
    assert_eq!(plan.created, e.mapped.len() as u64);
    assert_eq!(plan.conflicts, e.conflicts.len() as u64);
    assert_eq!(plan.invalid, 2);
    assert_eq!(plan.closed_skipped, Some(e.closed.len() as u64));
    let rows: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(rows.len(), e.conflicts.len(), "{listing}");
    assert!(listing.starts_with("host_user_id,username,reason,"));
    assert!(rows.contains(&"1001,user1@example.com,taken_by_host_user,1,"));
    let stored = env.scalar("SELECT count(*) FROM user_sync.users").await;
    assert_eq!(stored, 0, "a dry run writes nothing");

    let (done, _) = backfill_with(&env, &[], options(mode)).await;
    same_plan(&plan, &done);
    assert!(done.failed_anything(), "the two invalid rows are failures");
    assert_eq!((done.failed, done.unresolved), (0, 0));
    assert_final_state(&env, &e).await;
    let stats = env.sandbox.stats();
    let (batches, singles) = (
        stats.route_total("POST /users/batch"),
        stats.route_total("POST /users/"),
    );
    if mode == Mode::Batch && version != ApiVersion::V2021_12 {
        assert_eq!(done.mode, "batch");
        assert!(batches <= (n as u64 / 1000) + 2, "{batches} batches");
        assert_eq!(singles, 0);
    } else {
        // Forge has no batch create: its batch mode creates one by one.
        assert_eq!(done.mode, "single");
        assert_eq!(batches, 0);
        assert_eq!(singles, e.mapped.len() as u64);
    }
    assert_eq!(
        stats.version_total(version.as_str()),
        stats.total_requests,
        "every request in the worker's version"
    );

    // Again: everything is in sync, nothing is sent, no new conflict row.
    let before = mutating_calls(&env);
    let (plan, _) = backfill_with(&env, &[], dry(mode, OutputFormat::Json)).await;
    let (again, _) = backfill_with(&env, &[], options(mode)).await;
    same_plan(&plan, &again);
    assert_eq!(again.in_sync, e.mapped.len() as u64);
    assert_eq!(again.created, 0);
    assert_eq!(mutating_calls(&env), before, "nothing sent again");
    assert_final_state(&env, &e).await;
    env.finish().await;
}

// Both modes and their dry runs, on every API version the worker speaks.
on_each_version!(
    batch_backfill_maps_every_open_account_and_reports_each_conflict_once,
    single_backfill_maps_every_open_account_and_reports_each_conflict_once,
);

on_each_backend!(
    batches_whose_answer_was_lost_are_confirmed_not_sent_twice,
    a_batch_backfill_killed_mid_run_resumes_without_duplicates,
    a_single_backfill_killed_mid_run_resumes_without_duplicates,
    adopt_existing_links_users_created_before_the_worker,
    adopt_existing_never_links_a_user_mapped_to_another_host_user,
    a_claim_is_adopted_only_when_the_user_holding_its_name_proves_it,
    a_bad_source_fails_at_start_naming_the_key,
    a_custom_query_source_is_paged_too,
    conflicts_the_backfill_found_can_be_retried_and_resolve_themselves,
);

async fn batch_backfill_maps_every_open_account_and_reports_each_conflict_once(
    backend: Backend,
    version: ApiVersion,
) {
    backfill_both_ways(backend, version, Mode::Batch, 3000).await;
}

async fn single_backfill_maps_every_open_account_and_reports_each_conflict_once(
    backend: Backend,
    version: ApiVersion,
) {
    backfill_both_ways(backend, version, Mode::Single, 2100).await;
}

async fn batches_whose_answer_was_lost_are_confirmed_not_sent_twice(backend: Backend) {
    let env = Env::start_on(backend, common::answers_lost()).await;
    host_accounts(&env, 2100).await;
    let e = expected(2100);
    // Every batch is applied and its connection cut: no answer, no ids.
    let (done, _) = backfill_with(&env, &[], options(Mode::Batch)).await;
    assert_eq!(done.created, e.mapped.len() as u64, "{done:?}");
    assert!(env.sandbox.stats().dropped >= 1);
    assert_final_state(&env, &e).await;
    env.finish().await;
}

/// Runs the real binary and kills it (SIGKILL) once the sandbox has
/// created `after_creates` users.
async fn kill_mid_run(env: &Env, args: &[&str], extra: &[(&str, &str)], after_creates: u64) {
    let mut vars = env.vars();
    for (k, v) in source_vars(env).iter().chain(extra) {
        vars.insert((*k).into(), (*v).into());
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_user-sync"))
        .arg("backfill")
        .arg("--no-progress")
        .args(args)
        .env_clear()
        .envs(&vars)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.sandbox.stats().creates < after_creates {
        assert!(Instant::now() < deadline, "the backfill never got going");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the backfill ended before it was killed: {status}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().await.expect("SIGKILL");
    // Whatever the killed process had on the wire lands before the rerun.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

async fn killed_then_run_again(
    backend: Backend,
    mode: Mode,
    n: i64,
    args: &[&str],
    extra: &[(&str, &str)],
) {
    let env = Env::start_on(backend, common::latency(20)).await;
    host_accounts(&env, n).await;
    let e = expected(n);
    kill_mid_run(&env, args, extra, 200).await;
    let created_before = env.sandbox.stats().creates;
    assert!(
        created_before < e.mapped.len() as u64,
        "killed too late to show anything"
    );
    let synced_before = env
        .scalar("SELECT count(*) FROM user_sync.users WHERE state = 'synced'")
        .await;
    env.sandbox.update_faults(FaultUpdate {
        latency_ms: Some(0),
        ..FaultUpdate::default()
    });

    let (plan, _) = backfill_with(&env, &[], dry(mode, OutputFormat::Text)).await;
    let (done, _) = backfill_with(&env, &[], options(mode)).await;
    same_plan(&plan, &done);
    assert_eq!(
        done.in_sync, synced_before as u64,
        "what the killed run completed is not done again"
    );
    assert_eq!(
        done.in_sync + done.resumed + done.created,
        e.mapped.len() as u64,
        "{done:?}"
    );
    assert_eq!(
        env.sandbox.stats().creates,
        e.mapped.len() as u64,
        "each user created exactly once over both runs"
    );
    assert_final_state(&env, &e).await;
    env.finish().await;
}

async fn a_batch_backfill_killed_mid_run_resumes_without_duplicates(backend: Backend) {
    killed_then_run_again(
        backend,
        Mode::Batch,
        3000,
        &["--batch-size", "100"],
        &[
            ("USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND", "4"),
            ("USER_SYNC__RATE_LIMIT__BURST", "1"),
        ],
    )
    .await;
}

async fn a_single_backfill_killed_mid_run_resumes_without_duplicates(backend: Backend) {
    killed_then_run_again(
        backend,
        Mode::Single,
        2100,
        &["--mode", "single"],
        &[
            ("USER_SYNC__RATE_LIMIT__REQUESTS_PER_SECOND", "100"),
            ("USER_SYNC__RATE_LIMIT__BURST", "10"),
        ],
    )
    .await;
}

async fn adopt_existing_links_users_created_before_the_worker(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 2100).await;
    let adopt = BackfillOptions {
        adopt_existing: true,
        ..options(Mode::Batch)
    };
    let (plan, _) = backfill_with(
        &env,
        &[],
        BackfillOptions {
            dry_run: true,
            ..adopt.clone()
        },
    )
    .await;
    let (done, _) = backfill_with(&env, &[], adopt).await;
    same_plan(&plan, &done);
    assert_eq!(done.adopted, 18, "the open accounts among 2001..=2020");
    assert_eq!(done.conflicts, 5, "only the duplicates within the host");
    for id in [2001, 2019] {
        let held = env
            .sandbox
            .users()
            .into_iter()
            .find(|u| u.username == format!("user{id}@example.com"))
            .expect("seeded");
        assert_eq!(env.embedded_id(&id.to_string()).await, Some(held.user_id));
    }
    env.finish().await;
}

/// An Embedded user already mapped to a host user under another username
/// (renamed outside the worker since) is never linked to a second host
/// user, adopted or found by an earlier run's claim: a conflict naming the
/// first.
async fn adopt_existing_never_links_a_user_mapped_to_another_host_user(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 2100).await;
    let seeded = |username: &str| seeded_id(&env, username);
    // 2001 finds its username held by a user mapped to 99999; 2002 had
    // claimed its username in an earlier run, and the user holding it now
    // is mapped to 99998.
    env.execute(
        &format!(
            "INSERT INTO user_sync.users (host_user_id, embedded_user_id, username, state)
             VALUES ('99999', '{}', 'before-the-rename@example.com', 'synced'),
                    ('99998', '{}', 'before-the-other-rename@example.com', 'synced')",
            seeded("user2001@example.com"),
            seeded("user2002@example.com")
        ),
        0,
    )
    .await;
    env.execute(
        "INSERT INTO user_sync.users (host_user_id, username, state)
         VALUES ('2002', 'user2002@example.com', 'creating')",
        0,
    )
    .await;
    let adopt = BackfillOptions {
        adopt_existing: true,
        ..options(Mode::Batch)
    };
    let (done, _) = backfill_with(&env, &[], adopt).await;
    assert_eq!(done.adopted, 16, "the open accounts among 2003..=2020");
    let conflicts = env.open_conflicts().await;
    for (host, holder) in [("2001", "99999"), ("2002", "99998")] {
        assert_eq!(env.embedded_id(host).await, None, "{host} is not mapped");
        let conflict = conflicts
            .iter()
            .find(|c| c.0 == host)
            .expect("a conflict for each");
        assert_eq!(conflict.2, "taken_by_host_user");
        assert_eq!(conflict.3.as_deref(), Some(holder));
    }
    env.finish().await;
}

async fn a_claim_is_adopted_only_when_the_user_holding_its_name_proves_it(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 2100).await;
    let seeded = |username: &str| seeded_id(&env, username);
    // Both claims were made a minute after the users now holding their
    // usernames (outside the worker). 2003's by a job that sent its create
    // first: that user is not its create's. 2004's right after a lookup saw
    // the username free: whatever holds it is its create's.
    let later = match env.backend {
        Backend::Postgres => "now() + interval '1 minute'",
        Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+60 seconds')",
    };
    env.execute(
        &format!(
            "INSERT INTO user_sync.users
                 (host_user_id, username, state, updated_at, username_seen_free)
             VALUES ('2003', 'user2003@example.com', 'creating', {later}, false),
                    ('2004', 'user2004@example.com', 'creating', {later}, true)"
        ),
        0,
    )
    .await;
    let (done, _) = backfill_with(&env, &[], options(Mode::Batch)).await;

    assert_eq!(env.embedded_id("2003").await, None, "never adopted");
    let conflicts = env.open_conflicts().await;
    let conflict = conflicts.iter().find(|c| c.0 == "2003").expect("2003's");
    assert_eq!(conflict.2, "unconfirmed_create");
    assert_eq!(
        conflict.4.as_deref(),
        Some(seeded("user2003@example.com").as_str())
    );
    assert_eq!(
        env.embedded_id("2004").await.as_deref(),
        Some(seeded("user2004@example.com").as_str())
    );
    assert_eq!(done.resumed, 1);
    for name in ["user2003@example.com", "user2004@example.com"] {
        let holders = env
            .sandbox
            .users()
            .into_iter()
            .filter(|u| u.username == name)
            .count();
        assert_eq!(holders, 1, "{name}: nothing created beside the holder");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_beside_the_pipeline_creates_no_duplicate() {
    let env = Env::start(SandboxOptions::default()).await;
    host_accounts(&env, 2100).await;
    let e = expected(2100);
    // The host also signs the same users up through the outbox while the
    // backfill runs, and a worker applies them.
    for id in (1..=2100).filter(|id| id % 3 == 0 && id % 10 != 0 && *id != 1005) {
        if e.mapped.contains(&id.to_string()) {
            env.signup(
                &id.to_string(),
                &format!("user{id}@example.com"),
                Some(&format!("User {id}")),
            )
            .await;
        }
    }
    let shutdown = CancellationToken::new();
    let worker = user_sync::app::Worker::start(&env.settings(), shutdown.clone())
        .await
        .expect("worker starts");
    let (done, _) = backfill_with(&env, &[], options(Mode::Batch)).await;
    env.settle(Duration::from_secs(60)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), worker.stopped())
        .await
        .expect("worker stops")
        .expect("no part of the worker stopped on its own");
    assert_eq!(done.failed, 0, "{done:?}");
    if done.unresolved > 0 {
        // Left to the jobs that held them; they are synced now.
        let (again, _) = backfill_with(&env, &[], options(Mode::Batch)).await;
        assert_eq!(again.created, 0);
    }
    assert_eq!(env.sandbox.stats().overlapping_user_requests, 0);
    assert_final_state(&env, &e).await;
    env.finish().await;
}

async fn a_bad_source_fails_at_start_naming_the_key(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 10).await;
    let missing_name = format!("SELECT id AS host_user_id, email FROM {}", accounts(&env));
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("USER_SYNC__SOURCE__TABLE", "public.nope")],
            "source.table",
        ),
        (
            &[("USER_SYNC__SOURCE__EMAIL_COLUMN", "mail")],
            "source.email_column",
        ),
        (
            &[("USER_SYNC__SOURCE__CLOSED_CONDITION", "closed_when IS NULL")],
            "source.closed_condition",
        ),
        (
            &[
                ("USER_SYNC__SOURCE__TABLE", ""),
                ("USER_SYNC__SOURCE__QUERY", missing_name.as_str()),
            ],
            "host_user_id, email and full_name",
        ),
    ];
    for (extra, key) in cases {
        let mut vars = source_vars(&env);
        vars.extend_from_slice(extra);
        let settings = env.settings_with(&vars);
        let error = host::run_backfill(
            &settings,
            &options(Mode::Batch),
            &mut Vec::new(),
            CancellationToken::new(),
        )
        .await
        .expect_err("a bad source is refused");
        assert!(format!("{error:#}").contains(key), "{key}: {error:#}");
    }
    assert_eq!(env.sandbox.stats().total_requests, 0, "nothing called");
    env.finish().await;
}

async fn a_custom_query_source_is_paged_too(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 1200).await;
    let query = format!(
        "SELECT id AS host_user_id, email, display_name AS full_name
         FROM {} WHERE closed_at IS NULL",
        accounts(&env)
    );
    let (done, _) = backfill_with(
        &env,
        &[
            ("USER_SYNC__SOURCE__TABLE", ""),
            ("USER_SYNC__SOURCE__QUERY", &query),
        ],
        options(Mode::Batch),
    )
    .await;
    let e = expected(1200);
    // Paged by host_user_id as text: "1001" comes before "2", so of each
    // duplicate pair the higher id is created and the lower one conflicts.
    assert_eq!(done.created, e.mapped.len() as u64);
    assert_eq!(done.conflicts, e.conflicts.len() as u64);
    assert_eq!(done.closed_skipped, None);
    let synced = env
        .scalar("SELECT count(*) FROM user_sync.users WHERE state = 'synced'")
        .await;
    assert_eq!(synced as usize, e.mapped.len());
    assert_eq!(env.sandbox.stats().duplicate_attempts, 0);
    env.finish().await;
}

async fn events(env: &Env) -> Vec<(String, String, Option<String>, Option<String>)> {
    env.rows("SELECT host_user_id, kind, email, full_name FROM user_sync.events ORDER BY id")
        .await
}

/// Installs (or with `drop`, removes) the triggers as `install-triggers`
/// does, twice: both are idempotent.
async fn triggers_twice(env: &Env, drop: bool) {
    let settings = env.settings_with(&source_vars(env));
    let target = settings.source.target().expect("a source");
    for _ in 0..2 {
        host::install_triggers(&env.db_pool, target, drop)
            .await
            .expect("the source checks, and the triggers install or drop");
    }
}

on_each_backend!(triggers_write_exactly_the_expected_events);

async fn triggers_write_exactly_the_expected_events(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 0).await;
    triggers_twice(&env, false).await;

    let table = accounts(&env);
    let now = match backend {
        Backend::Postgres => "now()",
        Backend::Sqlite => "datetime('now')",
    };
    for statement in [
        format!("INSERT INTO {table} (id, email, display_name) VALUES (1, 'a@x.io', 'A')"),
        format!(
            "INSERT INTO {table} (id, email, display_name, closed_at) VALUES (2, 'b@x.io', 'B', {now})"
        ),
        format!("UPDATE {table} SET plan = 'pro' WHERE id = 1"),
        format!("UPDATE {table} SET email = 'a2@x.io' WHERE id = 1"),
        format!("UPDATE {table} SET display_name = 'A Two' WHERE id = 1"),
        format!("UPDATE {table} SET display_name = 'A Two', plan = 'team' WHERE id = 1"),
        format!("UPDATE {table} SET closed_at = {now} WHERE id = 1"),
        format!("UPDATE {table} SET display_name = 'Closed' WHERE id = 1"),
        format!("UPDATE {table} SET closed_at = NULL WHERE id = 2"),
        format!("DELETE FROM {table} WHERE id = 2"),
        format!("DELETE FROM {table} WHERE id = 1"),
    ] {
        env.execute(&statement, 0).await;
    }

    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        events(&env).await,
        vec![
            ("1".into(), "signup".into(), s("a@x.io"), s("A")),
            ("1".into(), "profile_change".into(), s("a2@x.io"), s("A")),
            (
                "1".into(),
                "profile_change".into(),
                s("a2@x.io"),
                s("A Two")
            ),
            ("1".into(), "account_closure".into(), None, None),
            ("2".into(), "signup".into(), s("b@x.io"), s("B")),
            ("2".into(), "account_closure".into(), None, None),
        ]
    );

    triggers_twice(&env, true).await;
    env.execute(
        &format!("INSERT INTO {table} (id, email) VALUES (3, 'c@x.io')"),
        0,
    )
    .await;
    assert_eq!(events(&env).await.len(), 6, "no trigger after --drop");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_list_cut_mid_answer_is_read_again_never_used_in_part() {
    let env = Env::start(SandboxOptions::default()).await;
    // Unrelated Embedded users first, so that the holders of 2001..=2020
    // come late in the list, past the point where the first answer is cut.
    for i in 0..3000 {
        env.sandbox
            .insert_user(&format!("outsider{i}@example.com"), Some("Outsider"));
    }
    host_accounts(&env, 2100).await;
    let proxy = cut_first_list(env.sandbox.base_url().clone(), 16 * 1024).await;
    let base = proxy.url.to_string();
    let (plan, _) = backfill_with(
        &env,
        &[("USER_SYNC__EMBEDDED__BASE_URL", base.as_str())],
        dry(Mode::Batch, OutputFormat::Json),
    )
    .await;
    // The first answer was cut, the second read whole.
    assert_eq!(proxy.lists(), 2, "read again after the cut");
    assert_eq!(env.sandbox.stats().route_total("GET /users"), 2);
    assert_eq!(
        plan.conflicts,
        expected(2100).conflicts.len() as u64,
        "{plan:?}"
    );
    env.finish().await;
}

/// A proxy in front of the sandbox that cuts the first `GET /users` answer
/// after `keep` bytes, as a dropped connection would.
struct CuttingProxy {
    url: url::Url,
    /// `GET /users` requests it has passed on (only the first is cut).
    lists: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CuttingProxy {
    fn lists(&self) -> u64 {
        self.lists.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn cut_first_list(upstream: url::Url, keep: usize) -> CuttingProxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let url = url::Url::parse(&format!(
        "http://{}/",
        listener.local_addr().expect("proxy address")
    ))
    .expect("proxy url");
    let target = format!(
        "{}:{}",
        upstream.host_str().expect("sandbox host"),
        upstream.port().expect("sandbox port")
    );
    let lists = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = lists.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            let lists = counter.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let mut request = vec![0u8; 4096];
                let Ok(n) = client.read(&mut request).await else {
                    return;
                };
                let is_list = request[..n].starts_with(b"GET /users ");
                if server.write_all(&request[..n]).await.is_err() {
                    return;
                }
                if is_list && lists.fetch_add(1, Ordering::SeqCst) == 0 {
                    let mut answer = vec![0u8; keep];
                    let _ = server.read_exact(&mut answer).await;
                    let _ = client.write_all(&answer).await;
                    return; // both connections close: the answer is cut
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    CuttingProxy { url, lists }
}

/// A conflict the backfill found has an event of its own (the host user's
/// profile from its table, ended `conflict`): an operator's retry applies
/// it, and so does the worker once the other host user lets the username go.
async fn conflicts_the_backfill_found_can_be_retried_and_resolve_themselves(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    host_accounts(&env, 2003).await;
    let (done, _) = backfill_with(&env, &[], options(Mode::Batch)).await;
    assert_eq!(done.conflicts, 8, "{done:?}");
    let waiting: Vec<(i64, Option<i64>)> = env
        .rows(
            "SELECT id, event_id FROM user_sync.conflicts
             WHERE host_user_id IN ('1001', '2001') ORDER BY host_user_id",
        )
        .await;
    assert_eq!(waiting.len(), 2, "{waiting:?}");
    assert!(
        waiting.iter().all(|(_, event)| event.is_some()),
        "{waiting:?}"
    );

    // 1 closes its account: 1001, waiting for its username, is synced with
    // the profile its host row had.
    let run = common::process::Running::start(&env).await;
    env.closure("1").await;
    common::eventually(SETTLE, "1001 is synced", || async {
        env.embedded_id("1001").await.is_some()
    })
    .await;
    run.stop().await;
    let resolution: Vec<(String, Option<String>)> = env
        .rows(&format!(
            "SELECT status, resolution FROM user_sync.conflicts WHERE id = {}",
            waiting[0].0
        ))
        .await;
    assert_eq!(resolution, [("resolved".into(), Some("moot".into()))]);
    let made = env
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.username == "user1@example.com");
    assert_eq!(made.and_then(|u| u.full_name).as_deref(), Some("User 1001"));

    // 2001's username is held outside: freed by an operator, then retried.
    let holder = seeded_id(&env, "user2001@example.com");
    let api = common::client_of(&env.sandbox, common::KEY, None);
    let holder = user_sync::domain::EmbeddedUserId::parse(&holder).expect("an id");
    api.delete_user(&holder)
        .await
        .expect("the holder is deleted");
    let id = waiting[1].0.to_string();
    let retried =
        common::process::run_once(&env.vars(), &["conflicts", "resolve", &id, "--retry"]).await;
    assert!(retried.status.success(), "{retried}");
    assert!(env.embedded_id("2001").await.is_some());
    env.finish().await;
}

//! `user-sync demo`: the whole job on one machine with nothing but this
//! binary. A SQLite file stands in for a host product's database, the
//! sandbox for the Embedded API (with a modest rate limit and some server
//! errors), and the real pipeline runs between them: the backfill of the
//! historical accounts, then a burst of signups, profile changes and
//! closures through the outbox, applied by an in-process `user-sync run`.
//! It ends with a summary and checks of the outcome (exit status 1 when a
//! check fails).

mod seed;
mod summary;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use user_sync_sandbox::{Sandbox, SandboxOptions};

use crate::app::Worker;
use crate::config::{ApiVersion, Settings};
use crate::host::{self, BackfillOptions};
use crate::storage::{Database, Reports, SqliteStore};

pub use summary::Report;

/// The sandbox's limit: modest, so the worker meets `429`s and absorbs them.
const SANDBOX_RATE: u32 = 40;
/// The worker's own limit: above the sandbox's, on purpose.
const WORKER_RATE: u32 = 60;
/// Server errors the sandbox answers instead of doing anything.
const FAIL_RATE: f64 = 0.03;
/// The longest the live burst may take to be applied.
const SETTLE_LIMIT: Duration = Duration::from_secs(45);

/// What `user-sync demo` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where to create the SQLite database (default: a new temporary
    /// folder, removed at the end unless --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the database, to look at it with `user-sync status` and
    /// `user-sync conflicts` afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Historical accounts to seed, 200 to 100000.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(i64).range(200..=100_000))]
    pub users: i64,
    /// The API version the worker speaks (the sandbox serves them all):
    /// 2025-09, 2024-03, 2023-12 or 2021-12.
    #[arg(long, value_name = "VERSION", default_value = "2025-09", value_parser = parse_api_version)]
    pub api_version: ApiVersion,
}

fn parse_api_version(text: &str) -> Result<ApiVersion, String> {
    ApiVersion::parse(text)
        .ok_or_else(|| format!("supported versions: {}", ApiVersion::supported()))
}

/// Runs the demo; prints as it goes and returns the report. `cancel`
/// (Ctrl-C) stops it after the current step, and the temporary folder is
/// removed all the same.
pub async fn run(args: &DemoArgs, cancel: CancellationToken) -> anyhow::Result<Report> {
    let started = Instant::now();
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "user-sync-demo-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the folder {}", dir.display()))?;
    let db_file = dir.join("demo.db");
    anyhow::ensure!(
        !db_file.exists(),
        "{} already exists: give --dir an empty folder",
        db_file.display()
    );
    let result = demo(args, &dir, &db_file, started, cancel).await;
    if !args.keep && args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn demo(
    args: &DemoArgs,
    dir: &Path,
    db_file: &Path,
    started: Instant,
    cancel: CancellationToken,
) -> anyhow::Result<Report> {
    let api_key = format!("demo-{:016x}", rand::random::<u64>());
    let sandbox = Sandbox::start(
        "127.0.0.1:0".parse().context("sandbox address")?,
        SandboxOptions {
            api_key: api_key.clone(),
            rate_limit: Some(SANDBOX_RATE),
            fail_rate: FAIL_RATE,
            seed: Some(2025),
            ..SandboxOptions::default()
        },
    )
    .await
    .context("starting the sandbox")?;
    let database_url = format!("sqlite:{}", db_file.display());
    let settings = settings(dir, &database_url, &api_key, &sandbox, args.api_version)?;
    println!(
        "user-sync demo: a host product on SQLite ({}), the Embedded API simulated at {} \
         ({SANDBOX_RATE} requests/s, {:.0}% server errors), spoken in version {}",
        db_file.display(),
        sandbox.base_url(),
        FAIL_RATE * 100.0,
        args.api_version
    );

    let database = Database::connect(&settings.database, 4).await?;
    database.migrate().await?;
    let Database::Sqlite(pool) = database else {
        anyhow::bail!("the demo's database is a SQLite file");
    };
    let seeded = seed::accounts(&pool, args.users).await?;
    for id in seed::HELD_IN_EMBEDDED {
        // Created in Embedded a day before the worker, by someone else.
        sandbox.insert_user_made(
            &seed::email(id).trim().to_lowercase(),
            Some("Someone Else"),
            std::time::Duration::from_secs(86_400),
        );
    }
    println!(
        "\n1. Backfill: {} historical accounts ({} closed), {} of them with an email \
         someone else already has",
        seeded.accounts,
        seeded.closed,
        seeded.conflicts.len()
    );
    let backfill_started = Instant::now();
    let options = BackfillOptions {
        progress: true,
        ..BackfillOptions::default()
    };
    let backfilled =
        host::run_backfill(&settings, &options, &mut Vec::new(), cancel.clone()).await?;
    anyhow::ensure!(!cancel.is_cancelled(), "the demo was interrupted");
    let backfill_seconds = backfill_started.elapsed().as_secs_f64();
    if backfilled.mode != options.mode.as_str() {
        println!(
            "   (version {} has no batch create: one create per user, at the rate limit)",
            args.api_version
        );
    }
    println!(
        "   {} created, {} conflicts reported, {} closed accounts skipped, in {backfill_seconds:.1} s",
        backfilled.created,
        backfilled.conflicts,
        backfilled.closed_skipped.unwrap_or(0)
    );

    let size = (args.users / 20).clamp(30, 150);
    println!(
        "\n2. Live: `user-sync run` in this process; the host signs users up, changes \
         profiles and closes accounts, writing the outbox in the same transactions"
    );
    let shutdown = CancellationToken::new();
    let worker = Worker::start(&settings, shutdown.clone()).await?;
    let live_started = Instant::now();
    let burst = seed::burst(&pool, args.users, size).await?;
    let store = SqliteStore::new(pool.clone());
    let settled = settle(&store, &cancel).await;
    let live_seconds = live_started.elapsed().as_secs_f64();
    shutdown.cancel();
    let stopped = worker.stopped().await;
    settled?;
    stopped.map_err(|failure| anyhow::anyhow!("the demo's worker stopped early: {failure}"))?;
    println!(
        "   {} signups, {} profile changes, {} closures applied in {live_seconds:.1} s",
        burst.signups + burst.conflicting_signups.len() as i64,
        burst.profile_changes,
        burst.closures.len()
    );

    let report = summary::Report::gather(summary::Gathered {
        api_version: args.api_version,
        store: &store,
        pool: &pool,
        sandbox: &sandbox,
        seeded: &seeded,
        backfilled: &backfilled,
        burst: &burst,
        backfill_seconds,
        live_seconds,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
    .await?;
    print!("\n{}", report.render());
    if args.keep || args.dir.is_some() {
        println!(
            "\nThe database is kept in {}. Look at it with:\n  \
             DATABASE_URL={database_url} user-sync status\n  \
             DATABASE_URL={database_url} user-sync conflicts",
            dir.display()
        );
    }
    pool.close().await;
    sandbox.shutdown().await;
    Ok(report)
}

/// The worker's settings for the demo: the built-in defaults, the demo's
/// database and sandbox, and timings that fit a demo.
fn settings(
    dir: &Path,
    database_url: &str,
    api_key: &str,
    sandbox: &Sandbox,
    api_version: ApiVersion,
) -> anyhow::Result<Settings> {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DATABASE_URL".into(), database_url.into());
    vars.insert("EMBEDDED_API_KEY".into(), api_key.into());
    for (key, value) in [
        ("EMBEDDED__BASE_URL", sandbox.base_url().to_string()),
        ("EMBEDDED__API_VERSION", api_version.as_str().into()),
        ("HTTP__BIND", "127.0.0.1:0".into()),
        ("WORKER__CONCURRENCY", "8".into()),
        ("WORKER__MAX_ATTEMPTS", "20".into()),
        ("WORKER__BACKOFF_BASE_MS", "50".into()),
        ("WORKER__BACKOFF_CAP_MS", "1000".into()),
        ("WORKER__SHUTDOWN_TIMEOUT_MS", "5000".into()),
        ("DISPATCHER__POLL_INTERVAL_MS", "500".into()),
        ("SWEEPER__INTERVAL_MS", "2000".into()),
        ("SWEEPER__REDISPATCH_AFTER_MS", "15000".into()),
        ("RATE_LIMIT__REQUESTS_PER_SECOND", WORKER_RATE.to_string()),
        ("RATE_LIMIT__BURST", "10".into()),
        ("SOURCE__TABLE", "accounts".into()),
        ("SOURCE__NAME_COLUMN", "full_name".into()),
        ("SOURCE__CLOSED_CONDITION", "closed_at IS NOT NULL".into()),
    ] {
        vars.insert(format!("USER_SYNC__{key}"), value);
    }
    // The demo's own folder, not the working directory's config/: the demo
    // runs the same anywhere.
    Ok(Settings::load_from(dir, &vars)?)
}

/// Waits until the outbox has nothing pending.
async fn settle(store: &SqliteStore, cancel: &CancellationToken) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        anyhow::ensure!(!cancel.is_cancelled(), "the demo was interrupted");
        let pending = store.status().await?.pending_events;
        if pending == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < SETTLE_LIMIT,
            "{pending} events still pending after {SETTLE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

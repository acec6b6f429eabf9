//! The `user-sync` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;
use user_sync_sandbox::SandboxArgs;

use crate::app::Worker;
use crate::config::{ConfigError, LogFormat, LogSettings, Settings};
use crate::demo::{self, DemoArgs};
use crate::host::{self, BackfillOptions, Mode, OutputFormat};
use crate::ops::{self, ConflictFormat};
use crate::storage::{Database, Store};
use crate::telemetry;
use crate::webhooks::{self, ListFormat};

/// Keeps a host product's users in step with its Embedded iPaaS account.
///
/// Configuration: config/default.toml, then config/$USER_SYNC_ENV.toml, then
/// DATABASE_URL, REDIS_URL, EMBEDDED_API_KEY, then USER_SYNC__SECTION__KEY
/// variables (e.g. USER_SYNC__WORKER__CONCURRENCY=32). See README.md.
#[derive(Debug, Parser)]
#[command(name = "user-sync", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or upgrade schema `user_sync` in the host database.
    ///
    /// Idempotent and safe on every deploy: applied migrations are skipped,
    /// concurrent runs wait for each other, and the bookkeeping lives in
    /// `user_sync._sqlx_migrations`, apart from the host app's own. On
    /// SQLite the tables are prefixed `user_sync_` (the outbox is
    /// `user_sync_events`), with the queue's tables, and the bookkeeping is
    /// `user_sync_migrations`.
    Migrate,
    /// Run the worker: dispatcher, sweeper, sync jobs and the ops server.
    ///
    /// Needs DATABASE_URL, REDIS_URL and EMBEDDED_API_KEY (or their
    /// configuration keys) and a migrated database. Serves /healthz, /readyz
    /// and /metrics on http.bind. Start as many processes as you like on one
    /// database and one Redis. With DATABASE_URL=sqlite:FILE no Redis is
    /// used (the queue is in the same file) and one process works on a
    /// file: a second one refuses to start. SIGTERM or Ctrl-C stops taking
    /// work and lets running jobs finish (at most worker.shutdown_timeout_ms).
    Run,
    /// Print pending, failed and invalid events, synced users, open
    /// conflicts, erasures and the outbox lag.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List open username conflicts for reconciliation.
    ///
    /// Each row names the host user, the username (in clear: this report is
    /// for the people who resolve conflicts) and who holds it. Reasons:
    /// taken_by_host_user (another host user holds the username),
    /// taken_in_embedded (an Embedded user the worker did not create holds
    /// it), rename_refused (the API refused the change of username), and
    /// unconfirmed_create (a create's answer was lost, and the Embedded user
    /// found under the username is not proven the worker's own: see
    /// "Lost answers" in the README before adopting it).
    ///
    /// Example: DATABASE_URL=postgres://... user-sync conflicts --format json
    Conflicts {
        #[arg(long, value_enum, default_value_t = ConflictFormat::Table)]
        format: ConflictFormat,
    },
    /// List the webhooks not delivered to the host, or send them again.
    ///
    /// Lists every webhook still waiting for its next attempt (pending) or
    /// given up after webhooks.max_age_ms (abandoned): its id, webhook id
    /// (the webhook-id header, the same on every attempt), type, state,
    /// attempts, age and last error (an HTTP status or a transport error).
    /// Delivered webhooks are not listed.
    ///
    /// --redeliver sends each of them now, from this command, abandoned
    /// ones included, to webhooks.url (which must be set), skipping any
    /// that a running worker is sending at this moment; it prints how many
    /// were delivered and exits 1 when any still failed. Exits 2 when the
    /// configuration is bad, or with --redeliver when webhooks.url is
    /// empty.
    ///
    /// Example: DATABASE_URL=postgres://... user-sync webhooks --format json
    ///
    /// Example: USER_SYNC__WEBHOOKS__URL=https://host.example/hooks
    /// USER_SYNC_WEBHOOK_SECRET=whsec_... user-sync webhooks --redeliver
    Webhooks {
        /// A table to read, or a JSON array for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Send every listed webhook again now.
        #[arg(long)]
        redeliver: bool,
    },
    /// Serve a local, in-memory simulator of the Embedded Users API, with
    /// injectable faults (rate limits, 5xx, cut connections, latency).
    ///
    /// For tests, benchmarks and developing against the worker offline.
    /// Counters and fault controls are under /_admin/ (stats, users, faults, reset).
    Sandbox(SandboxArgs),
    /// Run the whole job on this machine, with nothing else installed: a
    /// SQLite host database with seeded users, the sandbox (rate-limited,
    /// with server errors), the backfill, then live signups, profile
    /// changes and closures through the outbox, and a checked summary.
    ///
    /// Exits 0 when every open account has its Embedded user or a reported
    /// conflict, every seeded conflict is reported and every closure is
    /// deleted; 1 otherwise.
    Demo(DemoArgs),
    /// Create an Embedded user for every open account of the host that has
    /// none (the accounts from before the worker).
    ///
    /// Reads the host's users as [source] describes them (a table, or a
    /// query), in keyset pages, and compares them with one GET /users.
    /// Users already synced are skipped; a username held by someone else
    /// is reported as a conflict (see `user-sync conflicts`); closed
    /// accounts are skipped. Safe to stop and run again at any point (no
    /// duplicate, no false conflict, no completed work repeated), and safe
    /// beside `user-sync run`. Exits 1 when any user failed or was left
    /// unresolved (conflicts are not failures), 2 on bad configuration.
    Backfill {
        /// batch: POST /users/batch, up to 1,000 users a call, then one
        /// GET /users to learn their ids (fast: 100,000 users in about 100
        /// calls). single: one POST /users/ per user, through the same job
        /// as a signup (one call per user).
        #[arg(long, value_enum, default_value_t = Mode::Batch)]
        mode: Mode,
        /// Change nothing: one GET /users, then print how many users would
        /// be created, are in sync, would be adopted, and every conflict.
        #[arg(long)]
        dry_run: bool,
        /// Link host users to Embedded users that already hold their
        /// username (created before the worker) instead of reporting
        /// conflicts.
        #[arg(long)]
        adopt_existing: bool,
        /// Users per POST /users/batch (batch mode), 1 to 1000.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch_size: u16,
        /// Output of the summary and of a dry run's conflict list.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// No progress bar, even on a terminal (log lines are written
        /// every few seconds when stderr is not a terminal).
        #[arg(long)]
        no_progress: bool,
    },
    /// Install triggers on the host's users table ([source] table) that
    /// write the outbox for the host.
    ///
    /// For hosts that cannot change their application code: an insert
    /// writes `signup`, a change of email or name `profile_change` (other
    /// changes write nothing), closing (source.closed_condition) or
    /// deleting a row `account_closure`. Idempotent: installing again
    /// replaces them. Needs a migrated database.
    InstallTriggers {
        /// Remove the triggers instead.
        #[arg(long)]
        drop: bool,
    },
}

/// Runs the command line and turns any failure into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {config}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sandbox(args) => {
            // The sandbox needs no configuration: it must start anywhere.
            telemetry::init(&LogSettings {
                format: LogFormat::Auto,
                level: "info".into(),
            });
            user_sync_sandbox::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            // Quiet logs: the demo tells its own story on stdout.
            telemetry::init(&LogSettings {
                format: LogFormat::Auto,
                level: "error".into(),
            });
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                stop.cancel();
            });
            let report = demo::run(&args, cancel).await?;
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Migrate => {
            let settings = load_settings()?;
            let database = Database::connect(&settings.database, 1).await?;
            let applied = database.migrate().await?;
            let up_to_date = match database {
                Database::Postgres(_) => "schema user_sync is up to date",
                Database::Sqlite(_) => "the user_sync_ tables are up to date",
            };
            println!("migrations applied: {applied} ({up_to_date})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let settings = load_settings()?;
            let shutdown = CancellationToken::new();
            let worker = Worker::start(&settings, shutdown.clone()).await?;
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested: no new work is taken");
                shutdown.cancel();
            });
            worker.stopped().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let status = store.status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", ops::status_table(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Backfill {
            mode,
            dry_run,
            adopt_existing,
            batch_size,
            format,
            no_progress,
        } => {
            let settings = load_settings()?;
            let options = BackfillOptions {
                mode,
                dry_run,
                adopt_existing,
                batch_size: usize::from(batch_size),
                format,
                progress: !no_progress,
            };
            let cancel = CancellationToken::new();
            let stop = cancel.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::warn!("stop requested: finishing the current step");
                stop.cancel();
            });
            let mut stdout = std::io::stdout();
            let summary = host::run_backfill(&settings, &options, &mut stdout, cancel).await?;
            Ok(if summary.failed_anything() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::InstallTriggers { drop } => {
            let settings = load_settings()?;
            let target = settings.source.target()?;
            let database = Database::connect(&settings.database, 1).await?;
            println!("{}", host::install_triggers(&database, target, drop).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Webhooks { format, redeliver } => {
            let settings = load_settings()?;
            let mut stdout = std::io::stdout();
            let settled = webhooks::run_command(&settings, format, redeliver, &mut stdout).await?;
            Ok(if settled {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Conflicts { format } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let rows = store.open_conflicts().await?;
            print!("{}", ops::render_conflicts(&rows, format)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The worker's tables for a report: a database never migrated (or behind
/// this binary) is refused with what to run, not with the SQL error its
/// first query would meet.
async fn open_store(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let database = Database::connect(&settings.database, 1).await?;
    database.check_current().await?;
    Ok(database.into_store())
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads the settings and starts logging as they say.
fn load_settings() -> anyhow::Result<Settings> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    Ok(settings)
}

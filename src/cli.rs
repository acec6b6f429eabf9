//! The `user-sync` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;

use crate::app::Worker;
use crate::config::{ConfigError, LogFormat, LogSettings, Settings};
use crate::embedded::sandbox::{self, SandboxArgs};
use crate::ops::status::{self, ConflictFormat, Status};
use crate::store;
use crate::telemetry;

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
    /// `user_sync._sqlx_migrations`, apart from the host app's own.
    Migrate,
    /// Run the worker: dispatcher, sweeper, sync jobs and the ops server.
    ///
    /// Needs DATABASE_URL, REDIS_URL and EMBEDDED_API_KEY (or their
    /// configuration keys) and a migrated database. Serves /healthz, /readyz
    /// and /metrics on http.bind. Start as many processes as you like on one
    /// database and one Redis. SIGTERM or Ctrl-C stops taking work and lets
    /// running jobs finish (at most worker.shutdown_timeout_ms).
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
    /// for the people who resolve conflicts) and who holds it.
    Conflicts {
        #[arg(long, value_enum, default_value_t = ConflictFormat::Table)]
        format: ConflictFormat,
    },
    /// Serve a local, in-memory simulator of the Embedded Users API, with
    /// injectable faults (rate limits, 5xx, cut connections, latency).
    ///
    /// For tests, benchmarks and developing against the worker offline.
    /// Counters and fault controls are under /_admin/ (stats, users, faults, reset).
    Sandbox(SandboxArgs),
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
            sandbox::serve(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let settings = load_settings()?;
            let pool = store::connect(&settings.database, 1).await?;
            let applied = store::migrate::run(&pool).await?;
            println!("migrations applied: {applied} (schema user_sync is up to date)");
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
            let pool = store::connect(&settings.database, 1).await?;
            let status = Status::load(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts { format } => {
            let settings = load_settings()?;
            let pool = store::connect(&settings.database, 1).await?;
            let rows = status::open_conflicts(&pool).await?;
            print!("{}", status::render_conflicts(&rows, format)?);
            Ok(ExitCode::SUCCESS)
        }
    }
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

//! The `user-sync` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, LogSettings, Settings};
use crate::embedded::sandbox::{self, SandboxArgs};
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
    }
}

/// Loads the settings and starts logging as they say.
#[allow(dead_code)]
fn load_settings() -> anyhow::Result<Settings> {
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    Ok(settings)
}

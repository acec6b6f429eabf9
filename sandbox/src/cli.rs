//! `user-sync sandbox`: its options and the command that serves until
//! stopped.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::{IdFormat, Sandbox, SandboxOptions};

/// Options of `user-sync sandbox`.
#[derive(Clone, clap::Args)]
pub struct SandboxArgs {
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    pub bind: SocketAddr,

    /// API key clients must send as `Authorization: Bearer <KEY>`.
    #[arg(
        long,
        value_name = "KEY",
        env = "SANDBOX_API_KEY",
        hide_env_values = true,
        default_value = "sandbox-key"
    )]
    pub api_key: String,

    /// When set, the `/_admin/` routes (stats, users, faults, reset) ask
    /// for it as `Authorization: Bearer <TOKEN>`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "SANDBOX_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// Admit at most N requests in any sliding one-second window and answer
    /// 429 beyond. No limit when absent.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,

    /// Answer 429 without a Retry-After header (the API documents none).
    #[arg(long)]
    pub no_retry_after: bool,

    /// Probability (0 to 1) of answering a request 500, 502 or 503 before
    /// doing anything.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub fail_rate: f64,

    /// Probability (0 to 1) that a create, update or delete is applied and
    /// its connection then cut without an answer.
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    pub drop_rate: f64,

    /// Delay before each API request is handled, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Status answered for a taken username (the API documents none).
    #[arg(
        long,
        value_name = "CODE",
        default_value = "409",
        value_parser = PossibleValuesParser::new(["400", "409", "422"]).try_map(|s| s.parse::<u16>())
    )]
    pub duplicate_status: u16,

    /// Refuse (400) any update that changes a username, as one of the API's
    /// guides says it does.
    #[arg(long)]
    pub refuse_rename: bool,

    /// Seed for fault draws and user ids, to replay a run.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// How user ids are minted: `objectid`, as the API's (24 hex digits
    /// whose first 8 are the creation second), or `uuid`, which carries no
    /// creation time (to try a client on ids it cannot read).
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "objectid",
        value_parser = PossibleValuesParser::new(["objectid", "uuid"]).try_map(|s| IdFormat::parse(&s).ok_or("objectid or uuid"))
    )]
    pub id_format: IdFormat,
}

impl fmt::Debug for SandboxArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxArgs")
            .field("bind", &self.bind)
            .field("options", &self.options())
            .finish()
    }
}

fn parse_probability(raw: &str) -> Result<f64, String> {
    let p: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err("expected a probability between 0 and 1".into())
    }
}

impl SandboxArgs {
    pub fn options(&self) -> SandboxOptions {
        SandboxOptions {
            api_key: self.api_key.clone(),
            rate_limit: self.rate_limit,
            retry_after: !self.no_retry_after,
            fail_rate: self.fail_rate,
            drop_rate: self.drop_rate,
            latency: Duration::from_millis(self.latency_ms),
            duplicate_status: self.duplicate_status,
            refuse_rename: self.refuse_rename,
            seed: self.seed,
            id_format: self.id_format,
            admin_token: self.admin_token.clone(),
        }
    }
}

/// Runs `user-sync sandbox` until Ctrl-C or SIGTERM.
pub async fn serve(args: SandboxArgs) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(args.bind, args.options())
        .await
        .with_context(|| format!("starting the sandbox on {}", args.bind))?;
    tracing::info!(
        addr = %sandbox.addr(),
        base_url = %sandbox.base_url(),
        versions = "2025-09 at /users (x-api-version), 2024-03 at /2024-03/users, \
                    2023-12 at /2023-12/users, 2021-12 at /forge/2021-12/user",
        rate_limit = ?args.rate_limit,
        retry_after = !args.no_retry_after,
        fail_rate = args.fail_rate,
        drop_rate = args.drop_rate,
        latency_ms = args.latency_ms,
        duplicate_status = args.duplicate_status,
        refuse_rename = args.refuse_rename,
        "sandbox listening"
    );
    let signal = stop_signal().await;
    tracing::info!("sandbox stopping");
    sandbox.shutdown().await;
    signal
}

/// Waits for Ctrl-C or, on Unix, SIGTERM.
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C")?,
            _ = terminate.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("listening for Ctrl-C")
    }
}

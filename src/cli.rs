//! The `user-sync` command line.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tokio_util::sync::CancellationToken;
use user_sync_sandbox::SandboxArgs;

use crate::app::Worker;
use crate::config::{ConfigError, DatabaseKind, LogFormat, LogSettings, Settings};
use crate::demo::{self, DemoArgs};
use crate::domain::{ConflictStatus, EventFilter, RetryTarget};
use crate::host::{self, BackfillOptions, Mode, OutputFormat};
use crate::ops::{self, Action, ListFormat, Reconciler};
use crate::storage::{Database, ErasureFilter, Operator, PgStore, ProcessLock, SqliteStore, Store};
use crate::telemetry;
use crate::webhooks;

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
    /// List username conflicts, or resolve one (`conflicts resolve`).
    ///
    /// Each row names the conflict's id, its age, the host user, the
    /// username (in clear: this report is for the people who resolve
    /// conflicts; logs, webhooks and metrics never show it) and who holds
    /// it. Reasons: taken_by_host_user (another host user holds the
    /// username), taken_in_embedded (an Embedded user the worker did not
    /// create holds it), rename_refused (the API refused the change of
    /// username), and unconfirmed_create (a create's answer was lost, and
    /// the Embedded user found under the username is not proven the
    /// worker's own: see "Lost answers" in the README before adopting it).
    /// A resolved conflict says how: adopted, retried, ignored or moot (its
    /// cause went away and the user synced, which the worker sees itself).
    ///
    /// Examples:
    ///   user-sync conflicts
    ///   user-sync conflicts --status all --format csv > conflicts.csv
    ///   user-sync conflicts resolve 42 --adopt --by alice --note "ticket 1234"
    #[command(args_conflicts_with_subcommands = true)]
    Conflicts {
        #[command(subcommand)]
        resolve: Option<ConflictsCommand>,
        /// Which conflicts to list.
        #[arg(long, value_enum, default_value_t = StatusArg::Open)]
        status: StatusArg,
        /// table for a terminal; json (an array of objects) or csv (safe to
        /// open in a spreadsheet) for other tools.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Everything about one host user: its Embedded user, recent events,
    /// conflicts and erasure record.
    ///
    /// The username is masked (a***@e***.com) unless --reveal: a support
    /// engineer looking a user up rarely needs it. Events show ids, states,
    /// attempts and reasons, never the email or name they carry.
    ///
    /// Example: user-sync show 4711 --format json
    Show {
        /// The host's id for the user.
        host_user_id: String,
        /// Show the username in clear.
        #[arg(long)]
        reveal: bool,
        /// The newest events shown.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=10000))]
        events: i64,
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
    },
    /// List outbox events, newest first: ids, states, attempts and reasons.
    ///
    /// Never prints an event's email or name.
    ///
    /// Examples:
    ///   user-sync events --state failed
    ///   user-sync events --host-user-id 4711 --format json
    ///   user-sync events --since 2026-11-30T00:00:00Z --limit 1000 --format csv
    Events {
        #[arg(long, value_enum)]
        state: Option<EventStateArg>,
        #[arg(long, value_name = "ID")]
        host_user_id: Option<String>,
        /// Only events that occurred at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100000))]
        limit: i64,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Send events again: the newest event of each user named goes back to
    /// pending at once, its attempts reset. Prints how many.
    ///
    /// --failed (or --state failed) retries every user whose newest event
    /// failed, after an outage or a fix; host user ids retry those users.
    /// The workers of `user-sync run` apply them.
    ///
    /// Examples:
    ///   user-sync retry --failed
    ///   user-sync retry --state invalid
    ///   user-sync retry 4711 4712
    Retry {
        /// Every user whose newest event failed.
        #[arg(long, conflicts_with_all = ["state", "host_user_ids"])]
        failed: bool,
        /// Every user whose newest event is in this state.
        #[arg(long, value_enum, conflicts_with = "host_user_ids")]
        state: Option<EventStateArg>,
        /// These host users.
        #[arg(value_name = "HOST_USER_ID")]
        host_user_ids: Vec<String>,
    },
    /// File a GDPR erasure request for each host user: its workflow logs and
    /// its Embedded user are deleted, its email and name removed from the
    /// worker's tables, and the erasure recorded as proof.
    ///
    /// Each request is an `account_closure` in the outbox, the same path and
    /// the same record as a closure written by the host; the workers of
    /// `user-sync run` carry it out. A host user with a closure pending
    /// already is not asked twice; one erased already (and not back since)
    /// is answered with its record. A host user the worker has never seen
    /// is recorded complete with outcome never_created: the proof that it
    /// was looked for. Prints ids and times only, never an email or a name.
    ///
    /// --file reads one host user id a line (`-`: standard input; blank
    /// lines skipped). --wait waits until every request is complete (at
    /// most --timeout seconds) and prints each record. Exits 0 when every
    /// request is filed (without --wait) or complete (with it), 1 when any
    /// is still pending at the timeout, 2 on bad input.
    ///
    /// Examples:
    ///   user-sync erase 4711 --wait
    ///   user-sync erase --file dpo-requests.txt --wait --timeout 3600
    ///   cut -d, -f1 closures.csv | user-sync erase --file -
    #[command(verbatim_doc_comment)]
    Erase {
        /// The host's ids for the users to erase.
        #[arg(value_name = "HOST_USER_ID")]
        host_user_ids: Vec<String>,
        /// Also read ids from this file, one a line (`-`: standard input).
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
        /// Wait until every request is complete, and print the records.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
        timeout: u64,
    },
    /// Export the proof of deletion: one line per completed erasure.
    ///
    /// Columns, in this order: host_user_id, embedded_user_id, outcome
    /// (deleted, already_absent or never_created), requested_at (when the
    /// closure was written), logs_deleted_at, logs_skipped (why the logs of
    /// a user that existed were not deleted: disabled by
    /// gdpr.delete_workflow_logs, or no_logs_call on an API version without
    /// that call), user_deleted_at, completed_at (RFC 3339, UTC; a step that
    /// did not apply is empty). Ids and times only: never an email or a
    /// name. --pending lists the requests not
    /// complete yet instead, with their age, whether they are older than
    /// gdpr.alert_after_s, and when gdpr.deadline_s falls due.
    ///
    /// Examples:
    ///   user-sync erasures --host-user-id 4711
    ///   user-sync erasures --since 2026-01-01T00:00:00Z --format csv > erasures.csv
    ///   user-sync erasures --pending
    #[command(verbatim_doc_comment)]
    Erasures {
        /// table for a terminal; json (an array of objects) or csv (safe to
        /// open in a spreadsheet) for other tools.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// Only erasures completed (with --pending: requested) at or after
        /// this time (RFC 3339).
        #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// One host user's only.
        #[arg(long, value_name = "ID")]
        host_user_id: Option<String>,
        /// The requests not complete yet, with their age.
        #[arg(long)]
        pending: bool,
    },
    /// Pause every process's calls to the Embedded API, deployment-wide.
    ///
    /// For an incident: an Embedded outage, a host deploy that writes wrong
    /// emails. Within a second every `user-sync run` stops calling the API
    /// and stops dispatching; events stay pending (nothing fails, nothing is
    /// lost) until `user-sync resume`. `status`, /metrics
    /// (`user_sync_paused`) and the console say since when and why;
    /// /readyz stays 200 (paused is not broken). Pausing again keeps the
    /// first time and takes the new reason.
    ///
    /// Example: user-sync pause --reason "INC-2231: host writes bad emails" --by alice
    Pause {
        /// Why, shown with the pause.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        /// Who pauses (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
    /// Lift `user-sync pause`: every process picks the pending events up.
    ///
    /// Example: user-sync resume
    Resume,
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
        #[arg(long, value_enum, default_value_t = webhooks::ListFormat::Table)]
        format: webhooks::ListFormat,
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

#[derive(Debug, Subcommand)]
enum ConflictsCommand {
    /// Resolve an open conflict: adopt, retry or ignore.
    ///
    /// --adopt (taken_in_embedded, unconfirmed_create): links the host user
    /// to the Embedded user holding the username, as if the worker had
    /// created it, and brings its fullName in line with one PUT. Refused for
    /// a username another host user holds (one Embedded user is never given
    /// to two host users), a host user that has an Embedded user already,
    /// or a holder that changed since the conflict was reported.
    ///
    /// --retry: for when you freed the username (deleted or renamed its
    /// holder in Embedded) or fixed the host's data: applies the host user's
    /// newest event now. The conflict resolves `retried` when the user
    /// syncs; otherwise it stays open, the attempt counted.
    ///
    /// --ignore: the host user stays without an Embedded user; later events
    /// with the same email do not reopen the conflict, a new email does.
    ///
    /// Prints the username in clear (this is for the people who resolve
    /// conflicts). Exits 0 when the conflict is resolved, 1 when it is not
    /// (refused, or the cause is still there), 2 on bad input. On SQLite,
    /// --adopt and --retry need `user-sync run` stopped on that file.
    ///
    /// Example: user-sync conflicts resolve 42 --retry --by alice --note "renamed the old account"
    Resolve {
        /// The conflict's id, from `user-sync conflicts`.
        id: i64,
        #[command(flatten)]
        action: ActionArg,
        /// Who resolves it, kept as resolved_by (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
        /// Why, kept with the conflict (never sent in webhooks).
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct ActionArg {
    /// Link the host user to the Embedded user holding the username.
    #[arg(long)]
    adopt: bool,
    /// Apply the host user's newest event again now.
    #[arg(long)]
    retry: bool,
    /// Leave the host user without an Embedded user under this username.
    #[arg(long)]
    ignore: bool,
}

impl ActionArg {
    fn action(&self) -> Action {
        if self.adopt {
            Action::Adopt
        } else if self.retry {
            Action::Retry
        } else {
            Action::Ignore
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ShowFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum EventStateArg {
    Pending,
    Applied,
    Superseded,
    Conflict,
    Failed,
    Invalid,
}

impl EventStateArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Superseded => "superseded",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
            Self::Invalid => "invalid",
        }
    }
}

fn parse_rfc3339(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&chrono::Utc))
        .map_err(|e| format!("expected a time like 2026-11-30T00:00:00Z: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatusArg {
    Open,
    Resolved,
    All,
}

impl From<StatusArg> for ConflictStatus {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Open => Self::Open,
            StatusArg::Resolved => Self::Resolved,
            StatusArg::All => Self::All,
        }
    }
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
            match worker.stopped().await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(failure) => {
                    eprintln!("error: {failure}");
                    Ok(ExitCode::FAILURE)
                }
            }
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
        Command::Show {
            host_user_id,
            reveal,
            events,
            format,
        } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let record = store.user_record(host_user_id.trim(), events).await?;
            match format {
                ShowFormat::Text => print!("{}", ops::render_user(&record, reveal)),
                ShowFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&ops::user_json(&record, reveal))?
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            state,
            host_user_id,
            since,
            limit,
            format,
        } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let filter = EventFilter {
                state: state.map(|s| s.as_str().to_owned()),
                host_user_id: host_user_id.map(|h| h.trim().to_owned()),
                since,
                limit,
            };
            let rows = store.events(&filter).await?;
            print!("{}", ops::render_events(&rows, format)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry {
            failed,
            state,
            host_user_ids,
        } => {
            let target = match (failed, state, host_user_ids.is_empty()) {
                (true, _, _) => RetryTarget::State("failed".into()),
                (false, Some(state), _) => RetryTarget::State(state.as_str().to_owned()),
                (false, None, false) => {
                    RetryTarget::Hosts(host_user_ids.iter().map(|h| h.trim().to_owned()).collect())
                }
                (false, None, true) => {
                    eprintln!("error: say what to retry: --failed, --state STATE or host user ids");
                    return Ok(ExitCode::from(2));
                }
            };
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let retried = store.retry_events(&target).await?;
            println!("{retried} events back to pending");
            Ok(ExitCode::SUCCESS)
        }
        Command::Erase {
            host_user_ids,
            file,
            wait,
            timeout,
        } => {
            erase(
                &host_user_ids,
                file.as_deref(),
                wait.then(|| Duration::from_secs(timeout)),
            )
            .await
        }
        Command::Erasures {
            format,
            since,
            host_user_id,
            pending,
        } => {
            let settings = load_settings()?;
            let database = Database::connect(&settings.database, 1).await?;
            database.check_current().await?;
            let store = database.erasures();
            let filter = ErasureFilter {
                since,
                host_user_id: host_user_id.map(|h| h.trim().to_owned()),
            };
            if pending {
                let rows = store.pending_erasures(&filter).await?;
                let now = chrono::Utc::now();
                print!(
                    "{}",
                    ops::render_pending(&rows, format, now, &settings.gdpr)?
                );
            } else {
                let rows = store.erasure_records(&filter).await?;
                print!("{}", ops::render_records(&rows, format)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { reason, by } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let by = operator_name(by);
            let pause = store.pause(&by, reason.as_deref()).await?;
            println!("paused: {}", ops::describe_pause(&pause));
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            match store.resume().await? {
                Some(pause) => println!("resumed (was {})", ops::describe_pause(&pause)),
                None => println!("not paused: nothing to resume"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            resolve: None,
            status,
            format,
        } => {
            let settings = load_settings()?;
            let store = open_store(&settings).await?;
            let rows = store.conflicts(status.into()).await?;
            print!(
                "{}",
                ops::render_conflicts(&rows, format, chrono::Utc::now())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Conflicts {
            resolve:
                Some(ConflictsCommand::Resolve {
                    id,
                    action,
                    by,
                    note,
                }),
            ..
        } => {
            let settings = load_settings()?;
            let by = operator_name(by);
            let operator = Operator {
                by: &by,
                note: note.as_deref(),
            };
            resolve_conflict(&settings, id, action.action(), operator).await
        }
    }
}

/// `user-sync conflicts resolve`: carries the action out on the backend
/// `database.url` names, and says how it went in one line.
async fn resolve_conflict(
    settings: &Settings,
    id: i64,
    action: Action,
    operator: Operator<'_>,
) -> anyhow::Result<ExitCode> {
    // On SQLite the per-user locks live in the process that holds the file:
    // an adoption or a retry runs only where no `run` does.
    let _file_lock = match (settings.database.kind()?, action) {
        (DatabaseKind::Sqlite, Action::Adopt | Action::Retry) => {
            Some(ProcessLock::acquire(&settings.database)?)
        }
        _ => None,
    };
    let database = Database::connect(&settings.database, 2).await?;
    database.check_current().await?;
    database
        .key_fingerprints(settings.fingerprint_key.as_ref())
        .await?;
    let result = match &database {
        Database::Postgres(pool) => {
            let store = Arc::new(PgStore::new(pool.clone()));
            Reconciler::new(store, settings)?
                .resolve(id, action, operator)
                .await?
        }
        Database::Sqlite(pool) => {
            let store = Arc::new(SqliteStore::new(pool.clone()));
            Reconciler::new(store, settings)?
                .resolve(id, action, operator)
                .await?
        }
    };
    database.close().await;
    let done = match result {
        Ok(done) => done,
        Err(refused) => {
            eprintln!("refused: {refused}");
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("{}", ops::describe_done(id, &done));
    Ok(if done.resolved() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `user-sync erase`: reads the ids (bad input exits 2 before anything is
/// filed), files the requests, and waits for them when asked.
async fn erase(
    given: &[String],
    file: Option<&std::path::Path>,
    wait: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let text = match file {
        None => None,
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                eprintln!("error: cannot read standard input: {e}");
                return Ok(ExitCode::from(2));
            }
            Some(text)
        }
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return Ok(ExitCode::from(2));
            }
        },
    };
    let hosts = match ops::parse_ids(given, text.as_deref()) {
        Ok(hosts) => hosts,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let settings = load_settings()?;
    let database = Database::connect(&settings.database, 1).await?;
    database.check_current().await?;
    let mut stdout = std::io::stdout();
    let end = ops::erase(database.erasures().as_ref(), &hosts, wait, &mut stdout).await?;
    Ok(match end {
        ops::EraseEnd::Done => ExitCode::SUCCESS,
        ops::EraseEnd::Pending => ExitCode::FAILURE,
    })
}

/// The worker's tables for a report: a database never migrated (or behind
/// this binary) is refused with what to run, not with the SQL error its
/// first query would meet.
async fn open_store(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let database = Database::connect(&settings.database, 1).await?;
    database.check_current().await?;
    Ok(database.into_store())
}

/// Who acts: `--by`, else `$USER`, else `operator`.
fn operator_name(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .map(|by| by.trim().to_owned())
        .filter(|by| !by.is_empty())
        .unwrap_or_else(|| "operator".into())
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

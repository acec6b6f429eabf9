//! `user-sync backfill`: gives every open account of the host an Embedded
//! user, resumably, and safely beside `user-sync run`.
//!
//! # How a run goes
//!
//! 1. `[source]` is checked against the database ([`HostTable`]).
//! 2. One `GET /users`, read as a stream into a temporary table: the
//!    snapshot of who holds which username in Embedded.
//! 3. The host's open accounts, in keyset pages. For each page, in a few
//!    statements: what the worker knows of each user (its row, who else
//!    holds its username, a pending closure), then [`decide::decide`].
//!    Every user the backfill may act on is locked first with the same
//!    per-user advisory lock as the jobs of `user-sync run`; a user a job
//!    holds is left to the job.
//! 4. Creates, under those locks, after the intent is recorded (`creating`,
//!    as the jobs do):
//!    - `--mode batch`: `POST /users/batch` with up to 1,000 users; the
//!      answer has no ids, so after the scan one more `GET /users` snapshot
//!      links every `creating` row to its user (`batch`);
//!    - `--mode single`: one `signup` outbox event per user, carried out by
//!      the pipeline's own job in this process (`single`). An API version
//!      without a batch create (2021-12) runs `--mode batch` this way, and
//!      says so at the start.
//!
//! # Killed at any point, run again
//!
//! A `creating` row is an intent whose outcome is unknown. The next run's
//! snapshot says which happened: a row whose username is in Embedded is
//! linked to that user (counted `resumed`, never a conflict and never
//! created again); one whose username is not is created again. Rows
//! already `synced` are skipped without a call. A dry run reads the same
//! way and decides with the same function, so its counts are what the real
//! run does next.
//!
//! # Files
//!
//! The run's course (open, snapshot, pages, finish) is here; the
//! backfill's session on each backend, and how it opens, in `db`; the
//! working tables in `snapshot`; what is done with one page in `page`; and
//! the calls through the process's gate, with their retries, in `api`. What
//! the run writes to the worker's tables is the storage's
//! (`storage::BackfillTables`).

mod api;
mod batch;
mod db;
mod decide;
mod page;
mod report;
mod single;
mod snapshot;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseKind, Settings};
use crate::domain::Intent;
use crate::domain::{HostUserId, Profile};
use crate::embedded::EmbeddedClient;
use crate::host::table::{HostTable, PageKey};
use crate::queue::Handler;
use crate::ratelimit::ApiGate;
use crate::storage::{BackfillTables, Database, ProcessLock, SyncStore};
use crate::sync::SyncContext;

pub use api::{Api, Resend};
use db::{BackfillDb, Opened};
use report::{Output, Progress};
pub use report::{OutputFormat, Summary};
use snapshot::WorkingTables;

/// How users are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// `POST /users/batch`, up to 1,000 users a call.
    #[default]
    Batch,
    /// One `POST /users/` per user, through the pipeline's job.
    Single,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Batch => "batch",
            Mode::Single => "single",
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub mode: Mode,
    /// Read and decide, change nothing: one `GET /users`, no other call.
    pub dry_run: bool,
    /// Link host users to Embedded users already holding their username
    /// instead of reporting conflicts.
    pub adopt_existing: bool,
    /// Users per `POST /users/batch`, 1 to 1,000.
    pub batch_size: usize,
    pub format: OutputFormat,
    /// A progress bar when stderr is a terminal (log lines otherwise).
    pub progress: bool,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        Self {
            mode: Mode::Batch,
            dry_run: false,
            adopt_existing: false,
            batch_size: crate::embedded::MAX_BATCH,
            format: OutputFormat::Text,
            progress: true,
        }
    }
}

/// Runs a backfill (or a dry run) and prints its report to `out`.
pub async fn run(
    settings: &Settings,
    options: &BackfillOptions,
    out: &mut (dyn Write + Send),
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let target = settings.source.target()?;
    anyhow::ensure!(
        (1..=crate::embedded::MAX_BATCH).contains(&options.batch_size),
        "--batch-size must be between 1 and {}",
        crate::embedded::MAX_BATCH
    );
    // The backend, chosen once for the run: the run is generic over the
    // backfill's session on it. On SQLite the file is this process's before
    // anything touches it, as for `run`.
    let file_lock = match settings.database.kind()? {
        DatabaseKind::Sqlite => Some(ProcessLock::acquire(&settings.database)?),
        DatabaseKind::Postgres => None,
    };
    let database =
        Database::connect(&settings.database, settings.worker.concurrency as u32 + 2).await?;
    database.check_current().await?;
    database
        .key_fingerprints(settings.fingerprint_key.as_ref())
        .await?;
    let summary = match &database {
        Database::Postgres(pool) => {
            let opened = db::open_postgres(pool, target).await?;
            run_on(opened, settings, options, out, cancel).await
        }
        Database::Sqlite(pool) => {
            database.check_current().await?;
            let opened = db::open_sqlite(pool, target).await?;
            run_on(opened, settings, options, out, cancel).await
        }
    };
    database.close().await;
    drop(file_lock);
    summary
}

/// [`run`] on the session it opened.
async fn run_on<D: BackfillDb, S: SyncStore>(
    opened: Opened<D, S>,
    settings: &Settings,
    options: &BackfillOptions,
    out: &mut (dyn Write + Send),
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let Opened {
        mut db,
        source,
        store,
    } = opened;
    let client = EmbeddedClient::new(&settings.embedded)?;
    let options = &mode_offered(options, &client);
    let gate = Arc::new(ApiGate::new(&settings.rate_limit));
    let total = source.count_open(db.conn()).await?;
    let started_at = db.tables().now().await?;
    db.conn().prepare().await?;

    let mut output = Output::new(out, options.format);
    let mut run = Run {
        db,
        source,
        api: Api {
            client: client.clone(),
            gate: gate.clone(),
            worker: settings.worker.clone(),
        },
        // For `--mode single`: the pipeline's job, on the pipeline's storage
        // (which shares the per-user locks with `db`).
        jobs: Handler::new(SyncContext::new(
            store,
            client,
            gate,
            settings.worker.clone(),
            settings.sync.clone(),
        )),
        sync: settings.sync.clone(),
        options: options.clone(),
        summary: Summary {
            dry_run: options.dry_run,
            mode: options.mode.as_str(),
            ..Summary::default()
        },
        progress: Progress::new(total, options.progress),
        cancel,
        started_at,
        page_size: settings.source.page_size,
        pending: Vec::new(),
        busy: Vec::new(),
        snoozed: Vec::new(),
    };
    let started = Instant::now();
    tracing::info!(
        mode = options.mode.as_str(),
        dry_run = options.dry_run,
        adopt_existing = options.adopt_existing,
        open_accounts = total,
        "backfill starting"
    );
    run.summary.closed_skipped = run.source.count_closed(run.db.conn()).await?;
    run.go(&mut output).await?;
    run.summary.elapsed_seconds = started.elapsed().as_secs_f64();
    run.progress.finish();
    run.db.conn().discard().await?;
    let summary = run.summary.clone();
    run.db.close().await;
    tracing::info!(
        scanned = summary.scanned,
        in_sync = summary.in_sync,
        created = summary.created,
        resumed = summary.resumed,
        adopted = summary.adopted,
        conflicts = summary.conflicts,
        invalid = summary.invalid,
        failed = summary.failed,
        unresolved = summary.unresolved,
        elapsed_seconds = summary.elapsed_seconds,
        "backfill finished"
    );
    output.finish(&summary)?;
    Ok(summary)
}

/// The options as the API version allows: one without a batch create
/// (2021-12) takes `--mode batch` as `--mode single`, one user at a time
/// through the pipeline's job at the rate limit, and says so at the start.
fn mode_offered(options: &BackfillOptions, client: &EmbeddedClient) -> BackfillOptions {
    let mut options = options.clone();
    if options.mode == Mode::Batch && !client.offers().batch_create {
        tracing::warn!(
            api_version = %client.version(),
            "this API version has no batch create: the backfill creates one user at a time \
             (--mode single), at the rate limit"
        );
        options.mode = Mode::Single;
    }
    options
}

/// A create waiting for its batch; its lock is held until the batch is
/// answered.
struct Pending {
    host: HostUserId,
    profile: Profile,
    /// The row was `creating` before this claim, with this intent: an
    /// earlier create of it may have happened after all.
    unconfirmed: Option<Intent>,
}

/// One backfill run.
struct Run<D> {
    /// The backfill's session: working tables and held user locks.
    db: D,
    source: HostTable,
    api: Api,
    /// For `--mode single`: the pipeline's job, run in this process.
    jobs: Handler,
    options: BackfillOptions,
    summary: Summary,
    progress: Progress,
    cancel: CancellationToken,
    /// The database's clock at the start: rows claimed since are this run's.
    started_at: chrono::DateTime<chrono::Utc>,
    /// `[sync]`: what a user found for a claim another process made is
    /// held against (see `domain::Provenance`).
    sync: crate::config::SyncSettings,
    page_size: u32,
    /// Batch mode: claimed creates not sent yet.
    pending: Vec<Pending>,
    /// Users a job of `user-sync run` held when the backfill came to them.
    busy: Vec<(HostUserId, Profile)>,
    /// Single mode: events whose job snoozed (rate limit, 5xx): (event, host).
    snoozed: Vec<(i64, HostUserId)>,
}

impl<D: BackfillDb> Run<D> {
    async fn go(&mut self, output: &mut Output<'_>) -> anyhow::Result<()> {
        self.load_snapshot().await?;
        self.scan(output).await?;
        if self.options.dry_run {
            return Ok(());
        }
        if !self.busy.is_empty() && !self.cancel.is_cancelled() {
            // The jobs that held them are most likely done by now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let busy = std::mem::take(&mut self.busy);
            self.summary.unresolved -= busy.len() as u64;
            self.act_on_page(busy).await?;
        }
        match self.options.mode {
            Mode::Batch => {
                self.flush().await?;
                self.confirm_creates().await?;
            }
            Mode::Single => self.retry_snoozed().await?,
        }
        self.summary.interrupted = self.cancel.is_cancelled();
        Ok(())
    }

    async fn scan(&mut self, output: &mut Output<'_>) -> anyhow::Result<()> {
        let without_id = self
            .source
            .count_without_id(self.db.conn())
            .await
            .context("reading the host's users ([source])")?;
        self.without_id(without_id);
        // The next page starts at the last id read (`>=`: rows after it may
        // share it), skipping the rows of that id already read, so that no
        // row is skipped unread and a page of one id, however many rows
        // share it, is never read forever.
        let mut cursor: Option<PageKey> = None;
        let mut read_at_cursor: u32 = 0;
        let mut previous: Option<PageKey> = None;
        loop {
            if self.cancel.is_cancelled() {
                tracing::warn!("backfill interrupted: stopping after the current page");
                self.summary.interrupted = true;
                return Ok(());
            }
            let limit = self.page_size.saturating_add(read_at_cursor);
            let mut rows = self
                .source
                .page(self.db.conn(), cursor.as_ref(), limit)
                .await
                .context("reading the host's users ([source])")?;
            let full = rows.len() == limit as usize;
            rows.drain(..rows.len().min(read_at_cursor as usize));
            // Every row of a page has an id, whatever it holds.
            let Some(last) = rows.last().map(|r| r.page_key.clone()) else {
                break;
            };
            let trailing = rows.iter().rev().take_while(|r| r.page_key == last).count();
            let trailing = u32::try_from(trailing).unwrap_or(u32::MAX);
            read_at_cursor = match cursor.as_ref() == Some(&last) {
                true => read_at_cursor.saturating_add(trailing),
                false => trailing,
            };
            let users = self.parse(rows, &mut previous);
            if self.options.dry_run {
                self.plan_page(users, output).await?;
            } else {
                self.act_on_page(users).await?;
            }
            self.progress.update(&self.summary, "scanning");
            if !full {
                break;
            }
            cursor = Some(last);
        }
        Ok(())
    }

    /// Fills the snapshot from `GET /users`, trying again while that may
    /// help.
    async fn load_snapshot(&mut self) -> anyhow::Result<u64> {
        let mut attempt = 0u32;
        loop {
            let api = &self.api;
            let stream = api
                .call(Resend::Always, || api.client.list_users_stream())
                .await
                .context("GET /users (the snapshot of Embedded users)")?;
            match self.db.conn().load(stream).await {
                Ok(n) => {
                    tracing::info!(embedded_users = n, "snapshot of Embedded users taken");
                    return Ok(n);
                }
                Err(snapshot::LoadError::Api(e))
                    if e.is_retryable() && attempt + 1 < self.api.worker.max_attempts =>
                {
                    tracing::warn!(error = %e, "GET /users was cut: reading it again");
                    tokio::time::sleep(self.api.policy().backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(anyhow::Error::new(e).context("reading GET /users")),
            }
        }
    }
}

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
//!      links every `creating` row to its user ([`batch`]);
//!    - `--mode single`: one `signup` outbox event per user, carried out by
//!      the pipeline's own job in this process ([`single`]).
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

mod batch;
mod db;
pub mod decide;
pub mod report;
mod single;
mod snapshot;
mod sqlite;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseKind, Settings, SourceTarget, WorkerSettings};
use crate::domain::{ConflictReason, FullName, HostUserId, Profile, UserState, Username};
use crate::embedded::{ApiError, EmbeddedClient, EmbeddedUser};
use crate::host::table::{HostRow, HostTable};
use crate::queue::Handler;
use crate::ratelimit::{ApiGate, GateRefusal};
use crate::retry::{Backoff, Retry, RetryPolicy};
use crate::storage::conflicts::NewConflict;
use crate::storage::pg::PgStore;
use crate::storage::sqlite::ProcessLock;
use crate::storage::sqlite::SqliteStore;
use crate::storage::users::Found;
use crate::storage::{self, Database};
use crate::sync::job::{self, SyncContext};

use db::{BackfillDb, PgBackfillDb};
use decide::{ConflictFound, Decision, decide};
use report::{ConflictLine, Output, Progress};
pub use report::{OutputFormat, Summary};

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
    fn as_str(self) -> &'static str {
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

/// Host users whose lock a job held, kept (ids and profiles) for one more
/// try at the end; beyond this many they are counted unresolved.
const MAX_BUSY_KEPT: usize = 10_000;

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
    let opened = match settings.database.kind()? {
        DatabaseKind::Postgres => open_postgres(settings, target).await?,
        DatabaseKind::Sqlite => sqlite::open(settings, target).await?,
    };
    let Opened {
        mut db,
        source,
        store,
        database,
        file_lock,
    } = opened;
    let client = EmbeddedClient::new(&settings.embedded)?;
    let gate = Arc::new(ApiGate::new(&settings.rate_limit));
    let total = db.count_open(&source).await?;
    let started_at = db.now().await?;
    db.prepare_snapshot().await?;

    let mut output = Output::new(out, options.format);
    let mut run = Run {
        db,
        source,
        api: Api {
            client: client.clone(),
            gate: gate.clone(),
            worker: settings.worker.clone(),
        },
        jobs: store.handler(client, gate, settings.worker.clone()),
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
    run.summary.closed_skipped = run.db.count_closed(&run.source).await?;
    run.go(&mut output).await?;
    run.summary.elapsed_seconds = started.elapsed().as_secs_f64();
    run.progress.finish();
    run.db.discard_snapshot().await?;
    let summary = run.summary.clone();
    run.db.close().await;
    database.close().await;
    drop(file_lock);
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

/// What a run works with, opened on the configured database.
struct Opened {
    db: Box<dyn BackfillDb>,
    source: HostTable,
    /// For `--mode single`: the pipeline's storage (sharing the per-user
    /// locks with `db`).
    store: JobStore,
    database: Database,
    /// On SQLite, this process's right to the file.
    file_lock: Option<ProcessLock>,
}

async fn open_postgres(settings: &Settings, target: &SourceTarget) -> anyhow::Result<Opened> {
    let pool =
        storage::pg::connect(&settings.database, settings.worker.concurrency as u32 + 2).await?;
    // The backfill's own session: its temporary tables and the locks of
    // the users it acts on live and die with it, so it never goes back to
    // the pool.
    let mut conn = pool.acquire().await?.detach();
    let migrated: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('user_sync.users')::text")
            .fetch_one(&mut conn)
            .await?;
    anyhow::ensure!(
        migrated.is_some(),
        "schema user_sync is missing: run `user-sync migrate` first"
    );
    let source = HostTable::check(&mut conn, target).await?;
    Ok(Opened {
        db: Box::new(PgBackfillDb { conn }),
        source,
        store: JobStore::Pg(Arc::new(PgStore::new(pool.clone()))),
        database: Database::Postgres(pool),
        file_lock: None,
    })
}

/// The pipeline's storage a `--mode single` run hands its jobs to, on the
/// backend the run opened.
enum JobStore {
    Pg(Arc<PgStore>),
    Sqlite(Arc<SqliteStore>),
}

impl JobStore {
    fn handler(self, api: EmbeddedClient, gate: Arc<ApiGate>, worker: WorkerSettings) -> Handler {
        match self {
            Self::Pg(store) => Handler::new(SyncContext::new(store, api, gate, worker)),
            Self::Sqlite(store) => Handler::new(SyncContext::new(store, api, gate, worker)),
        }
    }
}

/// A create waiting for its batch; its lock is held until the batch is
/// answered.
struct Pending {
    host: HostUserId,
    profile: Profile,
    /// The row was `creating` before this claim: an earlier create of it
    /// may have happened after all.
    unconfirmed: bool,
}

/// One backfill run.
struct Run {
    /// The backfill's session: working tables and held user locks.
    db: Box<dyn BackfillDb>,
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
    page_size: u32,
    /// Batch mode: claimed creates not sent yet.
    pending: Vec<Pending>,
    /// Users a job of `user-sync run` held when the backfill came to them.
    busy: Vec<(HostUserId, Profile)>,
    /// Single mode: events whose job snoozed (rate limit, 5xx): (event, host).
    snoozed: Vec<(i64, HostUserId)>,
}

impl Run {
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
        let mut cursor: Option<String> = None;
        loop {
            if self.cancel.is_cancelled() {
                tracing::warn!("backfill interrupted: stopping after the current page");
                self.summary.interrupted = true;
                return Ok(());
            }
            let rows = self
                .db
                .page(&self.source, cursor.as_deref(), self.page_size)
                .await
                .context("reading the host's users ([source])")?;
            let Some(last) = rows.iter().rev().find_map(|r| r.host_user_id.clone()) else {
                self.parse(rows);
                break;
            };
            let full = rows.len() as u32 == self.page_size;
            let users = self.parse(rows);
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

    /// Parses a page; rows the API would refuse are counted and logged.
    fn parse(&mut self, rows: Vec<HostRow>) -> Vec<(HostUserId, Profile)> {
        let mut users = Vec::with_capacity(rows.len());
        for row in rows {
            self.summary.scanned += 1;
            let host = match HostUserId::parse(row.host_user_id.as_deref().unwrap_or("")) {
                Ok(host) => host,
                Err(reason) => {
                    self.summary.invalid += 1;
                    tracing::warn!(%reason, "host user skipped: no usable id");
                    continue;
                }
            };
            let profile =
                Username::from_email(row.email.as_deref().unwrap_or("")).and_then(|username| {
                    Ok(Profile {
                        username,
                        full_name: FullName::parse_optional(row.full_name.as_deref())?,
                    })
                });
            match profile {
                Ok(profile) => users.push((host, profile)),
                Err(reason) => {
                    self.summary.invalid += 1;
                    tracing::warn!(host_user_id = %host, %reason, "host user skipped: invalid data");
                }
            }
        }
        users
    }

    /// Dry run: decide, count, list conflicts; write nothing but the plan.
    async fn plan_page(
        &mut self,
        users: Vec<(HostUserId, Profile)>,
        output: &mut Output<'_>,
    ) -> anyhow::Result<()> {
        let known = self.db.lookup(&users).await?;
        let mut first_of: HashMap<&Username, &HostUserId> = HashMap::new();
        let mut planned = Vec::new();
        for ((host, want), known) in users.iter().zip(&known) {
            let decision = within_page(
                decide(host, want, known, self.options.adopt_existing),
                host,
                want,
                &mut first_of,
            );
            match decision {
                Decision::InSync => self.summary.in_sync += 1,
                Decision::Closed => self.summary.closing += 1,
                Decision::Adopt { resumed: true, .. } => self.summary.resumed += 1,
                Decision::Adopt { resumed: false, .. } => self.summary.adopted += 1,
                Decision::Conflict(c) => {
                    self.summary.conflicts += 1;
                    output.conflict(&ConflictLine::new(host, &c))?;
                }
                Decision::Create => {
                    self.summary.created += 1;
                    planned.push((want.username.as_str(), host.as_str()));
                }
            }
        }
        self.db.plan_creates(&planned).await?;
        Ok(())
    }

    /// Real run: lock, decide under the lock, act.
    async fn act_on_page(&mut self, users: Vec<(HostUserId, Profile)>) -> anyhow::Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        // Users already synced need no lock: only a closure changes that,
        // and it is the pipeline's.
        let known = self.db.lookup(&users).await?;
        let mut todo = Vec::with_capacity(users.len());
        for (user, known) in users.into_iter().zip(known) {
            if !known.closing && known.state.as_deref() == Some("synced") {
                self.summary.in_sync += 1;
            } else {
                todo.push(user);
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = todo.iter().map(|(h, _)| h.as_str()).collect();
        let locked: std::collections::HashSet<String> =
            self.db.try_lock_many(&ids).await?.into_iter().collect();
        let (mine, busy): (Vec<_>, Vec<_>) = todo
            .into_iter()
            .partition(|(h, _)| locked.contains(h.as_str()));
        for (host, profile) in busy {
            tracing::debug!(host_user_id = %host, "a job holds this user: left for later");
            self.summary.unresolved += 1;
            if self.busy.len() < MAX_BUSY_KEPT {
                self.busy.push((host, profile));
            }
        }
        // On an error the run ends, and the session's locks go with its
        // connection.
        self.act_locked(&mine).await
    }

    async fn act_locked(&mut self, mine: &[(HostUserId, Profile)]) -> anyhow::Result<()> {
        let known = self.db.lookup(mine).await?;
        let mut first_of: HashMap<&Username, &HostUserId> = HashMap::new();
        let mut adopt: Vec<(&HostUserId, EmbeddedUser)> = Vec::new();
        let mut creates: Vec<(&HostUserId, &Profile, bool)> = Vec::new();
        let mut release: Vec<&str> = Vec::new();
        for ((host, want), known) in mine.iter().zip(&known) {
            let decision = within_page(
                decide(host, want, known, self.options.adopt_existing),
                host,
                want,
                &mut first_of,
            );
            match decision {
                Decision::Create => {
                    creates.push((host, want, known.state.as_deref() == Some("creating")));
                    continue;
                }
                Decision::InSync => self.summary.in_sync += 1,
                Decision::Closed => self.summary.closing += 1,
                Decision::Adopt { user, resumed } => {
                    if resumed {
                        self.summary.resumed += 1;
                    } else {
                        self.summary.adopted += 1;
                    }
                    adopt.push((host, user));
                }
                Decision::Conflict(c) => self.conflict(host, &c).await?,
            }
            release.push(host.as_str());
        }
        self.adopt(&adopt).await?;
        match self.options.mode {
            Mode::Batch => {
                let claimed = self.claim(&creates).await?;
                let claimed_hosts: std::collections::HashSet<&str> =
                    claimed.iter().map(|p| p.host.as_str()).collect();
                release.extend(
                    creates
                        .iter()
                        .map(|(h, _, _)| h.as_str())
                        .filter(|h| !claimed_hosts.contains(h)),
                );
                self.db.unlock_many(&release).await?;
                for pending in claimed {
                    self.pending.push(pending);
                    if self.pending.len() >= self.options.batch_size {
                        self.flush().await?;
                    }
                }
            }
            Mode::Single => {
                let events = self.db.record_signups(&creates).await?;
                release.extend(creates.iter().map(|(h, _, _)| h.as_str()));
                self.db.unlock_many(&release).await?;
                self.run_jobs(events).await?;
            }
        }
        Ok(())
    }

    /// Records each host user as synced with its Embedded user, in one
    /// statement.
    async fn mark_linked<H: std::borrow::Borrow<HostUserId>>(
        &mut self,
        linked: &[(H, EmbeddedUser)],
    ) -> anyhow::Result<()> {
        let profiles: Vec<Profile> = linked.iter().map(|(_, u)| profile_of(u)).collect();
        let found: Vec<Found<'_>> = linked
            .iter()
            .zip(&profiles)
            .map(|((host, user), profile)| Found {
                host: host.borrow(),
                user: &user.user_id,
                profile,
            })
            .collect();
        self.db.mark_synced_many(&found).await?;
        Ok(())
    }

    /// Links host users to Embedded users found holding their username.
    async fn adopt(&mut self, adopt: &[(&HostUserId, EmbeddedUser)]) -> anyhow::Result<()> {
        self.mark_linked(adopt).await?;
        for (host, user) in adopt {
            tracing::debug!(host_user_id = %host, embedded_user_id = %user.user_id, "linked to an existing Embedded user");
        }
        Ok(())
    }

    /// Records and reports a conflict, once, as the pipeline does.
    async fn conflict(&mut self, host: &HostUserId, c: &ConflictFound) -> anyhow::Result<()> {
        self.db.set_without_user(host, UserState::Conflict).await?;
        let conflict = NewConflict {
            host,
            username: &c.username,
            reason: c.reason,
            holder_host_user_id: c.holder_host_user_id.as_ref(),
            holder_embedded_user_id: c.holder_embedded_user_id.as_ref(),
            event_id: None,
        };
        if self.db.report_conflict(&conflict).await? {
            job::reported(&conflict);
        }
        self.summary.conflicts += 1;
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
            match self.db.load_snapshot(stream).await {
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

/// A second host user of one page with the same username conflicts with
/// the first, as the claim of the first would make it.
fn within_page<'a>(
    decision: Decision,
    host: &'a HostUserId,
    want: &'a Profile,
    first_of: &mut HashMap<&'a Username, &'a HostUserId>,
) -> Decision {
    if decision != Decision::Create {
        return decision;
    }
    match first_of.get(&want.username) {
        Some(first) => Decision::Conflict(ConflictFound {
            username: want.username.clone(),
            reason: ConflictReason::TakenByHostUser,
            holder_host_user_id: Some((*first).clone()),
            holder_embedded_user_id: None,
        }),
        None => {
            first_of.insert(&want.username, host);
            decision
        }
    }
}

fn profile_of(user: &EmbeddedUser) -> Profile {
    Profile {
        username: user.username.clone(),
        full_name: user.full_name.clone(),
    }
}

/// When a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads: any retryable failure.
    Always,
    /// Creates: only when nothing can have been applied (`429`, or no
    /// connection); a maybe-applied create is confirmed from `GET /users`.
    UnlessApplied,
}

/// The API through the process's gate, as the jobs call it: `acquire`
/// before each call, `observe` after each error.
struct Api {
    client: EmbeddedClient,
    gate: Arc<ApiGate>,
    worker: WorkerSettings,
}

/// A foreground run waits at most this long between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Api {
    async fn call<T, F, Fut>(&self, retry: Resend, make: F) -> Result<T, ApiError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        loop {
            match self.gate.acquire().await {
                Ok(()) => {}
                Err(GateRefusal::Backoff(wait)) => {
                    // A foreground run has no slot to give back: it waits.
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(GateRefusal::AuthPaused) => {
                    return Err(ApiError::Unauthorized { status: 401 });
                }
            }
            let error = match make().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            self.gate.observe(&error);
            // A refused key ends a foreground run, and a create that may
            // have been applied is confirmed from `GET /users`, never sent
            // again.
            if error.is_auth() || (retry == Resend::UnlessApplied && error.outcome_unknown()) {
                return Err(error);
            }
            match self.policy().after_error(&error, failures) {
                Retry::GiveUp { .. } => return Err(error),
                Retry::After {
                    counts_attempt: true,
                    after,
                    ..
                } => {
                    failures += 1;
                    tokio::time::sleep(after).await;
                }
                // The gate now pauses every call for the hinted time.
                Retry::After { .. } => {
                    rate_limited += 1;
                    if rate_limited >= self.worker.max_attempts.saturating_mul(10) {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// The worker's policy, with waits a foreground run can sit through.
    fn policy(&self) -> RetryPolicy {
        let mut policy = RetryPolicy::new(&self.worker);
        policy.backoff = Backoff::new(
            self.worker.backoff_base,
            self.worker.backoff_cap.min(MAX_BACKOFF),
        );
        policy
    }
}

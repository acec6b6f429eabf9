//! The job queue between the dispatcher and the sync workers: apalis, on
//! Redis beside PostgreSQL ([`RedisQueue`]), or in the same SQLite file as
//! the worker's tables ([`SqliteQueue`]).
//!
//! The queue only carries work; the database holds the truth. A job is a
//! [`SyncJob`] (ids only), so a lost job loses nothing the sweeper cannot
//! dispatch again.

mod job;
mod redis;
mod sqlite;

pub use self::job::{JobEvent, SyncJob};
pub use self::redis::RedisQueue;
pub use self::sqlite::SqliteQueue;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Data, WorkerError};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

/// How often a worker proves it is alive; a worker silent for
/// `HEARTBEAT * MISSED_HEARTBEATS` (9 s) has its jobs handed to the others,
/// which take them at their next heartbeat at the latest. A worker that is
/// only slow and loses its jobs this way costs a repeated job, which finds
/// its events done.
const HEARTBEAT: Duration = Duration::from_secs(3);
const MISSED_HEARTBEATS: usize = 3;

/// Where the dispatcher puts jobs. Behind a trait so the pipeline does not
/// care which queue carries them.
pub trait JobQueue: Send + Sync {
    /// Enqueues all `jobs`, or none on an error.
    fn push(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>> {
        if jobs.is_empty() {
            return Box::pin(std::future::ready(Ok(())));
        }
        self.push_some(jobs)
    }
    /// [`Self::push`] of one job or more.
    fn push_some(&self, jobs: Vec<SyncJob>) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Whether the queue answers.
    fn ping(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Jobs waiting to be taken.
    fn depth(&self) -> BoxFuture<'_, anyhow::Result<u64>>;
    /// Drops what finished jobs left behind; returns how many jobs.
    fn vacuum(&self) -> BoxFuture<'_, anyhow::Result<usize>>;
    /// Whether the queue lost every job it held since any process last
    /// asked: its server was flushed, restarted or replaced by another
    /// (a failover). One caller is told of each loss; the others, and
    /// every later call, get `false`. A queue that cannot lose jobs apart
    /// from the database says `false`.
    fn jobs_lost(&self) -> BoxFuture<'_, anyhow::Result<QueueLoss>> {
        Box::pin(std::future::ready(Ok(QueueLoss::None)))
    }
    /// Whether the queue holds no job at all: none waiting, none scheduled
    /// for a retry and none taken by a worker, dead or alive. An event
    /// dispatched a while ago and still pending then has no job anywhere.
    fn holds_no_jobs(&self) -> BoxFuture<'_, anyhow::Result<bool>>;
}

/// What [`JobQueue::jobs_lost`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLoss {
    None,
    /// The queue's marker is gone: the server was flushed or restarted
    /// empty (or this is the first process the queue has seen).
    Emptied,
    /// Another server answers than the one that held the jobs: a failover
    /// or a restart, which may have lost the newest jobs.
    ServerChanged,
}

/// A queue whose workers a process runs: Redis's or the SQLite file's.
pub trait WorkerQueue: JobQueue + Clone + 'static {
    /// Runs `workers.concurrency` sync jobs at a time until their shutdown,
    /// then lets the running ones finish for at most their grace; a worker
    /// that stops on an error restarts after a pause.
    fn run_workers(&self, workers: &Workers) -> impl Future<Output = ()> + Send;
}

/// What the queue's workers run for each job they take. The queue knows
/// jobs only as ids; what a job does is the handler's.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one job. An `Err` means the job could not reach what it needs
    /// (the database): the queue runs it again later, and its unfinished
    /// events stay pending meanwhile.
    fn run(&self, job: SyncJob) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// The handler as the queue's workers share it. A type of its own, not an
/// alias: apalis needs the data it hands to jobs to name no lifetime.
#[derive(Clone)]
pub struct Handler(Arc<dyn JobHandler>);

impl Handler {
    pub fn new(handler: impl JobHandler) -> Self {
        Self(Arc::new(handler))
    }

    /// Runs `job` (the queue's workers do it for each job they take; the
    /// backfill's single mode for the jobs it makes itself).
    pub fn run(&self, job: SyncJob) -> BoxFuture<'static, anyhow::Result<()>> {
        self.0.run(job)
    }
}

/// A worker name unique to this process, readable in `CLIENT LIST` and logs.
pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    let nonce: u32 = rand::random();
    format!("user-sync-{host}-{}-{nonce:08x}", std::process::id())
}

/// The queue's workers of one process: what every run of them takes.
pub struct Workers {
    /// The name they register under (see [`worker_name`]).
    pub name: String,
    pub handler: Handler,
    /// Jobs run at once.
    pub concurrency: usize,
    /// Stops them taking work.
    pub shutdown: CancellationToken,
    /// How long the running jobs may take to finish after the shutdown.
    pub grace: Duration,
}

impl Workers {
    /// Runs the workers until the shutdown: `run_once` runs them on a fresh
    /// backend and says how that ended, and a failure restarts them after
    /// a pause (longer after each failure).
    async fn keep_running<F, Fut>(&self, mut run_once: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Ended>,
    {
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            let ended = run_once().await;
            if restart_after(ended, &self.shutdown, &mut failures).await {
                return;
            }
        }
    }
}

/// How a run of an apalis worker ended.
enum Ended {
    /// The worker could not start: what failed, and why.
    NotStarted { what: &'static str, error: String },
    /// The worker stopped by itself (an error, or the shutdown).
    Stopped(Result<(), WorkerError>),
    /// Jobs were still running at the end of the shutdown grace period.
    OutOfGrace,
}

impl Ended {
    fn not_started(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self::NotStarted {
            what,
            error: error.to_string(),
        }
    }
}

/// Builds an apalis worker of sync jobs on `$backend` for `$workers` (a
/// [`Workers`]), runs it until their shutdown (then their grace for the
/// running jobs) and returns how it [`Ended`]. A macro because the queues'
/// apalis backends share no trait the worker builder accepts in generic
/// code.
macro_rules! run_sync_worker {
    ($backend:expr, $workers:expr) => {{
        use apalis::prelude::WorkerBuilderExt as _;
        let workers: &$crate::queue::Workers = $workers;
        let worker = apalis::prelude::WorkerBuilder::new(workers.name.as_str())
            .backend($backend)
            .concurrency(workers.concurrency.max(1))
            .data(workers.handler.clone())
            .build($crate::queue::handle);
        let stop = workers.shutdown.clone();
        let run = worker.run_until(async move {
            stop.cancelled().await;
            Ok::<(), apalis::prelude::WorkerError>(())
        });
        $crate::queue::run_with_grace(run, &workers.shutdown, workers.grace).await
    }};
}
pub(crate) use run_sync_worker;

/// After a worker run: `true` when the process is stopping; otherwise logs
/// a failure and waits before the restart (longer after each failure).
async fn restart_after(ended: Ended, shutdown: &CancellationToken, failures: &mut u32) -> bool {
    match ended {
        Ended::OutOfGrace => return true,
        Ended::Stopped(Ok(())) if shutdown.is_cancelled() => return true,
        Ended::Stopped(Ok(())) => *failures = 0,
        Ended::Stopped(Err(error)) => {
            *failures = failures.saturating_add(1);
            tracing::warn!(%error, "the queue worker stopped; it restarts");
        }
        Ended::NotStarted { what, error } => {
            *failures = failures.saturating_add(1);
            tracing::warn!(%error, "{what}; the worker retries");
        }
    }
    Backoff::RESTART.pause(*failures, shutdown).await
}

/// Drives `run` (an apalis worker that stops taking work on `shutdown`)
/// and gives its running jobs `grace` after the shutdown to finish.
async fn run_with_grace(
    run: impl Future<Output = Result<(), WorkerError>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Ended {
    tokio::pin!(run);
    tokio::select! {
        outcome = &mut run => Ended::Stopped(outcome),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "jobs still running at the end of the shutdown timeout; their events stay pending and are dispatched again"
            );
            Ended::OutOfGrace
        }
    }
}

/// One job, handed to the handler. The handler records every outcome in
/// the database itself; an `Err` here means the database failed, and
/// apalis schedules the job again (the sweeper is the backstop). The error
/// text is generic: a database message could quote a value, and job results
/// are stored in the queue.
async fn handle(job: SyncJob, handler: Data<Handler>) -> Result<(), BoxDynError> {
    let first_event_id = job.events.first().map(|e| e.event_id);
    let events = job.events.len();
    let mut retries = QUICK_RETRIES.iter();
    loop {
        // apalis polls every job of a worker on one task; a task of its own
        // lets jobs use every runtime thread.
        let ran = tokio::spawn(handler.run(job.clone())).await;
        let error =
            match ran.unwrap_or_else(|join| Err(anyhow::anyhow!("the job panicked: {join}"))) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
        // After a restart of the database, each connection the pool held
        // fails once: trying again at once, on the next one, beats the
        // queue's own retry (one more second after each failure).
        if let Some(pause) = retries.next() {
            tracing::debug!(first_event_id, events, error = %format!("{error:#}"), "job failed; trying it again");
            tokio::time::sleep(*pause).await;
            continue;
        }
        tracing::warn!(first_event_id, events, error = %format!("{error:#}"), "job failed; its unfinished events stay pending");
        return Err(
            "the job could not reach the database; its unfinished events stay pending".into(),
        );
    }
}

/// Pauses before a job that could not reach the database runs again in
/// the same worker slot (5.7 s in all); after them the queue schedules it
/// again, one second later after each failure.
const QUICK_RETRIES: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(800),
    Duration::from_millis(1500),
    Duration::from_millis(3000),
];

/// Shares one queue between the dispatcher, the ops server and the workers.
pub fn shared(queue: impl JobQueue + 'static) -> Arc<dyn JobQueue> {
    Arc::new(queue)
}

//! The sync job: serialise on the host user, take its newest pending event,
//! plan, carry the plan out through the gate and the client, record what
//! happened.
//!
//! Every step ends in an [`Outcome`] (applied, superseded, conflict,
//! failed, invalid, or snoozed: retry later, with the event back in the
//! outbox to dispatch), recorded in one place, `sync::outcome`. A snoozed
//! job holds no worker slot while it waits: the wait is a time in the
//! outbox, not a sleep.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::config::{LookupBeforeCreate, SyncSettings, WorkerSettings};
use crate::domain::{
    ConflictReason, Desired, EmbeddedUserId, ErasureOutcome, HostUserId, LogsSkipped, Profile,
    Synced, UserState, Username,
};
use crate::embedded::{ApiError, EmbeddedClient, NewUser, UserRef, UserUpdate};
use crate::queue::{JobEvent, JobHandler, SyncJob};
use crate::ratelimit::{ApiGate, GateRefusal};
use crate::retry::{Retry, RetryPolicy, Stop};
use crate::storage::{Claim, ErasureStep, NewConflict, OutboxEvent, SyncStore, UserSession};
use crate::sync::conflicts::{
    held_by_host_user, in_conflict, taken_in_embedded, unconfirmed_create,
};
use crate::sync::erasure::{self, ErasureCall};
use crate::sync::outcome::{self, Outcome};
use crate::sync::plan::{SyncPlan, plan};

/// Everything a job needs, shared by all jobs of a process.
pub struct SyncContext<S: SyncStore> {
    /// The worker's tables, on the backend the process was assembled with.
    pub store: Arc<S>,
    pub api: EmbeddedClient,
    pub gate: Arc<ApiGate>,
    pub worker: WorkerSettings,
    pub sync: SyncSettings,
    /// What a failed call means, from `worker`.
    retry: RetryPolicy,
    /// API calls in flight in this process: at most `worker.concurrency`.
    calls: Arc<Semaphore>,
}

impl<S: SyncStore> Clone for SyncContext<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            api: self.api.clone(),
            gate: self.gate.clone(),
            worker: self.worker.clone(),
            sync: self.sync.clone(),
            retry: self.retry,
            calls: self.calls.clone(),
        }
    }
}

impl<S: SyncStore> SyncContext<S> {
    pub fn new(
        store: Arc<S>,
        api: EmbeddedClient,
        gate: Arc<ApiGate>,
        worker: WorkerSettings,
        sync: SyncSettings,
    ) -> Self {
        let calls = Arc::new(Semaphore::new(worker.concurrency.max(1)));
        Self {
            store,
            api,
            gate,
            retry: RetryPolicy::new(&worker),
            worker,
            sync,
            calls,
        }
    }
}

impl<S: SyncStore> JobHandler for SyncContext<S> {
    fn run(&self, job: SyncJob) -> BoxFuture<'static, anyhow::Result<()>> {
        let ctx = self.clone();
        Box::pin(async move { run(&ctx, &job).await })
    }
}

/// How long a job whose user is busy waits before its event is dispatched
/// again.
const BUSY_RETRY: Duration = Duration::from_millis(200);
/// Events one job applies for its user before it lets others run.
const MAX_EVENTS_PER_JOB: usize = 16;

/// Runs one job: each of its host users at once. An `Err` is an
/// infrastructure failure (the database); the events not finished stay
/// pending and are dispatched again.
pub async fn run<S: SyncStore>(ctx: &SyncContext<S>, job: &SyncJob) -> anyhow::Result<()> {
    let mut hosts: Vec<HostUserId> = Vec::new();
    let mut events_of: HashMap<HostUserId, Vec<i64>> = HashMap::new();
    for event in &job.events {
        let Some(host) = host_of(ctx, event).await? else {
            continue;
        };
        let events = events_of.entry(host.clone()).or_default();
        if events.is_empty() {
            hosts.push(host);
        }
        events.push(event.event_id);
    }
    if hosts.is_empty() {
        return Ok(());
    }
    let sessions = ctx.store.lock_users(&hosts).await?;
    let mut busy = Vec::new();
    let mut work = Vec::new();
    for (host, session) in hosts.iter().zip(sessions) {
        match session {
            Some(session) => work.push(apply_locked(ctx, host, session)),
            // Another job is applying this user's events; it may have read
            // them before these arrived, so they come back shortly.
            None => busy.extend(events_of.get(host).into_iter().flatten().copied()),
        }
    }
    for event_id in busy {
        ctx.store.snooze(event_id, BUSY_RETRY).await?;
    }
    let results = futures::future::join_all(work).await;
    results.into_iter().collect()
}

/// The host user whose event `event` names. A job is only a hint (anyone
/// who can push to the queue can push an event with no host user): when
/// it names none that is usable, the event's own row decides. `None` when
/// there is nothing to work on: the event is not pending, or its row names
/// no valid host user either (then it ends `invalid`, with the row's
/// reason).
async fn host_of<S: SyncStore>(
    ctx: &SyncContext<S>,
    event: &JobEvent,
) -> anyhow::Result<Option<HostUserId>> {
    if let Some(Ok(host)) = event.host_user_id.as_deref().map(HostUserId::parse) {
        return Ok(Some(host));
    }
    let Some(written) = ctx.store.host_of_pending(event.event_id).await? else {
        return Ok(None);
    };
    match written {
        Ok(host) => {
            tracing::warn!(event_id = event.event_id, host_user_id = %host, "a job named an event without its host user; the event's row decides");
            Ok(Some(host))
        }
        Err(reason) => {
            ctx.store.mark_invalid(event.event_id, &reason).await?;
            outcome::count_invalid_without_host();
            Ok(None)
        }
    }
}

/// Applies the pending events of one locked host user, then releases it.
async fn apply_locked<S: SyncStore>(
    ctx: &SyncContext<S>,
    host: &HostUserId,
    mut session: S::Session,
) -> anyhow::Result<()> {
    let result = apply_pending(ctx, host, &mut session).await;
    session.release().await?;
    result
}

async fn apply_pending<S: SyncStore>(
    ctx: &SyncContext<S>,
    host: &HostUserId,
    session: &mut S::Session,
) -> anyhow::Result<()> {
    for _ in 0..MAX_EVENTS_PER_JOB {
        let Some(next) = session.newest_pending().await? else {
            return Ok(());
        };
        let event = next.event;
        if event.available_at > chrono::Utc::now() {
            // Snoozed: the dispatcher brings it back when it is due.
            return Ok(());
        }
        if let Some(last) = next.last_acted_on
            && event.id < last
        {
            // Committed late, after a newer event of this user was acted
            // on (concurrent host transactions): older data never wins.
            outcome::record(session, host, &event, &Outcome::Superseded { by: last }).await?;
            continue;
        }
        let desired = match event.desired() {
            Ok(desired) => desired,
            Err(reason) => {
                outcome::record(session, host, &event, &Outcome::Invalid(reason)).await?;
                continue;
            }
        };
        if next.older_pending > 0 {
            outcome::supersede_older(session, event.id).await?;
        }
        // One event applied per job: a newer event arriving meanwhile has
        // a job of its own.
        let synced = if next.last_acted_unfinished {
            read_back(ctx, session, event.id, next.synced).await?
        } else {
            Ok(next.synced)
        };
        let ended = match synced {
            Ok(synced) => apply_event(ctx, session, host, &event, &desired, synced).await?,
            Err(stop) => stopped(ctx, &event, stop),
        };
        outcome::record(session, host, &event, &ended).await?;
        return Ok(());
    }
    Ok(())
}

/// An update of `host` was sent and never recorded as done (its answer
/// lost, its worker killed, its event superseded meanwhile): Embedded may
/// hold it already, so the last synced state is read back before planning.
/// Without this, an event asking for the state from before that update
/// would look like no change and cost no call, and Embedded would keep the
/// update for good.
async fn read_back<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    event_id: i64,
    synced: Synced,
) -> anyhow::Result<Result<Synced, Stop>> {
    let Synced::Present { id, .. } = &synced else {
        return Ok(Ok(synced));
    };
    match call(ctx, || ctx.api.get_user(UserRef::Id(id))).await {
        Ok(found) => {
            let profile = found.profile();
            session
                .record_found(&found.user_id, &profile, event_id)
                .await?;
            Ok(Ok(Synced::Present {
                id: found.user_id,
                profile,
            }))
        }
        // Deleted outside: created again, as when an update finds it gone.
        Err(Stop::Api(ApiError::NotFound)) => {
            session
                .mark_without_user(UserState::Failed, event_id)
                .await?;
            Ok(Ok(Synced::Nothing))
        }
        Err(stop) => Ok(Err(stop)),
    }
}

/// Carries out the newest event of `host`; the caller records the outcome.
async fn apply_event<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    host: &HostUserId,
    event: &OutboxEvent,
    desired: &Desired,
    mut synced: Synced,
) -> anyhow::Result<Outcome> {
    // A username this job has just seen free in Embedded: no need to look
    // again before creating it.
    let mut seen_free: Option<Username> = None;
    // At most: confirm an unconfirmed create, find a user deleted outside,
    // then act. Each round learns something, so three rounds end it.
    for _ in 0..3 {
        match plan(desired, &synced) {
            SyncPlan::Nothing => return Ok(Outcome::Applied { ended: false }),
            SyncPlan::Confirm { username, intent } => {
                match call(ctx, || ctx.api.get_user(UserRef::Username(&username))).await {
                    Ok(found) => {
                        // A user already mapped to another host user (and
                        // renamed to this username since) is theirs: never
                        // a second mapping of one Embedded user.
                        let other = session.mapped_elsewhere(&found.user_id).await?;
                        let check = ctx.sync.claim_check();
                        let provenance = intent.provenance_of(&found.user_id, &check);
                        let still_wanted =
                            matches!(desired, Desired::Present(want) if want.username == username);
                        if (other.is_some() || !provenance.is_the_creates()) && !still_wanted {
                            // A closure, or a new username: the user found
                            // is not proven this host user's, so it is
                            // neither adopted nor deleted, and the event
                            // goes on without it.
                            tracing::warn!(event_id = event.id, host_user_id = %host, embedded_user_id = %found.user_id, provenance = provenance.as_str(), "the Embedded user found for a create never confirmed is not proven the host user's, who no longer wants its username: left as it is");
                            session
                                .mark_without_user(UserState::NotCreated, event.id)
                                .await?;
                            synced = Synced::Nothing;
                            continue;
                        }
                        if let Some(other) = other {
                            session
                                .mark_without_user(UserState::Conflict, event.id)
                                .await?;
                            let conflict = NewConflict {
                                host,
                                username: &username,
                                reason: ConflictReason::TakenByHostUser,
                                holder_host_user_id: Some(&other),
                                holder_embedded_user_id: Some(&found.user_id),
                                event_id: Some(event.id),
                            };
                            return in_conflict(session, &conflict).await;
                        }
                        if !provenance.is_the_creates() {
                            return unconfirmed_create(
                                session, host, &username, &found, event, provenance,
                            )
                            .await;
                        }
                        // The lost create happened: adopt its user.
                        let profile = found.profile();
                        session
                            .mark_synced(&found.user_id, &profile, event.id, None)
                            .await?;
                        tracing::info!(event_id = event.id, host_user_id = %host, embedded_user_id = %found.user_id, provenance = provenance.as_str(), "adopted the user of an unconfirmed create");
                        synced = Synced::Present {
                            id: found.user_id,
                            profile,
                        };
                    }
                    Err(Stop::Api(ApiError::NotFound)) => {
                        // The create was never made: its claim goes now,
                        // so that a conflict met from here on leaves no
                        // claim waiting for a confirmation.
                        session
                            .mark_without_user(UserState::NotCreated, event.id)
                            .await?;
                        seen_free = Some(username);
                        synced = Synced::Nothing;
                    }
                    Err(stop) => return Ok(stopped(ctx, event, stop)),
                }
            }
            SyncPlan::Create(new_user) => {
                return create(ctx, session, host, event, new_user, seen_free.as_ref()).await;
            }
            SyncPlan::Update { id, update } => {
                let Desired::Present(want) = desired else {
                    unreachable!("plan updates only a present user")
                };
                match update_user(ctx, session, host, event, &id, update, want).await? {
                    Some(outcome) => return Ok(outcome),
                    // Deleted outside the worker: create it again.
                    None => synced = Synced::Nothing,
                }
            }
            SyncPlan::Erase { id } => return erase(ctx, session, host, event, id).await,
        }
    }
    // Only a user deleted outside twice in one job gets here.
    Ok(stopped(
        ctx,
        event,
        Stop::Gate(GateRefusal::Backoff(ctx.worker.backoff_base)),
    ))
}

/// Creates the user of `host`, unless its username is someone else's.
async fn create<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    host: &HostUserId,
    event: &OutboxEvent,
    new_user: NewUser,
    seen_free: Option<&Username>,
) -> anyhow::Result<Outcome> {
    let profile = Profile {
        username: new_user.username.clone(),
        full_name: new_user.full_name.clone(),
    };
    // Another host user's username: a conflict before any call.
    if let Some(holder) = session.holder_of(&profile.username).await? {
        return held_by_host_user(session, host, &profile.username, &holder, event).await;
    }
    // With `lookup_before_create = "always"`, looked up before it is
    // claimed: a claim (`creating`) then also means the username was free.
    // By default the create goes first, and only a lost answer costs a
    // lookup (see `Confirm`): a refusal proves the create made nothing.
    let look_first = ctx.sync.lookup_before_create == LookupBeforeCreate::Always
        && seen_free != Some(&profile.username);
    if look_first {
        match call(ctx, || {
            ctx.api.get_user(UserRef::Username(&profile.username))
        })
        .await
        {
            Ok(holder) => {
                return taken_in_embedded(session, host, &profile.username, &holder, event).await;
            }
            Err(Stop::Api(ApiError::NotFound)) => {}
            Err(stop) => return Ok(stopped(ctx, event, stop)),
        }
    }
    // Seen free just now (looked up first, or an unconfirmed create found
    // never made): kept with the claim, so that whatever holds the name
    // after a lost answer is this create's user.
    let seen_free = look_first || seen_free == Some(&profile.username);
    if let Claim::TakenBy(holder) = session
        .claim_for_create(&profile, event.id, seen_free)
        .await?
    {
        return held_by_host_user(session, host, &profile.username, &holder, event).await;
    }
    // The gate right before the call: the API sees requests spaced as the
    // gate spaced them, not blurred by the claim.
    match call(ctx, || ctx.api.create_user(&new_user)).await {
        Ok(id) => {
            session
                .mark_synced(&id, &profile, event.id, Some(event.id))
                .await?;
            Ok(Outcome::Applied { ended: true })
        }
        Err(Stop::Api(refused @ ApiError::Rejected { .. })) => {
            // A definite refusal: nothing was created. Release the claim
            // before looking for who holds the name.
            session
                .mark_without_user(UserState::Failed, event.id)
                .await?;
            refused_create(ctx, session, host, &profile.username, event, &refused).await
        }
        Err(
            stop @ (Stop::Gate(_)
            | Stop::Api(ApiError::RateLimited { .. } | ApiError::Unauthorized { .. })),
        ) => {
            // Nothing was sent, or it was refused before anything was
            // done: release the claim, so that no lookup is needed next
            // time.
            session
                .mark_without_user(UserState::NotCreated, event.id)
                .await?;
            Ok(stopped(ctx, event, stop))
        }
        // The row stays `creating`: the next attempt confirms.
        Err(stop) => Ok(stopped(ctx, event, stop)),
    }
}

/// Erases the user of `host`: deletes its workflow logs and its Embedded
/// user when there is one (see `sync::erasure`), and records the erasure
/// either way (which ends the event).
async fn erase<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    host: &HostUserId,
    event: &OutboxEvent,
    id: Option<EmbeddedUserId>,
) -> anyhow::Result<Outcome> {
    let (erased, logs_skipped) = match &id {
        None => (ErasureOutcome::NeverCreated, None),
        Some(user) => match delete_in_steps(ctx, session, user).await? {
            Ok(erased) => erased,
            Err(stop) => return Ok(stopped(ctx, event, stop)),
        },
    };
    session
        .erase(id.as_ref(), event.id, erased, logs_skipped)
        .await?;
    metrics::counter!("user_sync_erasures_total", "outcome" => erased.as_str()).increment(1);
    tracing::info!(event_id = event.id, host_user_id = %host, outcome = erased.as_str(), logs_skipped = logs_skipped.map(LogsSkipped::as_str), "erasure complete");
    Ok(Outcome::Applied { ended: true })
}

/// Deletes the workflow logs, then the user, each call's intent recorded
/// before it. The first intent's commit is durable, and with it every
/// outcome before it: what the deletes rely on (the user's mapping) is on
/// disk before anything is deleted, so the proof names the user even after
/// a crash of the database server. Returns how it ended and, for the
/// record, why the logs were skipped if they were; `Err` when a call must
/// be tried again.
async fn delete_in_steps<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    user: &EmbeddedUserId,
) -> anyhow::Result<Result<(ErasureOutcome, Option<LogsSkipped>), Stop>> {
    let steps = session.erasure_steps(user).await?;
    let skipped =
        erasure::logs_skipped(ctx.sync.delete_workflow_logs, ctx.api.offers().delete_logs);
    let recorded_skip = erasure::recorded_skip(steps, skipped);
    if erasure::next_call(steps, skipped) == ErasureCall::DeleteLogs {
        session
            .record_erasure_step(user, ErasureStep::SendingLogsDelete)
            .await?;
        match call(ctx, || ctx.api.delete_user_logs(user)).await {
            Ok(()) | Err(Stop::Api(ApiError::NotFound)) => {
                session
                    .record_erasure_step(user, ErasureStep::LogsDeleted)
                    .await?;
            }
            Err(stop) => return Ok(Err(stop)),
        }
    }
    session
        .record_erasure_step(user, ErasureStep::SendingUserDelete)
        .await?;
    match call(ctx, || ctx.api.delete_user(user)).await {
        Ok(()) => Ok(Ok((
            erasure::outcome_of_user_delete(true, steps.user_delete_sent),
            recorded_skip,
        ))),
        Err(Stop::Api(ApiError::NotFound)) => Ok(Ok((
            erasure::outcome_of_user_delete(false, steps.user_delete_sent),
            recorded_skip,
        ))),
        Err(stop) => {
            if !steps.user_delete_sent && erasure::did_nothing(&stop) {
                session
                    .record_erasure_step(user, ErasureStep::UserDeleteNotSent)
                    .await?;
            }
            Ok(Err(stop))
        }
    }
}

/// A create refused by the API: a conflict if someone holds the username,
/// a permanent failure otherwise.
async fn refused_create<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    host: &HostUserId,
    username: &Username,
    event: &OutboxEvent,
    refusal: &ApiError,
) -> anyhow::Result<Outcome> {
    match call(ctx, || ctx.api.get_user(UserRef::Username(username))).await {
        Ok(holder) => taken_in_embedded(session, host, username, &holder, event).await,
        Err(Stop::Api(ApiError::NotFound)) => Ok(Outcome::Failed(refusal.to_string())),
        Err(stop) => Ok(stopped(ctx, event, stop)),
    }
}

/// Sends an update. `None` when the user no longer exists in Embedded.
async fn update_user<S: SyncStore>(
    ctx: &SyncContext<S>,
    session: &mut S::Session,
    host: &HostUserId,
    event: &OutboxEvent,
    id: &EmbeddedUserId,
    update: UserUpdate,
    want: &Profile,
) -> anyhow::Result<Option<Outcome>> {
    if let Some(new_username) = &update.username
        && let Some(holder) = session.holder_of(new_username).await?
    {
        return held_by_host_user(session, host, new_username, &holder, event)
            .await
            .map(Some);
    }
    session.note_update_sent(event.id).await?;
    match call(ctx, || ctx.api.update_user(id, &update)).await {
        Ok(_) => {
            session
                .mark_synced(id, want, event.id, Some(event.id))
                .await?;
            Ok(Some(Outcome::Applied { ended: true }))
        }
        Err(Stop::Api(ApiError::NotFound)) => {
            session
                .mark_without_user(UserState::Failed, event.id)
                .await?;
            Ok(None)
        }
        Err(Stop::Api(refused @ ApiError::Rejected { .. })) => {
            let Some(new_username) = &update.username else {
                return Ok(Some(Outcome::Failed(refused.to_string())));
            };
            // Who refused the rename: a holder of the new name, or the API
            // itself (the docs disagree on whether renames are allowed).
            let holder = match call(ctx, || ctx.api.get_user(UserRef::Username(new_username))).await
            {
                Ok(found) if &found.user_id != id => Some(found.user_id),
                Ok(_) | Err(Stop::Api(ApiError::NotFound)) => None,
                Err(stop) => return Ok(Some(stopped(ctx, event, stop))),
            };
            let reason = if holder.is_some() {
                ConflictReason::TakenInEmbedded
            } else {
                ConflictReason::RenameRefused
            };
            let conflict = NewConflict {
                host,
                username: new_username,
                reason,
                holder_host_user_id: None,
                holder_embedded_user_id: holder.as_ref(),
                event_id: Some(event.id),
            };
            in_conflict(session, &conflict).await.map(Some)
        }
        Err(stop) => Ok(Some(stopped(ctx, event, stop))),
    }
}

/// One API call through the gate; the gate learns from the answer.
async fn call<S: SyncStore, T, F, Fut>(ctx: &SyncContext<S>, make: F) -> Result<T, Stop>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    // A slot first, then the gate right before the call: the API sees
    // requests spaced as the gate spaced them.
    let _slot = ctx.calls.acquire().await.ok();
    ctx.gate.acquire().await.map_err(Stop::Gate)?;
    make().await.map_err(|error| {
        ctx.gate.observe(&error);
        Stop::Api(error)
    })
}

/// The event cannot finish now: snoozed, or given up for good, as the
/// retry policy says.
fn stopped<S: SyncStore>(ctx: &SyncContext<S>, event: &OutboxEvent, stop: Stop) -> Outcome {
    let attempts = u32::try_from(event.attempts).unwrap_or(0);
    match ctx.retry.decide(&stop, attempts) {
        Retry::After {
            after,
            counts_attempt,
            reason,
        } => Outcome::Snoozed {
            after,
            counts_attempt,
            reason,
        },
        Retry::GiveUp { reason } => Outcome::Failed(reason),
    }
}

//! Reconciliation: what an operator does with a conflict (`user-sync
//! conflicts resolve ID --adopt | --retry | --ignore`), and the worker's
//! own rechecks of usernames held outside it. One implementation for the
//! command line and the operator API.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{ConflictReason, ConflictRow, Desired, EmbeddedUserId, HostUserId, Username};
use crate::embedded::{ApiError, EmbeddedClient, UserRef, UserUpdate};
use crate::host::{ForegroundApi, Resend};
use crate::queue::{JobEvent, JobHandler, SyncJob};
use crate::ratelimit::ApiGate;
use crate::storage::{Adopted, Adoption, Operator, Store, SyncStore};
use crate::sync::SyncContext;

/// What an operator asks of a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Link the host user to the Embedded user holding the username.
    Adopt,
    /// Apply the host user's newest event again now.
    Retry,
    /// Leave the host user without an Embedded user under this username.
    Ignore,
}

/// How an operator's action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The host user is linked to `user`; `full_name` says whether its
    /// fullName had to be brought in line, and whether that worked.
    Adopted {
        user: String,
        full_name: FullNameFix,
    },
    /// The retried event synced the user: the conflict is resolved.
    Retried {
        resolution: String,
    },
    /// The retried event met the same cause: the conflict stays open.
    StillOpen {
        reason: String,
        checks: i32,
    },
    /// The retried event waits to be tried again (a rate limit, an outage,
    /// another host user's create in flight); the workers will.
    Pending {
        reason: Option<String>,
    },
    /// The retried event ended another way (failed, invalid).
    Ended {
        state: String,
        reason: Option<String>,
    },
    Ignored,
}

impl Done {
    /// Whether the conflict is resolved.
    pub fn resolved(&self) -> bool {
        matches!(
            self,
            Self::Adopted { .. } | Self::Retried { .. } | Self::Ignored
        )
    }
}

/// Whether an adopted user's fullName was brought in line with the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullNameFix {
    AlreadyInLine,
    Updated,
    /// The `PUT` failed (`error`); the user's next event brings it in line.
    Failed(String),
}

/// Why an action was refused: one line, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refuse<T>(message: impl Into<String>) -> Result<T, Refused> {
    Err(Refused(message.into()))
}

/// Carries out operators' actions on conflicts.
pub struct Reconciler<S: SyncStore + Store> {
    store: Arc<S>,
    api: ForegroundApi,
    jobs: SyncContext<S>,
}

impl<S: SyncStore + Store> Reconciler<S> {
    /// A reconciler of its own, for a command: its own client and rate
    /// gate.
    pub fn new(store: Arc<S>, settings: &Settings) -> anyhow::Result<Self> {
        let client = EmbeddedClient::new(&settings.embedded)?;
        let gate = Arc::new(ApiGate::new(&settings.rate_limit));
        Ok(Self::sharing(store, client, gate, settings))
    }

    /// A reconciler inside a worker process (its operator API): the
    /// process's store (on SQLite, the holder of its per-user locks), client
    /// and gate, whose rate limit and pause it keeps to.
    pub fn sharing(
        store: Arc<S>,
        client: EmbeddedClient,
        gate: Arc<ApiGate>,
        settings: &Settings,
    ) -> Self {
        let jobs = SyncContext::new(
            store.clone(),
            client.clone(),
            gate.clone(),
            settings.worker.clone(),
            settings.sync.clone(),
        );
        Self {
            store,
            api: ForegroundApi {
                client,
                gate,
                worker: settings.worker.clone(),
            },
            jobs,
        }
    }

    /// Carries out `action` on conflict `id`.
    pub async fn resolve(
        &self,
        id: i64,
        action: Action,
        operator: Operator<'_>,
    ) -> anyhow::Result<Result<Done, Refused>> {
        let Some(conflict) = self.store.conflict(id).await? else {
            return Ok(refuse(format!("there is no conflict {id}")));
        };
        if conflict.status != "open" {
            return Ok(refuse(format!(
                "conflict {id} is already resolved ({}, by {})",
                conflict.resolution.as_deref().unwrap_or("?"),
                conflict.resolved_by.as_deref().unwrap_or("?")
            )));
        }
        match action {
            Action::Ignore => Ok(self.ignore(id, operator).await?),
            Action::Retry => self.retry(&conflict, operator).await,
            Action::Adopt => self.adopt(&conflict, operator).await,
        }
    }

    async fn ignore(
        &self,
        id: i64,
        operator: Operator<'_>,
    ) -> anyhow::Result<Result<Done, Refused>> {
        Ok(match self.store.ignore(id, operator).await? {
            true => Ok(Done::Ignored),
            false => refuse(format!("conflict {id} was resolved meanwhile")),
        })
    }

    async fn retry(
        &self,
        conflict: &ConflictRow,
        operator: Operator<'_>,
    ) -> anyhow::Result<Result<Done, Refused>> {
        let Some(event_id) = self.store.ask_retry(conflict.id, operator, false).await? else {
            return Ok(refuse(format!(
                "host user {} has no event to apply again (a backfill found this conflict): \
                 run `user-sync backfill` once the username is free",
                conflict.host_user_id
            )));
        };
        let job = SyncJob {
            events: vec![JobEvent {
                event_id,
                host_user_id: Some(conflict.host_user_id.clone()),
            }],
        };
        self.jobs.run(job).await?;
        let after = self.store.conflict(conflict.id).await?;
        if let Some(after) = &after
            && after.status != "open"
        {
            return Ok(Ok(Done::Retried {
                resolution: after.resolution.clone().unwrap_or_default(),
            }));
        }
        let host = HostUserId::parse(&conflict.host_user_id)?;
        let latest = self.store.latest_event(&host).await?;
        let (state, reason) = latest
            .map(|l| (l.state, l.reason))
            .unwrap_or_else(|| ("unknown".into(), None));
        Ok(Ok(match state.as_str() {
            "pending" => Done::Pending { reason },
            "conflict" => Done::StillOpen {
                reason: conflict.reason.clone(),
                checks: after.map_or(conflict.checks, |c| c.checks),
            },
            _ => Done::Ended { state, reason },
        }))
    }

    async fn adopt(
        &self,
        conflict: &ConflictRow,
        operator: Operator<'_>,
    ) -> anyhow::Result<Result<Done, Refused>> {
        let id = conflict.id;
        match ConflictReason::parse(&conflict.reason) {
            Some(ConflictReason::TakenInEmbedded | ConflictReason::UnconfirmedCreate) => {}
            Some(ConflictReason::TakenByHostUser) => {
                return Ok(refuse(format!(
                    "conflict {id} is taken_by_host_user: host user {} holds the username, and \
                     one Embedded user is never given to two host users (--retry once it lets \
                     the username go, or --ignore)",
                    conflict.holder_host_user_id.as_deref().unwrap_or("?")
                )));
            }
            Some(ConflictReason::RenameRefused) => {
                return Ok(refuse(format!(
                    "conflict {id} is rename_refused: the API refused the change of username, \
                     and no other user holds it to adopt (--retry or --ignore)"
                )));
            }
            None => {
                return Ok(refuse(format!(
                    "conflict {id} has reason {:?}, which cannot be adopted",
                    conflict.reason
                )));
            }
        }
        let host = HostUserId::parse(&conflict.host_user_id)?;
        let username = Username::from_api(&conflict.username);
        if let Some(user) = self.store.mapped_user(&host).await? {
            return Ok(refuse(format!(
                "host user {host} already has Embedded user {user}: adopting would give it a \
                 second one (--ignore this conflict instead)"
            )));
        }
        // What the host wants now, from its newest event.
        let latest = self.store.latest_event(&host).await?;
        let (event_id, wanted) = match &latest {
            Some(latest) => match latest.event.desired() {
                Ok(Desired::Absent) => {
                    return Ok(refuse(format!(
                        "host user {host} closed its account: there is nothing to adopt"
                    )));
                }
                Ok(Desired::Present(want)) if want.username != username => {
                    return Ok(refuse(format!(
                        "host user {host}'s newest event wants another username: this conflict \
                         no longer applies (--retry to apply that event)"
                    )));
                }
                Ok(Desired::Present(want)) => (Some(latest.event.id), Some(want)),
                Err(_) => (Some(latest.event.id), None),
            },
            None => (None, None),
        };
        let found = match self
            .api
            .call(Resend::Always, || {
                self.api.client.get_user(UserRef::Username(&username))
            })
            .await
        {
            Ok(found) => found,
            Err(ApiError::NotFound) => {
                return Ok(refuse(format!(
                    "nobody holds the username in Embedded any more: --retry creates the user \
                     for host user {host}"
                )));
            }
            Err(error) => return Err(anyhow::anyhow!("looking the username up: {error}")),
        };
        if let Some(reported) = &conflict.holder_embedded_user_id
            && reported != found.user_id.as_str()
        {
            return Ok(refuse(format!(
                "the username is now held by Embedded user {}, not {reported} as reported: \
                 --retry to look again",
                found.user_id
            )));
        }
        let held = found.profile();
        let adoption = Adoption {
            conflict_id: id,
            host: &host,
            user: &found.user_id,
            held: &held,
            event_id,
            operator,
        };
        match self.store.adopt(adoption).await? {
            Adopted::Adopted => {}
            Adopted::NotOpen => return Ok(refuse(format!("conflict {id} was resolved meanwhile"))),
            Adopted::Busy => {
                return Ok(refuse(format!(
                    "a job is working on host user {host} right now: try again in a moment"
                )));
            }
            Adopted::HasUser(user) => {
                return Ok(refuse(format!(
                    "host user {host} already has Embedded user {}: adopting would give it a \
                     second one",
                    user.as_deref().unwrap_or("?")
                )));
            }
            Adopted::HeldBy(other) => {
                return Ok(refuse(format!(
                    "host user {other} holds this username or this Embedded user: one Embedded \
                     user is never given to two host users"
                )));
            }
        }
        let full_name = self
            .bring_in_line(&host, &found.user_id, &held, wanted)
            .await?;
        Ok(Ok(Done::Adopted {
            user: found.user_id.as_str().to_owned(),
            full_name,
        }))
    }

    /// One `PUT` of the host's full name when the adopted user holds
    /// another.
    async fn bring_in_line(
        &self,
        host: &HostUserId,
        user: &EmbeddedUserId,
        held: &crate::domain::Profile,
        wanted: Option<crate::domain::Profile>,
    ) -> anyhow::Result<FullNameFix> {
        let Some(full_name) = wanted.and_then(|w| w.full_name) else {
            return Ok(FullNameFix::AlreadyInLine);
        };
        if held.full_name.as_ref() == Some(&full_name) {
            return Ok(FullNameFix::AlreadyInLine);
        }
        let update = UserUpdate {
            held: held.clone(),
            username: None,
            full_name: Some(full_name.clone()),
        };
        match self
            .api
            .call(Resend::Always, || {
                self.api.client.update_user(user, &update)
            })
            .await
        {
            Ok(_) => {
                self.store
                    .record_full_name(host, user, Some(full_name.as_str()))
                    .await?;
                Ok(FullNameFix::Updated)
            }
            Err(error) => Ok(FullNameFix::Failed(error.to_string())),
        }
    }
}

/// [`Reconciler::resolve`] behind a trait object: the ops server holds it
/// without knowing the backend, which `app` chose.
pub trait Resolve: Send + Sync {
    fn resolve<'a>(
        &'a self,
        id: i64,
        action: Action,
        operator: Operator<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Result<Done, Refused>>>;
}

impl<S: SyncStore + Store> Resolve for Reconciler<S> {
    fn resolve<'a>(
        &'a self,
        id: i64,
        action: Action,
        operator: Operator<'a>,
    ) -> BoxFuture<'a, anyhow::Result<Result<Done, Refused>>> {
        Box::pin(Reconciler::resolve(self, id, action, operator))
    }
}

/// At most this many conflicts are claimed for a recheck at once.
const RECHECKS_PER_ROUND: u32 = 8;
/// The gate must have been free of waiting callers this long before a
/// recheck spends budget.
const RECHECK_QUIET: Duration = Duration::from_secs(2);

/// The worker's rechecks: each open conflict, once per `interval`, is
/// looked at again. A username another host user held is free once that
/// user no longer holds it (no API call); one held in Embedded is looked up,
/// with spare budget only. Free, the conflict's user is sent again at once:
/// it syncs, and the conflict resolves `moot`.
pub async fn recheck_conflicts(
    store: Arc<dyn Store>,
    client: EmbeddedClient,
    gate: Arc<ApiGate>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let poll = interval.clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        // Spare budget first: a claim moves the conflicts' next recheck.
        if gate.spare_in(RECHECK_QUIET).is_zero() {
            match store.claim_rechecks(RECHECKS_PER_ROUND, interval).await {
                Ok(due) => {
                    for conflict in due {
                        if shutdown.is_cancelled() {
                            return;
                        }
                        recheck_one(&*store, &client, &gate, &conflict).await;
                    }
                }
                Err(error) => tracing::warn!(error = %error, "claiming conflicts to recheck"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Looks at one conflict again.
async fn recheck_one(
    store: &dyn Store,
    client: &EmbeddedClient,
    gate: &ApiGate,
    conflict: &ConflictRow,
) {
    let free = match ConflictReason::parse(&conflict.reason) {
        Some(ConflictReason::TakenByHostUser) => match &conflict.holder_host_user_id {
            Some(holder) => match store.still_holds(holder, &conflict.username).await {
                Ok(held) => !held,
                Err(error) => {
                    tracing::warn!(conflict_id = conflict.id, error = %error, "recheck failed");
                    return;
                }
            },
            None => true,
        },
        Some(_) => {
            if gate.acquire_spare(RECHECK_QUIET).await.is_err() {
                // No spare budget now: the next interval looks again.
                return;
            }
            let username = Username::from_api(&conflict.username);
            match client.get_user(UserRef::Username(&username)).await {
                Err(ApiError::NotFound) => true,
                Ok(_) => false,
                Err(error) => {
                    gate.observe(&error);
                    tracing::debug!(conflict_id = conflict.id, error = %error, "recheck lookup failed");
                    return;
                }
            }
        }
        None => return,
    };
    if !free {
        return;
    }
    match store.wake(&conflict.host_user_id).await {
        Ok(Some(event_id)) => tracing::info!(
            conflict_id = conflict.id,
            host_user_id = %conflict.host_user_id,
            event_id,
            "the username of a conflict is free again: its user is sent again"
        ),
        Ok(None) => tracing::debug!(
            conflict_id = conflict.id,
            "the username is free again, but the user's newest event did not end in it"
        ),
        Err(error) => tracing::warn!(conflict_id = conflict.id, error = %error, "waking a user"),
    }
}

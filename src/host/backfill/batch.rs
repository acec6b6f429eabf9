//! `--mode batch`: claims, `POST /users/batch`, and the confirmation of the
//! creates from `GET /users`.
//!
//! Why this is safe beside `user-sync run`: every claimed user's advisory
//! lock is held from before its claim until its batch is answered, so no
//! job acts on it while its create may be in flight. Once released, a row
//! is `creating` with its username: a job that comes to it finds the plan
//! `Confirm`, looks the username up and adopts the user the batch created
//! (or creates it, if the batch never did) — the same outcome this module
//! reaches from the snapshot. Either way one Embedded user, no conflict.

use std::collections::HashSet;

use crate::domain::{ConflictReason, FullName, HostUserId, Profile, UserState, Username};
use crate::embedded::{ApiError, InvalidBatchUser, NewUser, UserRef};
use crate::storage::{BackfillTables, Claim, ClaimIntent, Found};

use super::api::Resend;
use super::decide::ConflictFound;
use super::snapshot::WorkingTables;
use super::{Pending, Run};
use crate::storage::Signup;

/// Rounds of "snapshot, link what was created, send again what was not".
const MAX_ROUNDS: usize = 3;

impl<D: super::db::BackfillDb> Run<D> {
    /// Records the intent to create, for users whose locks are held. Those
    /// whose username turns out claimed meanwhile become conflicts.
    pub(super) async fn claim(&mut self, creates: &[Signup<'_>]) -> anyhow::Result<Vec<Pending>> {
        let intents: Vec<ClaimIntent<'_>> = creates
            .iter()
            .map(|(host, profile, _)| ClaimIntent {
                host,
                profile,
                last_event_id: None,
            })
            .collect();
        let pending = |c: &Signup<'_>| Pending {
            host: c.0.clone(),
            profile: c.1.clone(),
            unconfirmed: c.2,
        };
        match self.db.tables().claim_many_for_create(&intents).await {
            Ok(()) => return Ok(creates.iter().map(pending).collect()),
            Err(e) if crate::storage::is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
        // A username was claimed by a job between the lookup and now: claim
        // one by one, as the jobs do.
        let mut claimed = Vec::new();
        for create in creates {
            match self
                .db
                .tables()
                .claim_one_for_create(create.0, create.1)
                .await?
            {
                Claim::Claimed => claimed.push(pending(create)),
                Claim::TakenBy(holder) => {
                    let found = ConflictFound {
                        username: create.1.username.clone(),
                        full_name: create.1.full_name.clone(),
                        reason: ConflictReason::TakenByHostUser,
                        holder_host_user_id: Some(holder),
                        holder_embedded_user_id: None,
                    };
                    self.conflict(create.0, &found).await?;
                }
            }
        }
        Ok(claimed)
    }

    /// Sends the pending creates as one batch, handles the users it refused,
    /// and releases their locks.
    pub(super) async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.pending);
        let new_users: Vec<NewUser> = entries.iter().map(|e| NewUser::from(&e.profile)).collect();
        let api = &self.api;
        let result = api
            .call(Resend::UnlessApplied, || {
                api.client.create_users_batch(&new_users)
            })
            .await;
        let outcome = self.answered(&entries, &result).await;
        let hosts: Vec<&str> = entries.iter().map(|e| e.host.as_str()).collect();
        self.db.tables().unlock_many(&hosts).await?;
        outcome?;
        if let Err(ApiError::Unauthorized { status }) = result {
            anyhow::bail!(
                "the Embedded API refused the API key (status {status}); run the backfill again once it works"
            );
        }
        self.progress.update(&self.summary, "creating");
        Ok(())
    }

    async fn answered(
        &mut self,
        entries: &[Pending],
        result: &Result<crate::embedded::BatchOutcome, ApiError>,
    ) -> anyhow::Result<()> {
        let refused: Vec<&Pending> = match result {
            Ok(outcome) => {
                let named: HashSet<&Username> = outcome
                    .invalid
                    .iter()
                    .filter_map(|i| match i {
                        InvalidBatchUser::Username(u) => Some(u),
                        InvalidBatchUser::Unnamed => None,
                    })
                    .collect();
                let unnamed = outcome.invalid.len() - named.len();
                if unnamed > 0 {
                    // Left `creating`: the snapshot says which were created.
                    tracing::warn!(unnamed, "the batch refused users without naming them");
                }
                entries
                    .iter()
                    .filter(|e| named.contains(&e.profile.username))
                    .collect()
            }
            // "No valid users provided": every one was refused.
            Err(ApiError::Rejected { .. }) => entries.iter().collect(),
            Err(error) => {
                tracing::warn!(
                    %error,
                    users = entries.len(),
                    "batch create without an answer: its users are confirmed from GET /users"
                );
                Vec::new()
            }
        };
        for entry in refused {
            self.refused(entry).await?;
        }
        Ok(())
    }

    /// A user the batch refused: the same handling as a refused create in
    /// the pipeline — a conflict if someone holds the username, a failure
    /// otherwise — except that the holder of an unconfirmed create's name
    /// is that create's user.
    async fn refused(&mut self, entry: &Pending) -> anyhow::Result<()> {
        self.db
            .tables()
            .set_without_user(&entry.host, UserState::Failed)
            .await?;
        let api = &self.api;
        let username = &entry.profile.username;
        let found = api
            .call(Resend::Always, || {
                api.client.get_user(UserRef::Username(username))
            })
            .await;
        match found {
            Ok(user)
                if entry.unconfirmed.is_some_and(|intent| {
                    let check = self.sync.claim_check();
                    intent.provenance_of(&user.user_id, &check).is_the_creates()
                }) =>
            {
                let profile = user.profile();
                let found = [Found {
                    host: &entry.host,
                    user: &user.user_id,
                    profile: &profile,
                }];
                self.db.tables().mark_synced_many(&found).await?;
                self.summary.resumed += 1;
            }
            Ok(user) => {
                // An earlier create not proven to have made it: an
                // operator decides, as in the pipeline.
                let reason = if entry.unconfirmed.is_some() {
                    ConflictReason::UnconfirmedCreate
                } else {
                    ConflictReason::TakenInEmbedded
                };
                let conflict = ConflictFound {
                    username: username.clone(),
                    full_name: entry.profile.full_name.clone(),
                    reason,
                    holder_host_user_id: None,
                    holder_embedded_user_id: Some(user.user_id),
                };
                self.conflict(&entry.host, &conflict).await?;
            }
            Err(error) => {
                self.summary.failed += 1;
                let reason = match error {
                    ApiError::NotFound => "the API refused the create".to_owned(),
                    other => format!("a refused create could not be looked up: {other}"),
                };
                tracing::warn!(host_user_id = %entry.host, %reason, "backfill create failed");
            }
        }
        Ok(())
    }

    /// Links every row this run claimed to the user its batch created, from
    /// a fresh `GET /users`; sends again what no batch created.
    pub(super) async fn confirm_creates(&mut self) -> anyhow::Result<()> {
        for round in 0..MAX_ROUNDS {
            if self
                .db
                .tables()
                .count_unconfirmed_since(self.started_at)
                .await?
                == 0
            {
                return Ok(());
            }
            if round > 0 && self.cancel.is_cancelled() {
                break;
            }
            self.load_snapshot().await?;
            let mut after = String::new();
            let mut resent = 0u64;
            loop {
                let rows = self
                    .db
                    .tables()
                    .unconfirmed_since(self.started_at, &after, i64::from(self.page_size))
                    .await?;
                let Some(last) = rows.last() else { break };
                after = last.host_user_id.clone();
                let ids: Vec<&str> = rows.iter().map(|r| r.host_user_id.as_str()).collect();
                let locked = self.db.tables().try_lock_many(&ids).await?;
                let locked_ids: Vec<&str> = locked.iter().map(String::as_str).collect();
                // Read again under the lock: a job may have confirmed some.
                let rows = self.db.tables().unconfirmed_of(&locked_ids).await?;
                let still: HashSet<&str> = rows.iter().map(|r| r.host_user_id.as_str()).collect();
                let done: Vec<&str> = locked_ids
                    .iter()
                    .copied()
                    .filter(|h| !still.contains(h))
                    .collect();
                self.db.tables().unlock_many(&done).await?;
                let usernames: Vec<&str> =
                    rows.iter().filter_map(|r| r.username.as_deref()).collect();
                let found = self.db.conn().find(&usernames).await?;
                let check = self.sync.claim_check();
                let mut linked: Vec<(HostUserId, crate::embedded::EmbeddedUser)> = Vec::new();
                let mut unproven: Vec<(HostUserId, ConflictFound)> = Vec::new();
                let mut again: Vec<Pending> = Vec::new();
                let mut release: Vec<String> = Vec::new();
                for row in &rows {
                    let (Ok(host), Some(username)) = (
                        HostUserId::parse(&row.host_user_id),
                        row.username.as_deref(),
                    ) else {
                        release.push(row.host_user_id.clone());
                        continue;
                    };
                    let username = Username::from_api(username);
                    match found.get(&username) {
                        // This run's claims saw the username free; a job's
                        // may not have, and its user must prove itself.
                        Some(user)
                            if !row
                                .intent()
                                .provenance_of(&user.user_id, &check)
                                .is_the_creates() =>
                        {
                            unproven.push((
                                host,
                                ConflictFound {
                                    username,
                                    full_name: row.full_name.as_deref().map(FullName::from_api),
                                    reason: ConflictReason::UnconfirmedCreate,
                                    holder_host_user_id: None,
                                    holder_embedded_user_id: Some(user.user_id.clone()),
                                },
                            ));
                            release.push(row.host_user_id.clone());
                        }
                        Some(user) => {
                            linked.push((host, user.clone()));
                            release.push(row.host_user_id.clone());
                        }
                        None => again.push(Pending {
                            host,
                            profile: Profile {
                                username,
                                full_name: row.full_name.as_deref().map(FullName::from_api),
                            },
                            unconfirmed: Some(row.intent()),
                        }),
                    }
                }
                self.mark_linked(&linked).await?;
                self.summary.created += linked.len() as u64;
                for (host, conflict) in &unproven {
                    self.conflict(host, conflict).await?;
                }
                let release: Vec<&str> = release.iter().map(String::as_str).collect();
                self.db.tables().unlock_many(&release).await?;
                if self.cancel.is_cancelled() {
                    // Leave them `creating`: the next run sends them.
                    let hosts: Vec<&str> = again.iter().map(|p| p.host.as_str()).collect();
                    self.db.tables().unlock_many(&hosts).await?;
                    continue;
                }
                resent += again.len() as u64;
                for pending in again {
                    self.pending.push(pending);
                    if self.pending.len() >= self.options.batch_size {
                        self.flush().await?;
                    }
                }
                self.progress.update(&self.summary, "confirming");
            }
            self.flush().await?;
            if resent == 0 {
                break;
            }
            tracing::info!(
                resent,
                round,
                "creates with no user in Embedded were sent again"
            );
        }
        let unresolved = self
            .db
            .tables()
            .count_unconfirmed_since(self.started_at)
            .await?;
        if unresolved > 0 {
            tracing::warn!(
                unresolved,
                "creates still unconfirmed: run the backfill again to confirm them"
            );
        }
        self.summary.unresolved += unresolved;
        Ok(())
    }
}

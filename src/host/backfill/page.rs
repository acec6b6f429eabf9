//! One page of the host's open accounts: parsed (a row the API would
//! refuse is counted and logged), then decided, a second user of a page
//! with the same username conflicting with the first. A dry run counts the
//! decisions and lists the conflicts; a real run locks the users it may act
//! on, decides again under the locks, and links, reports or creates.
//!
//! Apart from the run, which opens, takes the snapshot, walks the pages and
//! finishes, so that each file holds one of the two.

use std::collections::HashMap;

use crate::domain::{
    ClaimCheck, ConflictReason, FullName, HostUserId, Profile, UserState, Username,
};
use crate::embedded::EmbeddedUser;
use crate::host::table::HostRow;
use crate::storage::{BackfillTables, Found, NewConflict, Signup};

use super::decide::{ConflictFound, Decision, Known, decide};
use super::report::{ConflictLine, Output};
use super::snapshot::WorkingTables;
use super::{Mode, Run};

/// Host users whose lock a job held, kept (ids and profiles) for one more
/// try at the end; beyond this many they are counted unresolved.
const MAX_BUSY_KEPT: usize = 10_000;

impl<D: super::db::BackfillDb> Run<D> {
    /// Parses a page; rows the API would refuse are counted and logged.
    pub(super) fn parse(&mut self, rows: Vec<HostRow>) -> Vec<(HostUserId, Profile)> {
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
    pub(super) async fn plan_page(
        &mut self,
        users: Vec<(HostUserId, Profile)>,
        output: &mut Output<'_>,
    ) -> anyhow::Result<()> {
        let known = self.db.conn().lookup(&users).await?;
        let check = self.sync.claim_check();
        let decisions = decide_page(&users, &known, self.options.adopt_existing, &check);
        let mut planned = Vec::new();
        for ((host, want), decision) in users.iter().zip(decisions) {
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
        self.db.conn().plan_creates(&planned).await?;
        Ok(())
    }

    /// Real run: lock, decide under the lock, act.
    pub(super) async fn act_on_page(
        &mut self,
        users: Vec<(HostUserId, Profile)>,
    ) -> anyhow::Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        // Users already synced need no lock: only a closure changes that,
        // and it is the pipeline's.
        let known = self.db.conn().lookup(&users).await?;
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
        let locked: std::collections::HashSet<String> = self
            .db
            .tables()
            .try_lock_many(&ids)
            .await?
            .into_iter()
            .collect();
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
        let known = self.db.conn().lookup(mine).await?;
        let check = self.sync.claim_check();
        let decisions = decide_page(mine, &known, self.options.adopt_existing, &check);
        let mut adopt: Vec<(&HostUserId, EmbeddedUser)> = Vec::new();
        let mut creates: Vec<Signup<'_>> = Vec::new();
        let mut release: Vec<&str> = Vec::new();
        for (((host, want), known), decision) in mine.iter().zip(&known).zip(decisions) {
            match decision {
                Decision::Create => {
                    let unconfirmed = known.state.as_deref() == Some("creating");
                    creates.push((host, want, unconfirmed.then_some(known.claim)));
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
                self.db.tables().unlock_many(&release).await?;
                for pending in claimed {
                    self.pending.push(pending);
                    if self.pending.len() >= self.options.batch_size {
                        self.flush().await?;
                    }
                }
            }
            Mode::Single => {
                let events = self.db.tables().record_signups(&creates).await?;
                release.extend(creates.iter().map(|(h, _, _)| h.as_str()));
                self.db.tables().unlock_many(&release).await?;
                self.run_jobs(events).await?;
            }
        }
        Ok(())
    }

    /// Records each host user as synced with its Embedded user, in one
    /// statement.
    pub(super) async fn mark_linked<H: std::borrow::Borrow<HostUserId>>(
        &mut self,
        linked: &[(H, EmbeddedUser)],
    ) -> anyhow::Result<()> {
        let profiles: Vec<Profile> = linked.iter().map(|(_, u)| u.profile()).collect();
        let found: Vec<Found<'_>> = linked
            .iter()
            .zip(&profiles)
            .map(|((host, user), profile)| Found {
                host: host.borrow(),
                user: &user.user_id,
                profile,
            })
            .collect();
        self.db.tables().mark_synced_many(&found).await?;
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
    pub(super) async fn conflict(
        &mut self,
        host: &HostUserId,
        c: &ConflictFound,
    ) -> anyhow::Result<()> {
        self.db
            .tables()
            .set_without_user(host, UserState::Conflict)
            .await?;
        let conflict = NewConflict {
            host,
            username: &c.username,
            reason: c.reason,
            holder_host_user_id: c.holder_host_user_id.as_ref(),
            holder_embedded_user_id: c.holder_embedded_user_id.as_ref(),
            event_id: None,
        };
        let full_name = c.full_name.as_ref();
        if self
            .db
            .tables()
            .report_conflict(&conflict, full_name)
            .await?
        {
            crate::sync::reported(&conflict);
        }
        self.summary.conflicts += 1;
        Ok(())
    }
}

/// What to do with each user of a page (what is `known` of each, in
/// order), a second host user with the same username conflicting with the
/// first.
fn decide_page(
    users: &[(HostUserId, Profile)],
    known: &[Known],
    adopt: bool,
    check: &ClaimCheck,
) -> Vec<Decision> {
    let mut first_of: HashMap<&Username, &HostUserId> = HashMap::new();
    users
        .iter()
        .zip(known)
        .map(|((host, want), known)| {
            within_page(
                decide(host, want, known, adopt, check),
                host,
                want,
                &mut first_of,
            )
        })
        .collect()
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
            full_name: want.full_name.clone(),
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

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
use crate::host::table::{HostRow, PageKey};
use crate::storage::{
    BackfillTables, Found, HOST_USER_ID_BOUND, NewConflict, Signup, VALUE_BOUND, Written,
};

use super::decide::{ConflictFound, Decision, Known, decide};
use super::report::{ConflictLine, Output};
use super::snapshot::WorkingTables;
use super::{Mode, Run};

/// Host users whose lock a job held, kept (ids and profiles) for one more
/// try at the end; beyond this many they are counted unresolved.
const MAX_BUSY_KEPT: usize = 10_000;

impl<D: super::db::BackfillDb> Run<D> {
    /// Parses a page; rows the API would refuse, and rows whose values are
    /// not text or longer than is read (`storage::written`), are counted
    /// and logged with why.
    ///
    /// A host user id the source holds more than once is used at its first
    /// row only: the others are reported (which of two emails is the user's
    /// cannot be told). `previous` is the id of the row read last, on this
    /// page or the one before (rows of one id follow each other).
    pub(super) fn parse(
        &mut self,
        rows: Vec<HostRow>,
        previous: &mut Option<PageKey>,
    ) -> Vec<(HostUserId, Profile)> {
        let mut users: Vec<(HostUserId, Profile)> = Vec::with_capacity(rows.len());
        let mut hosts = std::collections::HashSet::new();
        for row in rows {
            self.summary.scanned += 1;
            let again = previous.as_ref() == Some(&row.page_key);
            *previous = Some(row.page_key.clone());
            let parsed = parse_row(row).and_then(|(host, profile)| {
                if again || !hosts.insert(host.clone()) {
                    return Err((Some(host), DUPLICATE.to_owned()));
                }
                Ok((host, profile))
            });
            match parsed {
                Ok(user) => users.push(user),
                Err((host, reason)) => {
                    self.summary.invalid += 1;
                    match host {
                        Some(host) => {
                            tracing::warn!(host_user_id = %host, %reason, "host user skipped: invalid data");
                        }
                        None => tracing::warn!(%reason, "host user skipped: no usable id"),
                    }
                }
            }
        }
        users
    }

    /// Counts the open accounts without an id, which are in no page, as
    /// scanned and invalid.
    pub(super) fn without_id(&mut self, count: u64) {
        if count > 0 {
            self.summary.scanned += count;
            self.summary.invalid += count;
            tracing::warn!(
                count,
                reason = "host_user_id is missing",
                "host users skipped: no id"
            );
        }
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

/// Why a second row of one host user id is skipped.
const DUPLICATE: &str = "host_user_id appears more than once in the source: its first row is used";

/// One row's host user and profile, or why not (with its host user when
/// that much was usable). Never panics, whatever the row holds.
pub(super) fn parse_row(
    row: HostRow,
) -> Result<(HostUserId, Profile), (Option<HostUserId>, String)> {
    let text =
        |value, column, bound| Written::text(value, column, bound).map_err(|u| u.to_string());
    let host = text(row.host_user_id, "host_user_id", HOST_USER_ID_BOUND)
        .and_then(|h| HostUserId::parse(h.as_deref().unwrap_or("")).map_err(|e| e.to_string()))
        .map_err(|reason| (None, reason))?;
    let profile = text(row.email, "email", VALUE_BOUND).and_then(|email| {
        let username =
            Username::from_email(email.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
        let name = text(row.full_name, "full_name", VALUE_BOUND)?;
        let full_name = FullName::parse_optional(name.as_deref()).map_err(|e| e.to_string())?;
        Ok(Profile {
            username,
            full_name,
        })
    });
    match profile {
        Ok(profile) => Ok((host, profile)),
        Err(reason) => Err((Some(host), reason)),
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

#[cfg(test)]
mod properties {
    //! Properties over any row a host's users table could hold, however
    //! malformed (the backfill's side of the outbox's properties in
    //! `sync::job_tests`): a row is a user or a reason, never a panic, and
    //! the reason never repeats a value. End to end, over real tables and
    //! the real run, in `tests/hostile.rs`.

    use proptest::prelude::*;

    use super::{PageKey, parse_row};
    use crate::host::table::HostRow;
    use crate::storage::{VALUE_BOUND, Written};

    /// A column as a database may hand it over: text of any kind and
    /// length (emails that look like emails among them), a BLOB, bytes that
    /// are not UTF-8, or `NULL`.
    fn written() -> impl Strategy<Value = Option<Written>> {
        proptest::option::of(prop_oneof![
            4 => "[ \t]?[a-cA-C]{1,2}@[ab]\\.io[ \t]?".prop_map(Written::Text),
            4 => any::<String>().prop_map(Written::Text),
            1 => (0..3 * VALUE_BOUND).prop_map(|n| Written::Text(format!("{}@x.io", "a".repeat(n)))),
            1 => Just(Written::NotText),
            1 => Just(Written::NotUtf8),
        ])
    }

    proptest! {
        #[test]
        fn any_host_row_is_a_user_or_a_reason(
            host in written(),
            email in written(),
            name in written(),
        ) {
            let values: Vec<String> = [&host, &email, &name]
                .into_iter()
                .filter_map(|v| match v {
                    Some(Written::Text(t)) if t.trim().chars().count() > 3 => Some(t.trim().to_owned()),
                    _ => None,
                })
                .collect();
            let row = HostRow {
                host_user_id: host,
                email,
                full_name: name,
                page_key: PageKey::Integer(1),
            };
            if let Err((_, reason)) = parse_row(row) {
                prop_assert!(!reason.is_empty());
                for value in &values {
                    prop_assert!(!reason.contains(value.as_str()), "the reason repeats a value");
                }
            }
        }
    }
}

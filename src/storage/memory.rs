//! The sync job's storage in the process's memory, for unit tests of the
//! job without a database: the same rows and states as the SQL of
//! [`crate::storage::pg`] and [`crate::storage::sqlite`], one `Mutex` in
//! place of the tables. Each write is whole under the lock, so what the SQL
//! does in one transaction (an erasure, a user synced with its event)
//! happens here at once too.
//!
//! Per-user locks are the SQLite store's ([`UserLocks`]): held in the
//! process, freed when a session ends however it ends.
//!
//! The whole module is test code (`#[cfg(test)] mod memory` in
//! `storage/mod.rs`), hence its length: a third implementation of every
//! session method, beside the two backends'.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use std::future::Future;

use crate::domain::{
    ConflictReason, EmbeddedUserId, ErasureOutcome, EventState, HostUserId, Intent, LogsSkipped,
    Profile, RESOLVED_BY_WORKER, Resolution, Synced, UserState, Username,
};
use crate::storage::Claimed;
use crate::storage::conflicts::NewConflict;
use crate::storage::events::{HolderProbe, NextEvent, OutboxEvent, WrittenEvent, host_of_written};
use crate::storage::sqlite::{UserLockGuard, UserLocks};
use crate::storage::users::{Claim, HolderClaim, synced_from};
use crate::storage::written::Written;
use crate::storage::{
    Ending, Erasure, ErasureStep, ErasureSteps, Holding, Sessions, Snooze, SyncStore, UserSession,
};

const PENDING: &str = "pending";

/// One outbox row: the columns a job reads, and the others.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub event: OutboxEvent,
    pub dispatched_at: Option<DateTime<Utc>>,
    /// `pending`, or how it ended ([`EventState::as_str`]).
    pub state: &'static str,
    pub reason: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One row of the worker's users.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UserRow {
    pub host_user_id: String,
    pub embedded_user_id: Option<String>,
    pub username: Option<String>,
    pub full_name: Option<String>,
    pub state: UserState,
    pub last_event_id: Option<i64>,
    /// What the row's last claim recorded (the tables' `updated_at` and
    /// `username_seen_free` while the row is `creating`).
    pub intent: Intent,
}

/// One reported conflict.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConflictRow {
    pub host_user_id: String,
    pub username: String,
    pub reason: ConflictReason,
    pub holder_host_user_id: Option<String>,
    pub holder_embedded_user_id: Option<String>,
    pub event_id: Option<i64>,
    /// `open` or `resolved`.
    pub status: &'static str,
    /// How it was resolved (see `domain::Resolution`), and by whom.
    pub resolution: Option<Resolution>,
    pub resolved_by: Option<String>,
    /// An operator's retry under way: who asked.
    pub retry_by: Option<String>,
    /// How often it was met again while open.
    pub checks: u32,
    pub detected_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl ConflictRow {
    /// Resolves it as the worker: `retried` when an operator's retry is
    /// under way, `moot` otherwise.
    fn resolve_by_worker(&mut self, now: DateTime<Utc>) {
        self.status = "resolved";
        self.resolved_at = Some(now);
        let retry_by = self.retry_by.take();
        self.resolution = Some(match retry_by {
            Some(_) => Resolution::Retried,
            None => Resolution::Moot,
        });
        self.resolved_by = Some(retry_by.unwrap_or_else(|| RESOLVED_BY_WORKER.to_owned()));
    }
}

/// One proof of erasure: ids and times only.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ErasureRow {
    pub host_user_id: String,
    pub embedded_user_id: Option<String>,
    pub event_id: i64,
    pub outcome: ErasureOutcome,
    pub requested_at: DateTime<Utc>,
    pub logs_deleted_at: Option<DateTime<Utc>>,
    pub user_deleted_at: Option<DateTime<Utc>>,
    pub completed_at: DateTime<Utc>,
    pub logs_skipped: Option<LogsSkipped>,
}

/// The steps of an erasure under way, per host user.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepsRow {
    pub embedded_user_id: String,
    pub logs_sent_at: Option<DateTime<Utc>>,
    pub logs_deleted_at: Option<DateTime<Utc>>,
    pub user_sent_at: Option<DateTime<Utc>>,
}

/// The tables.
#[derive(Default)]
struct State {
    /// By id: ids are never reused, a newer event has a larger one.
    events: BTreeMap<i64, EventRow>,
    users: BTreeMap<String, UserRow>,
    conflicts: Vec<ConflictRow>,
    erasures: Vec<ErasureRow>,
    erasure_steps: BTreeMap<String, StepsRow>,
}

/// The worker's tables in memory. Clones share them.
#[derive(Clone, Default)]
pub(crate) struct MemoryStore {
    state: Arc<Mutex<State>>,
    locks: UserLocks,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemoryStore {
    /// Writes an outbox event as the host does (every worker column at its
    /// default); returns its id.
    pub(crate) fn insert_event(
        &self,
        host: Option<&str>,
        kind: &str,
        email: Option<&str>,
        full_name: Option<&str>,
    ) -> i64 {
        let text = |value: Option<&str>| value.map(|v| Written::Text(v.to_owned()));
        self.insert_written(text(host), text(Some(kind)), text(email), text(full_name))
    }

    /// Writes an outbox event whose values may be what no text column of
    /// PostgreSQL holds (a SQLite BLOB, bytes that are not UTF-8); the job
    /// reads it as a statement of either backend would (see
    /// `storage::written`). Returns its id.
    pub(crate) fn insert_written(
        &self,
        host: Option<Written>,
        kind: Option<Written>,
        email: Option<Written>,
        full_name: Option<Written>,
    ) -> i64 {
        let mut state = lock(&self.state);
        let id = state.events.keys().next_back().map_or(1, |last| last + 1);
        let now = Utc::now();
        let event = WrittenEvent {
            id,
            host_user_id: host,
            kind,
            email,
            full_name,
            occurred_at: now,
            attempts: 0,
            available_at: now,
        }
        .into_event();
        let row = EventRow {
            event,
            dispatched_at: None,
            state: PENDING,
            reason: None,
            finished_at: None,
        };
        state.events.insert(id, row);
        id
    }

    /// Marks `ids` dispatched, as the dispatcher's claim does, and returns
    /// them as claimed.
    pub(crate) fn dispatch(&self, ids: &[i64]) -> Vec<Claimed> {
        let mut state = lock(&self.state);
        let now = Utc::now();
        let mut events = Vec::new();
        for id in ids {
            let Some(event) = state.events.get_mut(id) else {
                continue;
            };
            if event.state == PENDING {
                event.dispatched_at = Some(now);
            }
            let host_user_id = event.event.host_user_id.clone();
            events.push(Claimed {
                id: *id,
                host_user_id,
            });
        }
        events
    }

    /// Makes a snoozed event due now, as the passing of its delay would.
    pub(crate) fn make_due(&self, id: i64) {
        if let Some(event) = lock(&self.state).events.get_mut(&id) {
            event.event.available_at = Utc::now();
        }
    }

    /// Writes a user row as an earlier run would have left it.
    pub(crate) fn put_user(&self, row: UserRow) {
        lock(&self.state)
            .users
            .insert(row.host_user_id.clone(), row);
    }

    pub(crate) fn event(&self, id: i64) -> Option<EventRow> {
        lock(&self.state).events.get(&id).cloned()
    }

    pub(crate) fn events(&self) -> Vec<EventRow> {
        lock(&self.state).events.values().cloned().collect()
    }

    pub(crate) fn user(&self, host: &str) -> Option<UserRow> {
        lock(&self.state).users.get(host).cloned()
    }

    pub(crate) fn users(&self) -> Vec<UserRow> {
        lock(&self.state).users.values().cloned().collect()
    }

    pub(crate) fn conflicts(&self) -> Vec<ConflictRow> {
        lock(&self.state).conflicts.clone()
    }

    pub(crate) fn erasures(&self) -> Vec<ErasureRow> {
        lock(&self.state).erasures.clone()
    }

    /// The steps of the erasure under way of `host`, if one is.
    pub(crate) fn erasure_steps_of(&self, host: &str) -> Option<StepsRow> {
        lock(&self.state).erasure_steps.get(host).cloned()
    }
}

impl State {
    /// Ends `id` if it is still pending.
    fn finish(&mut self, id: i64, state: EventState, reason: Option<&str>) {
        if let Some(event) = self.events.get_mut(&id).filter(|e| e.state == PENDING) {
            event.state = state.as_str();
            event.reason = reason.map(str::to_owned);
            event.finished_at = Some(Utc::now());
            // The attempt that failed for good counts, as on the backends.
            event.event.attempts += i32::from(state == EventState::Failed);
        }
    }

    fn snooze(&mut self, id: i64, delay: Duration, failed: bool, reason: Option<&str>) {
        if let Some(event) = self.events.get_mut(&id).filter(|e| e.state == PENDING) {
            event.dispatched_at = None;
            let delay = chrono::Duration::from_std(delay).unwrap_or_default();
            event.event.available_at = Utc::now() + delay;
            event.event.attempts += i32::from(failed);
            if let Some(reason) = reason {
                event.reason = Some(reason.to_owned());
            }
        }
    }

    /// Another host user than `except` holding or claiming `username`:
    /// only a row `creating` or `synced` holds its username.
    fn holder_of(&self, username: &str, except: &str) -> Option<&str> {
        let holds = |u: &&UserRow| matches!(u.state, UserState::Creating | UserState::Synced);
        let other =
            |u: &&UserRow| u.host_user_id != except && u.username.as_deref() == Some(username);
        let holder = self.users.values().filter(holds).find(other);
        holder.map(|u| u.host_user_id.as_str())
    }

    /// The row of `host`, inserted in `state` with no user when missing.
    fn user_row(&mut self, host: &str, state: UserState) -> &mut UserRow {
        self.users
            .entry(host.to_owned())
            .or_insert_with(|| UserRow {
                host_user_id: host.to_owned(),
                embedded_user_id: None,
                username: None,
                full_name: None,
                state,
                last_event_id: None,
                intent: Intent::default(),
            })
    }

    /// `host`'s row says it has the Embedded user and profile it holds.
    fn set_synced(&mut self, host: &str, holding: Holding<'_>) -> sqlx::Result<()> {
        let Holding {
            id,
            profile,
            event_id,
        } = holding;
        let username = profile.username.as_str();
        if self.holder_of(username, host).is_some() {
            return Err(unique_violation("user_sync_users_username_claim"));
        }
        let mapped = |u: &UserRow| u.embedded_user_id.as_deref() == Some(id.as_str());
        if self
            .users
            .values()
            .any(|u| u.host_user_id != host && mapped(u))
        {
            return Err(unique_violation("user_sync_users.embedded_user_id"));
        }
        let row = self.user_row(host, UserState::Synced);
        row.embedded_user_id = Some(id.as_str().to_owned());
        row.username = Some(username.to_owned());
        row.full_name = profile.full_name.as_ref().map(|n| n.as_str().to_owned());
        row.state = UserState::Synced;
        row.last_event_id = Some(event_id);
        Ok(())
    }
}

/// A write a unique index of the tables refuses.
fn unique_violation(index: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("unique index {index}: the row would not be unique"))
}

impl SyncStore for MemoryStore {
    type Session = MemorySession;

    async fn lock_users<'a>(
        &'a self,
        hosts: &'a [HostUserId],
    ) -> sqlx::Result<Sessions<Self::Session>> {
        Ok(hosts
            .iter()
            .map(|host| {
                self.locks.try_lock(host).map(|guard| MemorySession {
                    state: self.state.clone(),
                    host: host.clone(),
                    _lock: guard,
                })
            })
            .collect())
    }

    async fn host_of_pending(&self, id: i64) -> sqlx::Result<Option<Result<HostUserId, String>>> {
        let state = lock(&self.state);
        Ok(state
            .events
            .get(&id)
            .filter(|e| e.state == PENDING)
            .map(|e| host_of_written(e.event.host_user_id.clone().map(Written::Text))))
    }

    async fn mark_invalid<'a>(&'a self, id: i64, reason: &'a str) -> sqlx::Result<()> {
        lock(&self.state).finish(id, EventState::Invalid, Some(reason));
        Ok(())
    }

    async fn snooze(&self, id: i64, delay: Duration) -> sqlx::Result<()> {
        lock(&self.state).snooze(id, delay, false, None);
        Ok(())
    }
}

/// One host user's rows, under its lock.
pub(crate) struct MemorySession {
    state: Arc<Mutex<State>>,
    host: HostUserId,
    /// Released when the session ends, however it ends.
    _lock: UserLockGuard,
}

impl MemorySession {
    /// Runs `write` on the tables, whole, when the future is polled.
    async fn with<T: Send>(
        &self,
        write: impl FnOnce(&mut State, &str) -> sqlx::Result<T> + Send,
    ) -> sqlx::Result<T> {
        write(&mut lock(&self.state), self.host.as_str())
    }
}

impl UserSession for MemorySession {
    fn newest_pending(&mut self) -> impl Future<Output = sqlx::Result<Option<NextEvent>>> + Send {
        self.with(|state, host| {
            let pending =
                |e: &&EventRow| e.state == PENDING && e.event.host_user_id.as_deref() == Some(host);
            let Some(newest) = state.events.values().rev().find(pending) else {
                return Ok(None);
            };
            let user = state.users.get(host);
            let last_acted_on = user.and_then(|u| u.last_event_id);
            let last_acted = last_acted_on.and_then(|id| state.events.get(&id));
            let synced = user.map_or(Synced::Nothing, |u| {
                let (id, name) = (u.embedded_user_id.as_deref(), u.full_name.as_deref());
                synced_from(u.state.as_str(), id, u.username.as_deref(), name, u.intent)
            });
            // `lower(btrim(email))`: btrim takes off spaces only.
            let holder_probe = newest.event.email.as_deref().map(|email| {
                let username = email.trim_matches(' ').to_lowercase();
                let holder = state.holder_of(&username, host).map(str::to_owned);
                HolderProbe { username, holder }
            });
            let older = state.events.range(..newest.event.id).map(|(_, e)| e);
            Ok(Some(NextEvent {
                event: newest.event.clone(),
                older_pending: older.filter(|e| pending(e)).count() as i64,
                last_acted_on,
                last_acted_unfinished: last_acted
                    .is_some_and(|l| matches!(l.state, PENDING | "superseded")),
                synced,
                holder_probe,
            }))
        })
    }

    fn finish<'a>(&'a mut self, e: Ending<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |tables, _| {
            tables.finish(e.id, e.state, e.reason);
            Ok(())
        })
    }

    fn supersede_older(&mut self, newest: i64) -> impl Future<Output = sqlx::Result<u64>> + Send {
        self.with(move |state, host| {
            let now = Utc::now();
            let mut count = 0;
            for (_, event) in state.events.range_mut(..newest) {
                if event.event.host_user_id.as_deref() == Some(host) && event.state == PENDING {
                    event.state = EventState::Superseded.as_str();
                    event.finished_at = Some(now);
                    count += 1;
                }
            }
            Ok(count)
        })
    }

    fn snooze<'a>(&'a mut self, s: Snooze<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, _| {
            state.snooze(s.id, s.delay, s.failed, s.reason);
            Ok(())
        })
    }

    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
        seen_free: bool,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send {
        self.with(move |state, host| {
            let username = profile.username.as_str();
            let holder = state.holder_of(username, host);
            if let Some(holder) = holder.and_then(|h| HostUserId::parse(h).ok()) {
                return Ok(Claim::TakenBy(holder));
            }
            let row = state.user_row(host, UserState::Creating);
            row.username = Some(username.to_owned());
            row.full_name = profile.full_name.as_ref().map(|n| n.as_str().to_owned());
            row.embedded_user_id = None;
            row.state = UserState::Creating;
            row.last_event_id = Some(event_id);
            row.intent = Intent {
                at: Some(Utc::now()),
                seen_free,
            };
            Ok(Claim::Claimed)
        })
    }

    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send {
        self.with(move |state, host| {
            Ok(state
                .holder_of(username.as_str(), host)
                .and_then(|h| HostUserId::parse(h).ok()))
        })
    }

    fn holder_claim<'a>(
        &'a mut self,
        holder: &'a HostUserId,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<HolderClaim>> + Send {
        self.with(move |state, _| {
            let row = state.users.get(holder.as_str()).filter(|u| {
                matches!(u.state, UserState::Creating | UserState::Synced)
                    && u.username.as_deref() == Some(username.as_str())
            });
            let due = state
                .events
                .values()
                .filter(|e| {
                    e.state == PENDING && e.event.host_user_id.as_deref() == Some(holder.as_str())
                })
                .map(|e| e.event.available_at)
                .min();
            Ok(HolderClaim::of(
                row.map(|u| (u.state.as_str().to_owned(), due)),
            ))
        })
    }

    fn note_update_sent(&mut self, event_id: i64) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            if let Some(row) = state.users.get_mut(host) {
                row.last_event_id = Some(event_id);
            }
            Ok(())
        })
    }

    fn record_holding<'a>(
        &'a mut self,
        found: Holding<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            // An update of the row: none, nothing written.
            match state.users.contains_key(host) {
                true => state.set_synced(host, found),
                false => Ok(()),
            }
        })
    }

    fn record_synced<'a>(
        &'a mut self,
        synced: Holding<'a>,
        applied: Option<i64>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            state.set_synced(host, synced)?;
            if let Some(applied) = applied {
                state.finish(applied, EventState::Applied, None);
            }
            let now = Utc::now();
            for c in &mut state.conflicts {
                if c.host_user_id == host && c.status == "open" {
                    c.resolve_by_worker(now);
                }
            }
            Ok(())
        })
    }

    fn mapped_elsewhere<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send {
        self.with(move |state, host| {
            Ok(state
                .users
                .values()
                .find(|u| {
                    u.embedded_user_id.as_deref() == Some(id.as_str()) && u.host_user_id != host
                })
                .and_then(|u| HostUserId::parse(&u.host_user_id).ok()))
        })
    }

    fn mark_without_user(
        &mut self,
        user_state: UserState,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            let row = state.user_row(host, user_state);
            row.embedded_user_id = None;
            // Released: the username is held only while creating or synced.
            row.username = None;
            row.state = user_state;
            row.last_event_id = Some(event_id);
            Ok(())
        })
    }

    fn report_conflict<'a>(
        &'a mut self,
        c: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send {
        self.with(move |state, _| {
            // An ignored one, or an open unconfirmed_create met again by
            // its user, stands; an open one with another reason no longer
            // does (moot); one with the same reason is counted met again.
            let same = |o: &ConflictRow| {
                o.host_user_id == c.host.as_str() && o.username == c.username.as_str()
            };
            let stands = state.conflicts.iter().any(|o| {
                same(o)
                    && (o.resolution == Some(Resolution::Ignored)
                        || (c.reason == ConflictReason::TakenInEmbedded
                            && o.status == "open"
                            && o.reason == ConflictReason::UnconfirmedCreate
                            && o.holder_embedded_user_id.as_deref()
                                == c.holder_embedded_user_id.map(EmbeddedUserId::as_str)))
            });
            if stands {
                return Ok(false);
            }
            let now = Utc::now();
            for o in &mut state.conflicts {
                if o.status == "open" && same(o) && o.reason != c.reason {
                    o.retry_by = None;
                    o.resolve_by_worker(now);
                }
            }
            if let Some(open) = state
                .conflicts
                .iter_mut()
                .find(|o| o.status == "open" && same(o) && o.reason == c.reason)
            {
                open.checks += 1;
                open.retry_by = None;
                return Ok(false);
            }
            state.conflicts.push(ConflictRow {
                host_user_id: c.host.as_str().to_owned(),
                username: c.username.as_str().to_owned(),
                reason: c.reason,
                holder_host_user_id: c.holder_host_user_id.map(|h| h.as_str().to_owned()),
                holder_embedded_user_id: c.holder_embedded_user_id.map(|u| u.as_str().to_owned()),
                event_id: c.event_id,
                status: "open",
                resolution: None,
                resolved_by: None,
                retry_by: None,
                checks: 0,
                detected_at: now,
                resolved_at: None,
            });
            Ok(true)
        })
    }

    fn erasure_steps<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<ErasureSteps>> + Send {
        self.with(move |state, host| {
            Ok(state
                .erasure_steps
                .get(host)
                .filter(|s| s.embedded_user_id == id.as_str())
                .map_or_else(ErasureSteps::default, |s| ErasureSteps {
                    logs_deleted: s.logs_deleted_at.is_some(),
                    user_delete_sent: s.user_sent_at.is_some(),
                }))
        })
    }

    fn record_erasure_step<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        step: ErasureStep,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            let row = state.erasure_steps.entry(host.to_owned()).or_default();
            if row.embedded_user_id != id.as_str() {
                *row = StepsRow {
                    embedded_user_id: id.as_str().to_owned(),
                    ..StepsRow::default()
                };
            }
            let now = Utc::now();
            match step {
                ErasureStep::SendingLogsDelete => {
                    row.logs_sent_at.get_or_insert(now);
                }
                ErasureStep::LogsDeleted => {
                    row.logs_deleted_at.get_or_insert(now);
                }
                ErasureStep::SendingUserDelete => {
                    row.user_sent_at.get_or_insert(now);
                }
                ErasureStep::UserDeleteNotSent => row.user_sent_at = None,
            }
            Ok(())
        })
    }

    fn record_erasure<'a>(
        &'a mut self,
        erasure: Erasure<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.with(move |state, host| {
            let row = state.user_row(host, UserState::Erased);
            (row.embedded_user_id, row.username, row.full_name) = (None, None, None);
            row.state = UserState::Erased;
            row.last_event_id = Some(erasure.closure_event_id);
            for (_, row) in state.events.range_mut(..=erasure.closure_event_id) {
                if row.event.host_user_id.as_deref() == Some(host) {
                    (row.event.email, row.event.full_name) = (None, None);
                }
            }
            state.conflicts.retain(|c| c.host_user_id != host);
            let requested_at = state
                .events
                .get(&erasure.closure_event_id)
                .map(|e| e.event.occurred_at);
            let recorded = state
                .erasures
                .iter()
                .any(|e| e.event_id == erasure.closure_event_id);
            let steps = state.erasure_steps.remove(host);
            if let (Some(requested_at), false) = (requested_at, recorded) {
                let user = erasure.embedded_user_id.map(|u| u.as_str().to_owned());
                let now = Utc::now();
                let logs_deleted_at = steps
                    .filter(|s| Some(&s.embedded_user_id) == user.as_ref())
                    .and_then(|s| s.logs_deleted_at);
                state.erasures.push(ErasureRow {
                    host_user_id: host.to_owned(),
                    user_deleted_at: user.is_some().then_some(now),
                    embedded_user_id: user,
                    event_id: erasure.closure_event_id,
                    outcome: erasure.outcome,
                    requested_at,
                    logs_deleted_at,
                    completed_at: now,
                    logs_skipped: erasure.logs_skipped,
                });
            }
            state.finish(erasure.closure_event_id, EventState::Applied, None);
            Ok(())
        })
    }

    fn release(self) -> impl Future<Output = sqlx::Result<()>> + Send {
        // Dropping the session drops the guard, which frees the user.
        drop(self);
        async { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_event_is_read_with_the_holder_of_its_username() {
        let store = MemoryStore::default();
        store.put_user(UserRow {
            host_user_id: "u1".into(),
            embedded_user_id: Some("e1".into()),
            username: Some("ada@example.com".into()),
            full_name: None,
            state: UserState::Synced,
            last_event_id: None,
            intent: Intent::default(),
        });
        store.insert_event(Some("u2"), "signup", Some("grace@example.com"), None);
        let newest = store.insert_event(Some("u2"), "signup", Some(" ADA@example.com "), None);
        let hosts = [HostUserId::parse("u2").expect("a host id")];
        let mut sessions = store.lock_users(&hosts).await.expect("locks");
        let session = sessions[0].as_mut().expect("u2 is free");
        let next = session.newest_pending().await.expect("a read");
        let next = next.expect("a pending event");
        assert_eq!((next.event.id, next.older_pending), (newest, 1));
        let probe = next.holder_probe.expect("a probe");
        assert_eq!(probe.username, "ada@example.com");
        assert_eq!(probe.holder.as_deref(), Some("u1"));
        let busy = store.lock_users(&hosts).await.expect("locks");
        assert!(busy[0].is_none(), "u2 locked twice");
    }
}

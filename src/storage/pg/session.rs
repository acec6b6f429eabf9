//! The sessions of a job's host users, all on one connection.
//!
//! A job carries the events of many host users. Each user's session holds
//! that user's advisory lock and runs the sync job's steps as before, one
//! statement at a time, each committed on its own. What changes is where
//! the statements go: every session of the job sends its statements to one
//! task that owns the connection. That task takes whatever the sessions
//! have sent while its previous round ran, and carries the statements of
//! one kind out together, in one round trip: 32 users claiming their
//! usernames cost one `INSERT … SELECT FROM unnest(…)`, not 32.
//!
//! A session waits for the round that carries its statement to commit.
//! An intent (a username claimed before its create, an update noted before
//! it is sent) is durable before its session goes on to call the API. An
//! outcome (a user synced, an event ended) commits without waiting for its
//! WAL to reach the disk ([`OUTCOME`]): lost in a crash of the database
//! server, it is learned again, because its event is still pending and its
//! intent still recorded, and the retry confirms with a lookup what the
//! lost outcome said. Either way an intent committed later flushes every
//! outcome before it. Sessions are
//! independent: a batched statement refused by the database (a unique
//! violation, when two users of one round claim one username) is run again
//! for each session alone, so that only the one at fault sees the error.
//!
//! The locks live as long as the connection's session. A session released
//! normally unlocks its user. When the last session is gone, a connection
//! that still holds a lock (a job cancelled mid-way) or whose state is
//! unknown (a statement failed) is closed, never handed back to the pool:
//! PostgreSQL then releases every lock it held.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{
    ConflictReason, EmbeddedUserId, EventState, HostUserId, Profile, UserState, Username,
};
use crate::storage::conflicts::NewConflict;
use crate::storage::events::{HolderProbe, NextEvent};
use crate::storage::users::{Claim, HolderClaim, NewClaim, SyncedUser};
use crate::storage::{
    Ending, Erasure, ErasureStep, ErasureSteps, Holding, Sessions, Snooze, UserSession,
};

use super::{events, users};

/// Locks as many of `hosts` as are free, all on one connection, and
/// returns a session for each of them (`None` for a busy one), in order.
pub async fn lock_each(
    pool: &PgPool,
    hosts: &[HostUserId],
) -> sqlx::Result<Sessions<BatchSession>> {
    let mut conn = pool.acquire().await?;
    let names: Vec<&str> = hosts.iter().map(HostUserId::as_str).collect();
    let locked = match users::try_lock_many(&mut conn, &names).await {
        Ok(locked) => locked,
        Err(error) => {
            // Some locks may be held: only closing the session frees them.
            drop(conn.detach());
            return Err(error);
        }
    };
    if locked.is_empty() {
        return Ok(hosts.iter().map(|_| None).collect());
    }
    let (requests, inbox) = mpsc::unbounded_channel();
    tokio::spawn(serve(conn, inbox, locked.len()));
    let locked: std::collections::HashSet<String> = locked.into_iter().collect();
    Ok(hosts
        .iter()
        .map(|host| {
            locked.contains(host.as_str()).then(|| BatchSession {
                host: host.clone(),
                requests: requests.clone(),
                probe: None,
            })
        })
        .collect())
}

type Answer<T> = oneshot::Sender<sqlx::Result<T>>;

/// A statement run alone; it answers its session itself and says whether
/// it succeeded.
type Alone = Box<dyn for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, bool> + Send>;

/// What a session asks of the connection.
enum Request {
    Newest(HostUserId, Answer<Option<NextEvent>>),
    HolderOf(Username, HostUserId, Answer<Option<HostUserId>>),
    Claim(NewClaim, Answer<Claim>),
    Synced(SyncedUser, Answer<()>),
    Finish(i64, EventState, Option<String>, Answer<()>),
    Unlock(HostUserId, Answer<()>),
    Alone(Alone),
}

/// How long a round waits for the job's other sessions once one has asked:
/// a session that is in an API call joins the round if its call ends by
/// then. Users of one job move through the same steps (read, claim, record)
/// a few milliseconds apart, so waiting this long turns a step of 64 users
/// into one or two statements instead of one per straggler, for at most
/// this much latency per step.
const GATHER: Duration = Duration::from_millis(5);

/// Opens the transaction of an outcome: its commit returns before its WAL
/// is on disk (see the module's doc for why that loses nothing). The
/// setting is local to the transaction: the connection's next statement
/// commits durably again.
pub(super) const OUTCOME: &str = "BEGIN; SET LOCAL synchronous_commit = off";

/// [`OUTCOME`] for the statements that reach the users and the events by
/// the batch's keys (the sync, the ends): without sequential scans. Their
/// plan is made once per connection; made while a table is small (a new
/// deployment, a bench's first seconds), it would read the table whole and
/// keep doing so as it grows (seen: 19 ms a claim at 30,000 users, against
/// 1 ms by key).
pub(super) const OUTCOME_BY_KEY: &str =
    "BEGIN; SET LOCAL synchronous_commit = off; SET LOCAL enable_seqscan = off";

/// Serves the sessions' requests until the last session is gone.
async fn serve(
    mut conn: PoolConnection<Postgres>,
    mut inbox: mpsc::UnboundedReceiver<Request>,
    mut held: usize,
) {
    let mut sound = true;
    while let Some(first) = inbox.recv().await {
        // A session asks one thing at a time: once as many requests as
        // sessions hold a user are here, nobody else is coming.
        let mut round = vec![first];
        let deadline = tokio::time::Instant::now() + GATHER;
        while round.len() < held {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(more)) => round.push(more),
                Ok(None) | Err(_) => break,
            }
        }
        while let Ok(more) = inbox.try_recv() {
            round.push(more);
        }
        let (ok, unlocked) = run_round(&mut conn, round).await;
        sound &= ok;
        held = held.saturating_sub(unlocked);
    }
    if sound && held > 0 {
        // A session ended without releasing its user (its job was
        // cancelled).
        sound = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *conn)
            .await
            .is_ok();
        held = 0;
    }
    if !sound || held > 0 {
        drop(conn.detach());
    }
}

/// Runs one round: the statements run alone first, in the order they came,
/// then one statement per kind for the rest. Returns whether every
/// statement succeeded and how many users were unlocked.
async fn run_round(conn: &mut PgConnection, round: Vec<Request>) -> (bool, usize) {
    let mut ok = true;
    let mut newest = Vec::new();
    let mut holders = Vec::new();
    let mut claims = Vec::new();
    let mut synced = Vec::new();
    let mut finishes = Vec::new();
    let mut unlocks = Vec::new();
    for request in round {
        match request {
            Request::Alone(run) => ok &= run(conn).await,
            Request::Newest(host, answer) => newest.push((host, answer)),
            Request::HolderOf(username, host, answer) => holders.push(((username, host), answer)),
            Request::Claim(claim, answer) => claims.push((claim, answer)),
            Request::Synced(user, answer) => synced.push((user, answer)),
            Request::Finish(id, state, reason, answer) => {
                finishes.push(((id, state, reason), answer));
            }
            Request::Unlock(host, answer) => unlocks.push((host, answer)),
        }
    }
    ok &= together(conn, newest, |conn, hosts| {
        Box::pin(async move {
            let names: Vec<&str> = hosts.iter().map(HostUserId::as_str).collect();
            events::newest_pending_many(conn, &names).await
        })
    })
    .await;
    ok &= together(conn, holders, |conn, lookups| {
        Box::pin(async move {
            let lookups: Vec<(&Username, &HostUserId)> =
                lookups.iter().map(|(u, h)| (u, h)).collect();
            users::holders_of(conn, &lookups).await
        })
    })
    .await;
    ok &= together(conn, claims, |conn, claims| {
        Box::pin(users::claim_each_for_create(conn, claims))
    })
    .await;
    ok &= together(conn, synced, |conn, synced| {
        Box::pin(async move {
            let mut tx = conn.begin_with(OUTCOME_BY_KEY).await?;
            users::mark_synced(&mut tx, synced).await?;
            tx.commit().await?;
            Ok(vec![(); synced.len()])
        })
    })
    .await;
    ok &= together(conn, finishes, |conn, ends| {
        Box::pin(async move {
            let ends: Vec<(i64, EventState, Option<&str>)> = ends
                .iter()
                .map(|(id, state, reason)| (*id, *state, reason.as_deref()))
                .collect();
            let mut tx = conn.begin_with(OUTCOME_BY_KEY).await?;
            events::finish_many(&mut tx, &ends).await?;
            tx.commit().await?;
            Ok(vec![(); ends.len()])
        })
    })
    .await;
    let count = unlocks.len();
    let unlocked = together(conn, unlocks, |conn, hosts| {
        Box::pin(async move {
            let names: Vec<&str> = hosts.iter().map(HostUserId::as_str).collect();
            users::unlock_many(conn, &names).await?;
            Ok(vec![(); names.len()])
        })
    })
    .await;
    ok &= unlocked;
    (ok, if unlocked { count } else { 0 })
}

/// Runs `statement` once for all `requests` and answers each with its own
/// result. A statement the database refuses is run again for each request
/// alone, so that only the one at fault sees the error. Returns whether
/// every request got a result.
async fn together<I, T, F>(
    conn: &mut PgConnection,
    requests: Vec<(I, Answer<T>)>,
    statement: F,
) -> bool
where
    F: for<'c> Fn(&'c mut PgConnection, &'c [I]) -> BoxFuture<'c, sqlx::Result<Vec<T>>>,
{
    if requests.is_empty() {
        return true;
    }
    let (inputs, answers): (Vec<I>, Vec<Answer<T>>) = requests.into_iter().unzip();
    match statement(conn, &inputs).await {
        Ok(results) if results.len() == inputs.len() => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(Ok(result));
            }
            true
        }
        Ok(_) => {
            for answer in answers {
                let _ = answer.send(Err(sqlx::Error::Protocol(
                    "a batched statement answered for a different number of rows".into(),
                )));
            }
            false
        }
        Err(sqlx::Error::Database(_)) if inputs.len() > 1 => {
            let mut ok = true;
            for (input, answer) in inputs.iter().zip(answers) {
                let result =
                    statement(conn, std::slice::from_ref(input))
                        .await
                        .and_then(|mut one| {
                            one.pop().ok_or_else(|| {
                                sqlx::Error::Protocol("a statement answered for no row".into())
                            })
                        });
                ok &= result.is_ok();
                let _ = answer.send(result);
            }
            ok
        }
        Err(error) => {
            let mut answers = answers.into_iter();
            if let Some(first) = answers.next() {
                let _ = first.send(Err(error));
            }
            for answer in answers {
                let _ = answer.send(Err(sqlx::Error::Protocol(
                    "a statement batched with this one failed".into(),
                )));
            }
            false
        }
    }
}

/// One host user's session: its statements go to the connection's task.
pub struct BatchSession {
    host: HostUserId,
    requests: mpsc::UnboundedSender<Request>,
    /// The holder of the newest event's username, read with the event: a
    /// create checks it without a round of its own.
    probe: Option<HolderProbe>,
}

fn gone() -> sqlx::Error {
    sqlx::Error::Protocol("the locked connection is gone".into())
}

impl BatchSession {
    /// Sends a request and waits for its answer.
    async fn ask<T>(&self, request: impl FnOnce(Answer<T>) -> Request) -> sqlx::Result<T> {
        let (answer, reply) = oneshot::channel();
        self.requests.send(request(answer)).map_err(|_| gone())?;
        reply.await.map_err(|_| gone())?
    }

    /// Runs `statement` alone on the connection and waits for its result.
    async fn alone<T: Send + 'static>(
        &self,
        statement: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, sqlx::Result<T>>
        + Send
        + 'static,
    ) -> sqlx::Result<T> {
        self.ask(|answer| {
            Request::Alone(Box::new(move |conn| {
                Box::pin(async move {
                    let result = statement(conn).await;
                    let ok = result.is_ok();
                    let _ = answer.send(result);
                    ok
                })
            }))
        })
        .await
    }
}

impl UserSession for BatchSession {
    async fn newest_pending(&mut self) -> sqlx::Result<Option<NextEvent>> {
        let next = self
            .ask(|answer| Request::Newest(self.host.clone(), answer))
            .await?;
        self.probe = next.as_ref().and_then(|n| n.holder_probe.clone());
        Ok(next)
    }

    fn finish<'a>(&'a mut self, e: Ending<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        let reason = e.reason.map(str::to_owned);
        self.ask(move |answer| Request::Finish(e.id, e.state, reason, answer))
    }

    fn supersede_older(&mut self, newest: i64) -> impl Future<Output = sqlx::Result<u64>> + Send {
        let host = self.host.clone();
        self.alone(move |conn| {
            Box::pin(async move { events::supersede_older(conn, &host, newest).await })
        })
    }

    fn snooze<'a>(&'a mut self, s: Snooze<'a>) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (
            Snooze {
                id, delay, failed, ..
            },
            reason,
        ) = (s, s.reason.map(str::to_owned));
        self.alone(move |conn| {
            Box::pin(
                async move { events::snooze(conn, id, delay, failed, reason.as_deref()).await },
            )
        })
    }

    fn claim_for_create<'a>(
        &'a mut self,
        profile: &'a Profile,
        event_id: i64,
        seen_free: bool,
    ) -> impl Future<Output = sqlx::Result<Claim>> + Send {
        let claim = NewClaim {
            host: self.host.clone(),
            profile: profile.clone(),
            event_id,
            seen_free,
        };
        self.ask(move |answer| Request::Claim(claim, answer))
    }

    fn holder_of<'a>(
        &'a mut self,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send {
        // Answered once from the read, then asked again: a later check
        // (after a conflict met, a create refused) looks afresh.
        let probed = self.probe.take().and_then(|p| p.answer(username));
        let (username, host) = (username.clone(), self.host.clone());
        async move {
            match probed {
                Some(holder) => Ok(holder),
                None => {
                    self.ask(move |answer| Request::HolderOf(username, host, answer))
                        .await
                }
            }
        }
    }

    fn holder_claim<'a>(
        &'a mut self,
        holder: &'a HostUserId,
        username: &'a Username,
    ) -> impl Future<Output = sqlx::Result<HolderClaim>> + Send {
        let (holder, username) = (holder.clone(), username.clone());
        self.alone(move |conn| {
            Box::pin(async move { users::holder_claim(conn, &holder, &username).await })
        })
    }

    fn note_update_sent(&mut self, event_id: i64) -> impl Future<Output = sqlx::Result<()>> + Send {
        let host = self.host.clone();
        self.alone(move |conn| {
            Box::pin(async move { users::note_update_sent(conn, &host, event_id).await })
        })
    }

    fn record_holding<'a>(
        &'a mut self,
        found: Holding<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (host, id, profile) = (self.host.clone(), found.id.clone(), found.profile.clone());
        let event_id = found.event_id;
        self.alone(move |conn| {
            Box::pin(async move { users::record_found(conn, &host, &id, &profile, event_id).await })
        })
    }

    fn record_synced<'a>(
        &'a mut self,
        synced: Holding<'a>,
        applied: Option<i64>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let user = SyncedUser {
            host: self.host.clone(),
            id: synced.id.clone(),
            profile: synced.profile.clone(),
            event_id: synced.event_id,
            applied,
        };
        self.ask(move |answer| Request::Synced(user, answer))
    }

    fn mapped_elsewhere<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<Option<HostUserId>>> + Send {
        let (host, id) = (self.host.clone(), id.clone());
        self.alone(move |conn| {
            Box::pin(async move { users::mapped_elsewhere(conn, &host, &id).await })
        })
    }

    fn flush_outcomes(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send {
        self.alone(|conn| Box::pin(users::flush_outcomes(conn)))
    }

    fn mark_without_user(
        &mut self,
        state: UserState,
        event_id: i64,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (host, state) = (self.host.clone(), state);
        self.alone(move |conn| {
            Box::pin(async move { users::mark_without_user(conn, &host, state, event_id).await })
        })
    }

    fn report_conflict<'a>(
        &'a mut self,
        conflict: &'a NewConflict<'a>,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send {
        let owned = OwnedConflict::of(conflict);
        self.alone(move |conn| {
            Box::pin(async move {
                crate::storage::pg::conflicts::report_conflict(conn, &owned.borrowed()).await
            })
        })
    }

    fn erasure_steps<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
    ) -> impl Future<Output = sqlx::Result<ErasureSteps>> + Send {
        let (host, id) = (self.host.clone(), id.clone());
        self.alone(move |conn| {
            Box::pin(async move { crate::storage::pg::erasures::steps(conn, &host, &id).await })
        })
    }

    fn record_erasure_step<'a>(
        &'a mut self,
        id: &'a EmbeddedUserId,
        step: ErasureStep,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (host, id) = (self.host.clone(), id.clone());
        self.alone(move |conn| {
            Box::pin(async move {
                crate::storage::pg::erasures::record_step(conn, &host, &id, step).await
            })
        })
    }

    fn record_erasure<'a>(
        &'a mut self,
        erasure: Erasure<'a>,
    ) -> impl Future<Output = sqlx::Result<()>> + Send {
        let (host, user) = (self.host.clone(), erasure.embedded_user_id.cloned());
        self.alone(move |conn| {
            Box::pin(async move {
                let erasure = Erasure {
                    embedded_user_id: user.as_ref(),
                    ..erasure
                };
                crate::storage::pg::erasures::erase(conn, &host, &erasure).await
            })
        })
    }

    async fn release(self) -> sqlx::Result<()> {
        let host = self.host.clone();
        self.ask(move |answer| Request::Unlock(host, answer)).await
    }
}

/// A [`NewConflict`] that can travel to the connection's task.
struct OwnedConflict {
    host: HostUserId,
    username: Username,
    reason: ConflictReason,
    holder_host_user_id: Option<HostUserId>,
    holder_embedded_user_id: Option<EmbeddedUserId>,
    event_id: Option<i64>,
}

impl OwnedConflict {
    fn of(c: &NewConflict<'_>) -> Self {
        Self {
            host: c.host.clone(),
            username: c.username.clone(),
            reason: c.reason,
            holder_host_user_id: c.holder_host_user_id.cloned(),
            holder_embedded_user_id: c.holder_embedded_user_id.cloned(),
            event_id: c.event_id,
        }
    }

    fn borrowed(&self) -> NewConflict<'_> {
        NewConflict {
            host: &self.host,
            username: &self.username,
            reason: self.reason,
            holder_host_user_id: self.holder_host_user_id.as_ref(),
            holder_embedded_user_id: self.holder_embedded_user_id.as_ref(),
            event_id: self.event_id,
        }
    }
}

//! The sync job's steps, one test each: the job as the queue runs it
//! ([`run`]), on the in-memory storage, against the sandbox over loopback
//! HTTP. Each test says what the step must call in Embedded and what it
//! must leave in the worker's tables. The whole file is test code
//! (`#[cfg(test)] mod job_tests` in `sync/mod.rs`), hence its length.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use secrecy::SecretString;
use user_sync_sandbox::{FaultUpdate, IdFormat, Sandbox, SandboxOptions, routes};

use crate::config::{
    EmbeddedSettings, LookupBeforeCreate, RateLimitScope, RateLimitSettings, SyncSettings,
    WorkerSettings,
};
use crate::domain::{ConflictReason, ErasureOutcome, HostUserId, Intent, LogsSkipped, UserState};
use crate::embedded::EmbeddedClient;
use crate::queue::{JobEvent, SyncJob};
use crate::ratelimit::ApiGate;
use crate::storage::{EventRow, MemoryStore, SyncStore, UserRow};
use crate::sync::job::{SyncContext, run};

const KEY: &str = "job-test-key";
const MAX_ATTEMPTS: u32 = 3;

/// A job's world: the tables, the API and the context a worker builds.
struct Env {
    store: MemoryStore,
    sandbox: Sandbox,
    ctx: SyncContext<MemoryStore>,
}

impl Env {
    async fn start() -> Self {
        Self::start_with(SandboxOptions::default(), SyncSettings::default()).await
    }

    /// With `lookup_before_create = "always"`.
    async fn looking_up_first() -> Self {
        Self::start_with(SandboxOptions::default(), always()).await
    }

    async fn start_with(options: SandboxOptions, sync: SyncSettings) -> Self {
        let options = SandboxOptions {
            api_key: KEY.into(),
            ..options
        };
        let sandbox = Sandbox::start("127.0.0.1:0".parse().expect("an address"), options)
            .await
            .expect("the sandbox starts");
        let settings = EmbeddedSettings::local(sandbox.base_url(), SecretString::from(KEY));
        let api = EmbeddedClient::new(&settings).expect("a client");
        let gate = Arc::new(ApiGate::new(&RateLimitSettings {
            requests_per_second: 1000,
            burst: 100,
            scope: RateLimitScope::Process,
            adaptive: false,
            max_requests_per_second: 1000,
        }));
        let worker = WorkerSettings {
            concurrency: 4,
            max_attempts: MAX_ATTEMPTS,
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(200),
            auth_retry_interval: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        };
        let store = MemoryStore::default();
        let ctx = SyncContext::new(Arc::new(store.clone()), api, gate, worker, sync);
        Self {
            store,
            sandbox,
            ctx,
        }
    }

    /// Dispatches `ids` as one job and runs it to its end.
    async fn run(&self, ids: &[i64]) {
        let events = self
            .store
            .dispatch(ids)
            .into_iter()
            .map(|c| JobEvent {
                event_id: c.id,
                host_user_id: c.host_user_id,
            })
            .collect();
        run(&self.ctx, &SyncJob { events })
            .await
            .expect("the job runs");
    }

    fn event(&self, host: &str, kind: &str, email: Option<&str>, name: Option<&str>) -> i64 {
        self.store.insert_event(Some(host), kind, email, name)
    }

    fn signup(&self, host: &str, email: &str, name: Option<&str>) -> i64 {
        self.event(host, "signup", Some(email), name)
    }

    fn change(&self, host: &str, email: &str, name: Option<&str>) -> i64 {
        self.event(host, "profile_change", Some(email), name)
    }

    /// A signup run to its end; returns the Embedded user id it mapped.
    async fn synced(&self, host: &str, email: &str, name: Option<&str>) -> String {
        let id = self.signup(host, email, name);
        self.run(&[id]).await;
        assert_eq!(self.state(id), "applied");
        self.user(host).embedded_user_id.expect("mapped")
    }

    /// Runs `ids` again once their snooze is over.
    async fn retry(&self, ids: &[i64]) {
        for id in ids {
            self.store.make_due(*id);
        }
        self.run(ids).await;
    }

    /// Sets the share of creates, updates and deletes whose answer is lost.
    fn drop_rate(&self, rate: f64) {
        self.sandbox.update_faults(FaultUpdate {
            drop_rate: Some(rate),
            ..FaultUpdate::default()
        });
    }

    /// Sets the share of requests answered with a server error.
    fn fail_rate(&self, rate: f64) {
        self.sandbox.update_faults(FaultUpdate {
            fail_rate: Some(rate),
            ..FaultUpdate::default()
        });
    }

    fn row(&self, id: i64) -> EventRow {
        self.store.event(id).expect("the event")
    }

    fn state(&self, id: i64) -> &'static str {
        self.row(id).state
    }

    fn user(&self, host: &str) -> UserRow {
        self.store.user(host).expect("a user row")
    }

    fn calls(&self) -> u64 {
        self.sandbox.stats().total_requests
    }
}

#[tokio::test]
async fn a_signup_creates_the_user_and_maps_it() {
    let env = Env::start().await;
    let id = env.signup("u1", " Ada@Example.com ", Some("Ada Lovelace"));
    env.run(&[id]).await;

    let stats = env.sandbox.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.route_total(routes::CREATE), 1);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "ada@example.com");
    assert_eq!(users[0].full_name.as_deref(), Some("Ada Lovelace"));
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Synced);
    assert_eq!(
        row.embedded_user_id.as_deref(),
        Some(users[0].user_id.as_str())
    );
    assert_eq!(row.username.as_deref(), Some("ada@example.com"));
    assert_eq!(row.full_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(row.last_event_id, Some(id));
    let event = env.row(id);
    assert_eq!((event.state, event.reason), ("applied", None));
    assert!(event.finished_at.is_some());
}

#[tokio::test]
async fn a_profile_change_updates_the_same_user() {
    let env = Env::start().await;
    let user_id = env.synced("u1", "ada@example.com", Some("Ada")).await;
    let change = env.change("u1", "ada@lovelace.org", Some("Ada King"));
    env.run(&[change]).await;

    assert_eq!(env.state(change), "applied");
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::UPDATE), 1);
    assert_eq!(stats.creates, 1);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].user_id, user_id);
    assert_eq!(users[0].username, "ada@lovelace.org");
    assert_eq!(users[0].full_name.as_deref(), Some("Ada King"));
    let row = env.user("u1");
    assert_eq!(row.username.as_deref(), Some("ada@lovelace.org"));
    assert_eq!(row.full_name.as_deref(), Some("Ada King"));
    assert_eq!(row.last_event_id, Some(change));
}

#[tokio::test]
async fn nothing_changed_makes_no_call() {
    let env = Env::start().await;
    env.synced("u1", "ada@example.com", Some("Ada")).await;
    let before = env.calls();
    let same = env.change("u1", " ADA@example.com", Some("Ada"));
    env.run(&[same]).await;

    assert_eq!(env.state(same), "applied");
    assert_eq!(env.calls(), before);
}

#[tokio::test]
async fn a_closure_deletes_the_user_and_leaves_no_email_or_name() {
    let env = Env::start().await;
    let user_id = env
        .synced("u1", "ada@example.com", Some("Ada Lovelace"))
        .await;
    // An open conflict of u1's, over a name u2 holds: erased with the rest.
    env.synced("u2", "grace@example.com", None).await;
    let taken = env.change("u1", "grace@example.com", None);
    env.run(&[taken]).await;
    assert_eq!(env.state(taken), "conflict");
    assert_eq!(env.store.conflicts().len(), 1);

    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;

    assert_eq!(env.state(closure), "applied");
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 1);
    let left: Vec<String> = env.sandbox.users().into_iter().map(|u| u.user_id).collect();
    assert!(!left.contains(&user_id), "u1's user is still in Embedded");
    let erasures = env.store.erasures();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].host_user_id, "u1");
    assert_eq!(
        erasures[0].embedded_user_id.as_deref(),
        Some(user_id.as_str())
    );
    assert_eq!(erasures[0].event_id, closure);
    assert_eq!(erasures[0].outcome, ErasureOutcome::Deleted);
    let closed_at = env
        .store
        .event(closure)
        .expect("the closure")
        .event
        .occurred_at;
    assert_eq!(erasures[0].requested_at, closed_at);
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Erased);
    assert_eq!(row.embedded_user_id, None);
    let u1_events: Vec<_> = env
        .store
        .events()
        .into_iter()
        .filter(|e| e.event.host_user_id.as_deref() == Some("u1"))
        .collect();
    assert_eq!(u1_events.len(), 3);
    let u1_conflicts: Vec<_> = env
        .store
        .conflicts()
        .into_iter()
        .filter(|c| c.host_user_id == "u1")
        .collect();
    let tables = format!("{u1_events:?} {row:?} {u1_conflicts:?} {erasures:?}");
    for secret in ["ada@", "Ada", "Lovelace", "grace@"] {
        assert!(!tables.contains(secret), "{secret:?} is still stored");
    }
    // u2's rows are u2's: left as they are.
    assert_eq!(
        env.user("u2").username.as_deref(),
        Some("grace@example.com")
    );
}

#[tokio::test]
async fn a_closure_before_any_sync_creates_nothing() {
    let env = Env::start().await;
    let closure = env.event("u9", "account_closure", None, None);
    env.run(&[closure]).await;

    assert_eq!(env.state(closure), "applied");
    assert_eq!(env.calls(), 0);
    let erasures = env.store.erasures();
    assert_eq!(erasures.len(), 1);
    assert_eq!(erasures[0].outcome, ErasureOutcome::NeverCreated);
    assert_eq!(erasures[0].embedded_user_id, None);
    assert_eq!(env.user("u9").state, UserState::Erased);
}

#[tokio::test]
async fn a_username_another_host_user_holds_is_a_conflict_without_a_call() {
    let env = Env::start().await;
    env.synced("u1", "ada@example.com", None).await;
    let before = env.calls();
    let first = env.signup("u2", "ADA@example.com", Some("Not Ada"));
    env.run(&[first]).await;

    assert_eq!(env.calls(), before, "a call was made");
    let event = env.row(first);
    assert_eq!(event.state, "conflict");
    assert_eq!(event.reason.as_deref(), Some("taken_by_host_user"));
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(
        (c.host_user_id.as_str(), c.username.as_str()),
        ("u2", "ada@example.com")
    );
    assert_eq!(c.reason, ConflictReason::TakenByHostUser);
    assert_eq!(c.holder_host_user_id.as_deref(), Some("u1"));
    assert_eq!((c.event_id, c.status), (Some(first), "open"));
    assert!(env.store.user("u2").is_none(), "u2 claimed the username");

    // Met again: still one open conflict.
    let again = env.change("u2", "ada@example.com", None);
    env.run(&[again]).await;
    assert_eq!(env.state(again), "conflict");
    assert_eq!(env.store.conflicts().len(), 1);

    // u2 syncs under a username of its own: its conflict is resolved.
    let own = env.change("u2", "ada.2@example.com", None);
    env.run(&[own]).await;
    assert_eq!(env.state(own), "applied");
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts[0].status, "resolved");
    assert!(conflicts[0].resolved_at.is_some());
}

#[tokio::test]
async fn a_username_taken_in_embedded_is_a_conflict_and_never_adopted() {
    let env = Env::start().await;
    let outside = env
        .sandbox
        .insert_user("bob@example.com", Some("Bob Outside"));
    let signup = env.signup("u1", "bob@example.com", Some("Bob"));
    env.run(&[signup]).await;

    assert_eq!(env.state(signup), "conflict");
    // The create goes first; its refusal proves it made nothing, and the
    // lookup after it finds who holds the name.
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::CREATE), 1);
    assert_eq!(stats.count(routes::CREATE, 409), 1);
    assert_eq!(stats.route_total(routes::GET), 1);
    assert_eq!(stats.creates, 0);
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].reason, ConflictReason::TakenInEmbedded);
    assert_eq!(
        conflicts[0].holder_embedded_user_id.as_deref(),
        Some(outside.as_str())
    );
    assert_eq!(conflicts[0].holder_host_user_id, None);
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Conflict);
    assert_eq!((row.embedded_user_id, row.username), (None, None));

    // Not u1's user: a closure deletes nothing.
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;
    assert_eq!(
        env.store.erasures()[0].outcome,
        ErasureOutcome::NeverCreated
    );
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 0);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].full_name.as_deref(), Some("Bob Outside"));
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_adopted_without_a_second_create() {
    let env = Env::start().await;
    env.drop_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", Some("Ada"));
    env.run(&[signup]).await;

    let stats = env.sandbox.stats();
    assert_eq!((stats.creates, stats.dropped), (1, 1));
    let event = env.row(signup);
    assert_eq!((event.state, event.event.attempts), ("pending", 1));
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Creating);
    assert_eq!(row.username.as_deref(), Some("ada@example.com"));

    env.drop_rate(0.0);
    env.retry(&[signup]).await;

    assert_eq!(env.state(signup), "applied");
    assert_eq!(env.sandbox.stats().creates, 1, "created twice");
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Synced);
    assert_eq!(
        row.embedded_user_id.as_deref(),
        Some(users[0].user_id.as_str())
    );
}

/// `lookup_before_create = "always"`.
fn always() -> SyncSettings {
    SyncSettings {
        lookup_before_create: LookupBeforeCreate::Always,
        ..SyncSettings::default()
    }
}

/// A sandbox whose ids carry no creation time.
fn uuids() -> SandboxOptions {
    SandboxOptions {
        id_format: IdFormat::Uuid,
        ..SandboxOptions::default()
    }
}

#[tokio::test]
async fn a_signup_costs_one_call_and_looking_up_first_two() {
    let env = Env::start().await;
    env.synced("u1", "ada@example.com", Some("Ada")).await;
    assert_eq!(env.calls(), 1, "the create alone");

    let env = Env::looking_up_first().await;
    env.synced("u1", "ada@example.com", Some("Ada")).await;
    let stats = env.sandbox.stats();
    assert_eq!(
        (stats.total_requests, stats.count(routes::GET, 404)),
        (2, 1)
    );
    assert_eq!(env.user("u1").state, UserState::Synced);
}

#[tokio::test]
async fn looking_up_first_a_taken_username_costs_no_create() {
    let env = Env::looking_up_first().await;
    let outside = env.sandbox.insert_user("bob@example.com", None);
    let signup = env.signup("u1", "bob@example.com", Some("Bob"));
    env.run(&[signup]).await;

    assert_eq!(env.state(signup), "conflict");
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::CREATE), 0);
    assert_eq!(stats.total_requests, 1);
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts[0].reason, ConflictReason::TakenInEmbedded);
    assert_eq!(
        conflicts[0].holder_embedded_user_id.as_deref(),
        Some(outside.as_str())
    );
}

#[tokio::test]
async fn a_lost_answer_for_a_username_taken_before_the_claim_is_never_adopted() {
    let env = Env::start().await;
    // Made outside the worker a minute ago; its id says so.
    let outside = env.sandbox.insert_user_made(
        "bob@example.com",
        Some("Bob Outside"),
        Duration::from_secs(60),
    );
    env.drop_rate(1.0);
    let signup = env.signup("u1", "bob@example.com", Some("Bob"));
    env.run(&[signup]).await;
    // The refusal was lost: the claim waits for its confirmation.
    assert_eq!(env.user("u1").state, UserState::Creating);

    env.drop_rate(0.0);
    env.retry(&[signup]).await;
    assert_eq!(env.state(signup), "conflict");
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].reason, ConflictReason::UnconfirmedCreate);
    assert_eq!(
        conflicts[0].holder_embedded_user_id.as_deref(),
        Some(outside.as_str())
    );
    let row = env.user("u1");
    assert_eq!(
        (row.state, row.embedded_user_id),
        (UserState::Conflict, None)
    );
    assert_eq!(env.sandbox.stats().creates, 0);

    // Not adopted, so never deleted.
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 0);
    assert_eq!(env.sandbox.users().len(), 1);
}

#[tokio::test]
async fn a_lost_answer_with_ids_that_carry_no_time_is_an_unconfirmed_create() {
    let env = Env::start_with(uuids(), SyncSettings::default()).await;
    env.drop_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", Some("Ada"));
    env.run(&[signup]).await;
    env.drop_rate(0.0);
    env.retry(&[signup]).await;

    // The worker's own create, but nothing proves it: an operator decides.
    assert_eq!(env.state(signup), "conflict");
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts[0].reason, ConflictReason::UnconfirmedCreate);
    assert_eq!(
        conflicts[0].holder_embedded_user_id.as_deref(),
        Some(users[0].user_id.as_str())
    );
    assert_eq!(env.sandbox.stats().creates, 1, "never created twice");

    // The next event meets the same user as taken in Embedded: the
    // unconfirmed create stays the open conflict, for the operator.
    let change = env.change("u1", "ada@example.com", Some("Ada L"));
    env.run(&[change]).await;
    assert_eq!(env.state(change), "conflict");
    let open: Vec<_> = env
        .store
        .conflicts()
        .into_iter()
        .filter(|c| c.status == "open")
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].reason, ConflictReason::UnconfirmedCreate);

    // Looked up first, the username was seen free before the claim: the
    // same lost answer is adopted.
    let env = Env::start_with(uuids(), always()).await;
    env.drop_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", Some("Ada"));
    env.run(&[signup]).await;
    env.drop_rate(0.0);
    env.retry(&[signup]).await;
    assert_eq!(env.state(signup), "applied");
    assert!(env.store.conflicts().is_empty());
    assert_eq!(env.user("u1").state, UserState::Synced);
}

#[tokio::test]
async fn a_closure_after_a_lost_create_answer_erases_without_deleting_an_unproven_user() {
    let env = Env::start_with(uuids(), SyncSettings::default()).await;
    env.drop_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", Some("Ada"));
    env.run(&[signup]).await;
    assert_eq!(env.user("u1").state, UserState::Creating);
    env.drop_rate(0.0);
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;

    // Nothing proves the user found is u1's: it is neither adopted nor
    // deleted, and the erasure completes without it.
    assert_eq!(env.state(closure), "applied");
    assert_eq!(
        env.store.erasures()[0].outcome,
        ErasureOutcome::NeverCreated
    );
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 0);
    assert_eq!(env.sandbox.users().len(), 1);
    assert!(env.store.conflicts().is_empty());
    let row = env.user("u1");
    assert_eq!((row.username, row.full_name), (None, None), "scrubbed");
}

#[tokio::test]
async fn a_new_email_after_a_lost_create_answer_is_created_without_the_unproven_user() {
    let env = Env::start_with(uuids(), SyncSettings::default()).await;
    env.drop_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", Some("Ada"));
    env.run(&[signup]).await;
    env.drop_rate(0.0);
    let change = env.change("u1", "ada.l@example.com", Some("Ada"));
    env.run(&[change]).await;

    // The unproven user under the old username is left alone; the host
    // user gets the one it asks for now.
    assert_eq!(env.state(change), "applied");
    assert!(env.store.conflicts().is_empty());
    let row = env.user("u1");
    assert_eq!(row.state, UserState::Synced);
    assert_eq!(row.username.as_deref(), Some("ada.l@example.com"));
    assert_eq!(env.sandbox.users().len(), 2);
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 0);
}

#[tokio::test]
async fn a_create_answered_5xx_is_confirmed_before_it_is_sent_again() {
    let env = Env::start().await;
    env.fail_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", None);
    env.run(&[signup]).await;
    // A 5xx may come from a proxy after the API made the user: the claim
    // stays until a lookup settles it.
    let stats = env.sandbox.stats();
    assert_eq!((stats.route_total(routes::CREATE), stats.failed), (1, 1));
    assert_eq!(env.user("u1").state, UserState::Creating);

    env.fail_rate(0.0);
    env.retry(&[signup]).await;
    assert_eq!(env.state(signup), "applied");
    let stats = env.sandbox.stats();
    assert_eq!(
        stats.count(routes::GET, 404),
        1,
        "looked up before sending again"
    );
    assert_eq!(stats.creates, 1);
    assert_eq!(env.user("u1").state, UserState::Synced);
}

#[tokio::test]
async fn a_conflict_that_no_longer_stands_is_resolved_by_the_one_that_does() {
    let env = Env::start().await;
    env.synced("u2", "ada@example.com", None).await;
    let first = env.signup("u1", "ada@example.com", None);
    env.run(&[first]).await;
    assert_eq!(
        env.store.conflicts()[0].reason,
        ConflictReason::TakenByHostUser
    );

    // u2 leaves; someone then makes the username in Embedded by hand.
    let closure = env.event("u2", "account_closure", None, None);
    env.run(&[closure]).await;
    env.sandbox
        .insert_user_made("ada@example.com", None, Duration::from_secs(60));
    let again = env.change("u1", "ada@example.com", Some("Ada"));
    env.run(&[again]).await;

    assert_eq!(env.state(again), "conflict");
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts.len(), 2);
    let open: Vec<_> = conflicts.iter().filter(|c| c.status == "open").collect();
    assert_eq!(open.len(), 1, "{conflicts:?}");
    assert_eq!(open[0].reason, ConflictReason::TakenInEmbedded);
    let stale = conflicts.iter().find(|c| c.status == "resolved");
    assert!(stale.is_some_and(|c| c.reason == ConflictReason::TakenByHostUser && c.resolved_at.is_some()));
}

#[tokio::test]
async fn a_username_another_host_user_is_still_creating_waits_for_that_create() {
    let env = Env::start().await;
    // u1 claimed the username and sent its create; the answer is not in.
    let pending = env.signup("u1", "bob@example.com", None);
    env.store.put_user(UserRow {
        host_user_id: "u1".into(),
        embedded_user_id: None,
        username: Some("bob@example.com".into()),
        full_name: None,
        state: UserState::Creating,
        last_event_id: Some(pending),
        intent: Intent {
            at: Some(Utc::now()),
            seen_free: false,
        },
    });
    let signup = env.signup("u2", "bob@example.com", None);
    env.run(&[signup]).await;
    let event = env.row(signup);
    assert_eq!((event.state, event.event.attempts), ("pending", 0));
    assert!(event.reason.is_some_and(|r| r.contains("u1")));
    assert!(env.store.conflicts().is_empty(), "not settled: no conflict");
    assert_eq!(env.calls(), 0);

    // u1's create turns out refused: someone made the name in Embedded.
    let outside = env
        .sandbox
        .insert_user_made("bob@example.com", None, Duration::from_secs(60));
    env.retry(&[pending]).await;
    env.retry(&[signup]).await;
    assert_eq!(env.state(signup), "conflict");
    let open: Vec<_> = env
        .store
        .conflicts()
        .into_iter()
        .filter(|c| c.host_user_id == "u2")
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].reason, ConflictReason::TakenInEmbedded, "not u1's");
    assert_eq!(
        open[0].holder_embedded_user_id.as_deref(),
        Some(outside.as_str())
    );
}

#[tokio::test]
async fn an_update_whose_answer_was_lost_is_read_back_before_planning() {
    let env = Env::start().await;
    env.synced("u1", "ada@example.com", Some("Ada")).await;
    env.drop_rate(1.0);
    let renamed = env.change("u1", "ada@example.com", Some("Ada King"));
    env.run(&[renamed]).await;
    assert_eq!(env.state(renamed), "pending");
    assert_eq!(env.user("u1").last_event_id, Some(renamed));
    assert_eq!(
        env.sandbox.users()[0].full_name.as_deref(),
        Some("Ada King")
    );

    // Undone on the host before the retry: the row still says "Ada", which
    // the event asks for, yet Embedded holds "Ada King". The first read-back
    // meets a server error; the next one still knows to read back, though
    // the event the update was sent for has been superseded since.
    env.drop_rate(0.0);
    env.fail_rate(1.0);
    let undone = env.change("u1", "ada@example.com", Some("Ada"));
    env.run(&[renamed, undone]).await;
    assert_eq!(env.state(renamed), "superseded");
    assert_eq!(env.state(undone), "pending");

    env.fail_rate(0.0);
    env.retry(&[undone]).await;
    assert_eq!(env.state(undone), "applied");
    assert_eq!(env.sandbox.users()[0].full_name.as_deref(), Some("Ada"));
    assert_eq!(env.sandbox.stats().route_total(routes::UPDATE), 2);
}

#[tokio::test]
async fn server_errors_snooze_with_an_attempt_then_fail_leaving_the_name_free() {
    // Looked up first: the lookup fails, so no create is ever sent and no
    // claim made. By default the create goes first, and a 5xx to it keeps
    // its claim (`a_create_answered_5xx_is_confirmed_before_it_is_sent_again`).
    let env = Env::looking_up_first().await;
    env.fail_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", None);
    for attempt in 1..MAX_ATTEMPTS {
        let before = Utc::now();
        env.run(&[signup]).await;
        let event = env.row(signup);
        assert_eq!(event.state, "pending");
        assert_eq!(event.event.attempts, i32::try_from(attempt).expect("small"));
        assert!(event.event.available_at > before, "not snoozed");
        assert_eq!(event.dispatched_at, None, "still marked dispatched");
        assert!(event.reason.is_some_and(|r| r.contains("unavailable")));
        env.store.make_due(signup);
    }
    env.run(&[signup]).await;

    let event = env.row(signup);
    assert_eq!(event.state, "failed");
    let reason = event.reason.expect("a reason");
    assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
    assert_eq!(env.sandbox.stats().creates, 0);
    assert!(env.store.user("u1").is_none(), "u1 holds a claim");

    // Nothing holds the username: another host user gets it.
    env.fail_rate(0.0);
    env.synced("u2", "ada@example.com", None).await;
    assert!(env.store.conflicts().is_empty());
}

#[tokio::test]
async fn a_create_of_unknown_outcome_keeps_its_claim_when_its_event_fails() {
    let env = Env::start().await;
    env.fail_rate(1.0);
    let signup = env.signup("u1", "ada@example.com", None);
    // A create was sent and its answer never came back.
    env.store.put_user(UserRow {
        host_user_id: "u1".into(),
        embedded_user_id: None,
        username: Some("ada@example.com".into()),
        full_name: None,
        state: UserState::Creating,
        last_event_id: Some(signup),
        intent: Intent {
            at: Some(Utc::now()),
            seen_free: false,
        },
    });
    for _ in 0..MAX_ATTEMPTS {
        env.retry(&[signup]).await;
    }
    assert_eq!(env.state(signup), "failed");
    assert_eq!(env.sandbox.stats().failed, u64::from(MAX_ATTEMPTS));
    assert_eq!(env.user("u1").state, UserState::Creating);

    // The user may exist: the username stays u1's.
    let before = env.calls();
    let other = env.signup("u2", "ada@example.com", None);
    env.run(&[other]).await;
    assert_eq!(env.state(other), "conflict");
    assert_eq!(env.calls(), before);
    assert_eq!(
        env.store.conflicts()[0].holder_host_user_id.as_deref(),
        Some("u1")
    );
}

#[tokio::test]
async fn a_refused_key_snoozes_without_counting_an_attempt() {
    let env = Env::start().await;
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some("rotated-key".into()),
        ..FaultUpdate::default()
    });
    let signup = env.signup("u1", "ada@example.com", None);
    env.run(&[signup]).await;

    let stats = env.sandbox.stats();
    assert_eq!(stats.count(routes::CREATE, 401), 1);
    assert_eq!(stats.total_requests, 1);
    let event = env.row(signup);
    assert_eq!((event.state, event.event.attempts), ("pending", 0));
    assert!(event.event.available_at > Utc::now() + chrono::Duration::seconds(20));
    let reason = event.reason.expect("a reason");
    assert!(reason.starts_with("paused"), "{reason}");

    // The gate now holds every call back: snoozed again, no call, no attempt.
    env.retry(&[signup]).await;
    assert_eq!(env.sandbox.stats().total_requests, stats.total_requests);
    let event = env.row(signup);
    assert_eq!((event.state, event.event.attempts), ("pending", 0));
}

#[tokio::test]
async fn invalid_events_end_invalid_without_a_call() {
    let env = Env::start().await;
    let bad_email = env.signup("u1", "not-an-email", None);
    let bad_kind = env.event("u2", "promotion", Some("ada@example.com"), None);
    let no_host = env
        .store
        .insert_event(None, "signup", Some("ada@example.com"), None);
    env.run(&[bad_email, bad_kind, no_host]).await;

    assert_eq!(env.calls(), 0);
    for (id, why) in [
        (bad_email, "email is not an email address"),
        (bad_kind, "unknown kind"),
        (no_host, "host_user_id is missing"),
    ] {
        let event = env.row(id);
        assert_eq!(event.state, "invalid", "event {id}");
        let reason = event.reason.expect("a reason");
        assert!(reason.starts_with(why), "{reason}");
        assert!(!reason.contains("not-an-email") && !reason.contains("promotion"));
    }
    assert!(env.store.users().is_empty());
}

#[tokio::test]
async fn the_latest_event_wins_and_older_ones_are_superseded() {
    let env = Env::start().await;
    let first = env.signup("u1", "old@example.com", Some("Old"));
    let second = env.change("u1", "mid@example.com", Some("Mid"));
    let last = env.change("u1", "new@example.com", Some("New"));
    env.run(&[first, second, last]).await;

    assert_eq!(env.state(first), "superseded");
    assert_eq!(env.state(second), "superseded");
    assert_eq!(env.state(last), "applied");
    let stats = env.sandbox.stats();
    assert_eq!((stats.creates, stats.route_total(routes::UPDATE)), (1, 0));
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "new@example.com");
    assert_eq!(users[0].full_name.as_deref(), Some("New"));
}

#[tokio::test]
async fn a_busy_user_is_snoozed_without_a_call_or_an_attempt() {
    let env = Env::start().await;
    let signup = env.signup("u1", "ada@example.com", None);
    let host = [HostUserId::parse("u1").expect("a host id")];
    let held = env.store.lock_users(&host).await.expect("locks");
    assert!(held[0].is_some(), "u1 was not free");
    env.run(&[signup]).await;

    assert_eq!(env.calls(), 0);
    let event = env.row(signup);
    assert_eq!((event.state, event.event.attempts), ("pending", 0));
    assert!(event.event.available_at > Utc::now());

    drop(held);
    env.retry(&[signup]).await;
    assert_eq!(env.state(signup), "applied");
}

#[tokio::test]
async fn two_users_of_one_job_with_one_email_get_one_embedded_user() {
    let env = Env::start().await;
    let first = env.signup("u1", "ada@example.com", None);
    let second = env.signup("u2", "Ada@Example.com", None);
    env.run(&[first, second]).await;
    // Whichever claimed the username second waits for the first one's
    // create (it might yet be refused), without using an attempt.
    let waiting: Vec<i64> = [first, second]
        .into_iter()
        .filter(|id| env.state(*id) == "pending")
        .collect();
    assert!(waiting.len() <= 1);
    for id in &waiting {
        assert_eq!(env.row(*id).event.attempts, 0);
    }
    env.retry(&waiting).await;

    let stats = env.sandbox.stats();
    assert_eq!((stats.creates, stats.duplicate_attempts), (1, 0));
    let mut states = [env.state(first), env.state(second)];
    states.sort_unstable();
    assert_eq!(states, ["applied", "conflict"]);
    let conflicts = env.store.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].reason, ConflictReason::TakenByHostUser);
    let synced = env.store.users();
    assert_eq!(synced.len(), 1, "the one in conflict has a row");
    assert_eq!(synced[0].state, UserState::Synced);
    assert_eq!(
        conflicts[0].holder_host_user_id.as_deref(),
        Some(synced[0].host_user_id.as_str())
    );
}

#[tokio::test]
async fn a_job_that_names_no_host_user_cannot_end_a_closure_as_invalid() {
    // Anyone who can push to the queue can push `{"event_id": N,
    // "host_user_id": null}`: the event's own row decides what it is.
    let env = Env::start().await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    let closure = env.event("u1", "account_closure", None, None);
    env.store.dispatch(&[closure]);
    let forged = SyncJob {
        events: vec![JobEvent {
            event_id: closure,
            host_user_id: None,
        }],
    };
    run(&env.ctx, &forged).await.expect("the job runs");

    assert_eq!(env.state(closure), "applied", "the closure was carried out");
    let erasures = env.store.erasures();
    assert_eq!(erasures.len(), 1);
    assert_eq!(
        erasures[0].embedded_user_id.as_deref(),
        Some(user_id.as_str())
    );
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 1);

    // A job naming an event that is not pending changes nothing.
    let again = SyncJob {
        events: vec![JobEvent {
            event_id: closure,
            host_user_id: None,
        }],
    };
    run(&env.ctx, &again).await.expect("the job runs");
    assert_eq!(env.state(closure), "applied");
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 1);
}

mod properties {
    //! Properties over any outbox row the host could write, however
    //! malformed (values that are not text or not UTF-8 among them, as a
    //! SQLite file holds them): the normalisation is stable, the reasons
    //! never repeat a value, a job ends every row with a state (and an
    //! invalid one with a reason), and a closure always erases: never a
    //! panic, never a loop. The backfill's side is in `host::backfill`.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::Env;
    use crate::domain::Username;
    use crate::storage::Written;

    /// Kinds of the contract, and anything else.
    fn kind() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("signup".to_owned()),
            Just("profile_change".to_owned()),
            Just("account_closure".to_owned()),
            any::<String>(),
        ]
    }

    /// Emails that look like emails (some share a username once
    /// normalised), and anything else.
    fn email() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            "[ \t]?[a-cA-C]{1,2}@[ab]\\.io[ \t]?",
            "[a-zA-Z0-9._%+-]{1,12}@[a-z]{1,8}\\.[a-z]{2,4}",
            any::<String>(),
        ])
    }

    /// A column as a statement reads it: text (from `text`), or what only
    /// a SQLite file holds, a BLOB or bytes that are not UTF-8.
    fn written(
        text: impl Strategy<Value = Option<String>>,
    ) -> impl Strategy<Value = Option<Written>> {
        prop_oneof![
            8 => text.prop_map(|t| t.map(Written::Text)),
            1 => Just(Some(Written::NotText)),
            1 => Just(Some(Written::NotUtf8)),
        ]
    }

    proptest! {
        #[test]
        fn a_username_is_stable_lower_case_and_bounded(raw in any::<String>()) {
            if let Ok(username) = Username::from_email(&raw) {
                let text = username.as_str();
                prop_assert_eq!(text.to_lowercase(), text);
                prop_assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()));
                prop_assert!(text.chars().count() <= crate::domain::MAX_USERNAME_LEN);
                prop_assert_eq!(Username::from_email(text).map(|u| u.as_str().to_owned()), Ok(text.to_owned()));
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_outbox_row_ends_with_a_state_and_a_reason() {
        let env = Env::start().await;
        let handle = tokio::runtime::Handle::current();
        let hosts = AtomicUsize::new(0);
        let mut runner = TestRunner::new(Config {
            cases: 96,
            ..Config::default()
        });
        let rows = (
            written(kind().prop_map(Some)),
            written(email()),
            written(proptest::option::of(any::<String>())),
        );
        let result = runner.run(&rows, |(kind, email, name)| {
            let host = format!("p{}", hosts.fetch_add(1, Ordering::Relaxed));
            let closure = kind == Some(Written::Text("account_closure".into()));
            let text = |w: &Option<Written>| match w {
                Some(Written::Text(t)) => Some(t.clone()),
                _ => None,
            };
            let values = [text(&email), text(&name)];
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let id = env.store.insert_written(
                        Some(Written::Text(host.clone())),
                        kind,
                        email,
                        name,
                    );
                    env.run(&[id]).await;
                    let row = env.row(id);
                    prop_assert!(
                        matches!(row.state, "applied" | "conflict" | "invalid"),
                        "ended {} ({:?})",
                        row.state,
                        row.reason
                    );
                    // A closure needs only its host user: whatever else
                    // its row holds, the user is erased.
                    prop_assert!(
                        !closure || row.state == "applied",
                        "a closure ended {}",
                        row.state
                    );
                    if row.state != "applied" {
                        let reason = row.reason.unwrap_or_default();
                        prop_assert!(!reason.is_empty(), "no reason for {}", row.state);
                        for value in values.iter().flatten() {
                            if value.trim().chars().count() > 3 {
                                prop_assert!(
                                    !reason.contains(value.trim()),
                                    "the reason repeats a value"
                                );
                            }
                        }
                    }
                    Ok(())
                })
            })
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
    }
}

/// Without workflow logs: `gdpr.delete_workflow_logs = false`.
fn without_logs() -> SyncSettings {
    SyncSettings {
        delete_workflow_logs: false,
        ..SyncSettings::default()
    }
}

#[tokio::test]
async fn an_erasure_deletes_the_workflow_logs_then_the_user() {
    let env = Env::start().await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    assert!(env.sandbox.workflow_logs(&user_id) > 0);

    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;

    assert_eq!(env.state(closure), "applied");
    let stats = env.sandbox.stats();
    assert_eq!(stats.count(routes::DELETE_LOGS, 200), 1);
    assert_eq!(stats.count(routes::DELETE, 200), 1);
    assert_eq!(stats.deleted_with_logs, 0, "the user went before its logs");
    assert_eq!(env.sandbox.workflow_logs(&user_id), 0);
    let erasure = &env.store.erasures()[0];
    assert_eq!(erasure.outcome, ErasureOutcome::Deleted);
    assert_eq!(erasure.logs_skipped, None);
    let logs = erasure.logs_deleted_at.expect("the logs' time");
    let user = erasure.user_deleted_at.expect("the user's time");
    assert!(erasure.requested_at <= logs && logs <= user && user <= erasure.completed_at);
    assert_eq!(env.store.erasure_steps_of("u1"), None, "the steps go");
}

#[tokio::test]
async fn with_workflow_logs_turned_off_only_the_user_is_deleted() {
    let env = Env::start_with(SandboxOptions::default(), without_logs()).await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;

    assert_eq!(env.state(closure), "applied");
    let stats = env.sandbox.stats();
    assert_eq!(stats.route_total(routes::DELETE_LOGS), 0);
    assert_eq!(stats.count(routes::DELETE, 200), 1);
    assert_eq!(env.sandbox.workflow_logs(&user_id), 3, "left, as asked");
    let erasure = &env.store.erasures()[0];
    assert_eq!(erasure.outcome, ErasureOutcome::Deleted);
    assert_eq!(erasure.logs_deleted_at, None);
    assert_eq!(erasure.logs_skipped, Some(LogsSkipped::Disabled), "and why");
    assert!(erasure.user_deleted_at.is_some());
}

#[tokio::test]
async fn a_lost_answer_on_the_logs_call_is_sent_again_then_the_user_goes() {
    let env = Env::start().await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    env.drop_rate(1.0);
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;
    assert_eq!(env.state(closure), "pending");
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE), 0);
    let steps = env.store.erasure_steps_of("u1").expect("the intent");
    assert!(steps.logs_sent_at.is_some() && steps.logs_deleted_at.is_none());

    env.drop_rate(0.0);
    env.retry(&[closure]).await;
    assert_eq!(env.state(closure), "applied");
    assert_eq!(env.sandbox.stats().route_total(routes::DELETE_LOGS), 2);
    assert_eq!(env.sandbox.stats().deleted_with_logs, 0);
    assert_eq!(env.sandbox.workflow_logs(&user_id), 0);
    assert_eq!(env.store.erasures()[0].outcome, ErasureOutcome::Deleted);
}

#[tokio::test]
async fn a_user_delete_whose_answer_was_lost_is_recorded_deleted_not_absent() {
    let env = Env::start_with(SandboxOptions::default(), without_logs()).await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    env.drop_rate(1.0);
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;
    assert_eq!(env.state(closure), "pending");
    assert!(
        !env.sandbox.users().iter().any(|u| u.user_id == user_id),
        "the delete went through, its answer lost"
    );

    env.drop_rate(0.0);
    env.retry(&[closure]).await;
    assert_eq!(env.state(closure), "applied");
    assert_eq!(env.sandbox.stats().count(routes::DELETE, 404), 1);
    let erasure = &env.store.erasures()[0];
    assert_eq!(erasure.outcome, ErasureOutcome::Deleted, "the worker's own");
    assert_eq!(erasure.embedded_user_id.as_deref(), Some(user_id.as_str()));
}

#[tokio::test]
async fn a_user_deleted_outside_is_already_absent_after_404_on_both_calls() {
    let env = Env::start().await;
    let user_id = env.synced("u1", "ada@example.com", None).await;
    let id = crate::domain::EmbeddedUserId::parse(&user_id).expect("an id");
    env.ctx.api.delete_user(&id).await.expect("deleted outside");
    let closure = env.event("u1", "account_closure", None, None);
    env.run(&[closure]).await;

    assert_eq!(env.state(closure), "applied");
    let stats = env.sandbox.stats();
    assert_eq!(stats.count(routes::DELETE_LOGS, 404), 1);
    assert_eq!(stats.count(routes::DELETE, 404), 1);
    let erasure = &env.store.erasures()[0];
    assert_eq!(erasure.outcome, ErasureOutcome::AlreadyAbsent);
    assert!(erasure.logs_deleted_at.is_some() && erasure.user_deleted_at.is_some());
}

#[tokio::test]
async fn a_server_error_on_the_user_delete_keeps_its_intent_and_resumes_there() {
    let env = Env::start().await;
    env.synced("u1", "ada@example.com", None).await;
    let closure = env.event("u1", "account_closure", None, None);
    // Logs done, then a crash before the user delete: what the steps say.
    let user =
        crate::domain::EmbeddedUserId::parse(&env.user("u1").embedded_user_id.expect("mapped"))
            .expect("an id");
    let host = HostUserId::parse("u1").expect("a host id");
    let mut sessions = env.store.lock_users(&[host]).await.expect("locked");
    let mut session = sessions.pop().flatten().expect("free");
    use crate::storage::{ErasureStep, UserSession};
    session
        .record_erasure_step(&user, ErasureStep::LogsDeleted)
        .await
        .expect("recorded");
    session.release().await.expect("released");

    env.fail_rate(1.0);
    env.run(&[closure]).await;
    assert_eq!(env.state(closure), "pending");
    let steps = env.store.erasure_steps_of("u1").expect("steps");
    assert!(steps.user_sent_at.is_some(), "a 5xx may have deleted it");

    env.fail_rate(0.0);
    env.retry(&[closure]).await;
    assert_eq!(env.state(closure), "applied");
    assert_eq!(
        env.sandbox.stats().route_total(routes::DELETE_LOGS),
        0,
        "resumed at the second call"
    );
    assert_eq!(env.store.erasures()[0].outcome, ErasureOutcome::Deleted);
}

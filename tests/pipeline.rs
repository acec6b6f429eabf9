//! The continuous pipeline end to end: outbox rows in a real PostgreSQL
//! with jobs through a real Redis, or in a SQLite file with its queue,
//! calls to the sandbox over real HTTP. The core cases run on both
//! backends; what only one backend has (Redis, several processes on one
//! database, PostgreSQL's concurrent transactions) is tested there.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::Running;
use common::{Backend, Env, KEY, eventually};
use user_sync::config::ApiVersion;
use user_sync_sandbox::{FaultUpdate, IdFormat, SandboxOptions, SandboxUser, routes};

const SETTLE: Duration = Duration::from_secs(30);

// The core cases, on every API version the worker speaks.
on_each_version!(
    signup_change_and_closure_reach_the_api_and_erase_personal_data,
    a_create_whose_answer_was_lost_is_adopted_not_duplicated,
    a_username_held_in_embedded_is_one_open_conflict,
    server_errors_and_429_storms_are_retried_to_completion,
    a_refused_key_pauses_everything_and_fails_nothing,
);

on_each_backend!(
    latest_event_wins_and_older_ones_are_superseded,
    a_change_undone_after_its_answer_was_lost_is_undone_in_embedded,
    a_user_made_outside_is_never_adopted_nor_deleted_when_answers_are_lost,
    a_lost_answer_whose_user_id_carries_no_time_is_an_unconfirmed_create,
    two_host_users_with_one_username_conflict_before_any_call,
    a_refused_rename_is_a_conflict_never_a_delete,
    closing_a_user_deleted_outside_is_success,
    bad_events_get_a_reason_and_block_nothing,
    a_job_pushed_without_a_host_user_cannot_end_a_closure,
    a_padded_host_user_id_is_applied_not_dispatched_forever,
    shutdown_lets_running_jobs_finish,
    a_user_closed_before_the_first_sync_costs_no_call,
    users_of_one_job_sharing_an_email_get_one_embedded_user,
    a_create_never_made_leaves_no_claim_when_the_next_username_is_taken,
    an_unconfirmed_create_never_adopts_a_user_mapped_to_another_host_user,
);

/// Waits for a create to reach the API (its answer lost), then lets
/// answers through and lets the worker settle.
async fn answers_back_once_created(env: &Env) {
    eventually(SETTLE, "the create reaches the API", || async {
        env.sandbox.stats().creates > 0
    })
    .await;
    env.sandbox.update_faults(FaultUpdate {
        drop_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;
}

fn find<'a>(users: &'a [SandboxUser], username: &str) -> Vec<&'a SandboxUser> {
    users
        .iter()
        .filter(|u| u.username.eq_ignore_ascii_case(username))
        .collect()
}

/// Every request the sandbox saw used the worker's version.
fn only_its_version_was_spoken(env: &Env) {
    let stats = env.sandbox.stats();
    assert_eq!(
        stats.version_total(env.version.as_str()),
        stats.total_requests,
        "{:?}",
        stats.versions
    );
}

async fn signup_change_and_closure_reach_the_api_and_erase_personal_data(
    backend: Backend,
    version: ApiVersion,
) {
    let env = Env::start_speaking(backend, version, SandboxOptions::default()).await;
    let run = Running::start(&env).await;

    env.signup("u1", " Ada@Example.com ", Some("Ada Lovelace"))
        .await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("u1 synced");
    let users = env.sandbox.users();
    let ada = find(&users, "ada@example.com");
    assert_eq!(ada.len(), 1);
    assert_eq!(ada[0].user_id, id);
    assert_eq!(ada[0].full_name.as_deref(), Some("Ada Lovelace"));

    // A change of name and email is one update of the same user.
    env.change("u1", "ada@lovelace.org", Some("Ada King")).await;
    env.settle(SETTLE).await;
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].user_id, id);
    assert_eq!(users[0].username, "ada@lovelace.org");
    assert_eq!(users[0].full_name.as_deref(), Some("Ada King"));
    assert_eq!(env.sandbox.stats().count("PUT /users/{id}", 200), 1);

    // The same profile again costs no call.
    let before = env.sandbox.stats().total_requests;
    let same = env.change("u1", "ADA@lovelace.org", Some("Ada King")).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(same).await.0, "applied");
    assert_eq!(env.sandbox.stats().total_requests, before);

    // Closure: the user is deleted and every trace of the email and name goes.
    let closure = env.closure("u1").await;
    env.settle(SETTLE).await;
    assert!(env.sandbox.users().is_empty());
    assert_eq!(env.event_state(closure).await.0, "applied");
    let erasures = env
        .pairs("SELECT embedded_user_id, outcome FROM user_sync.erasures WHERE host_user_id = 'u1'")
        .await;
    assert_eq!(
        erasures,
        vec![(Some(id.clone()), Some("deleted".to_owned()))],
        "one erasure row"
    );
    // The workflow logs go first where the version can delete them; where
    // it cannot, they stay, and the record says why.
    let logs = env
        .pairs("SELECT logs_skipped, CASE WHEN logs_deleted_at IS NULL THEN NULL ELSE 'at' END FROM user_sync.erasures")
        .await;
    if version == ApiVersion::V2021_12 {
        assert_eq!(logs, vec![(Some("no_logs_call".to_owned()), None)]);
        assert!(env.sandbox.workflow_logs(&id) > 0);
        assert_eq!(env.sandbox.stats().deleted_with_logs, 1);
    } else {
        assert_eq!(logs, vec![(None, Some("at".to_owned()))]);
        assert_eq!(env.sandbox.workflow_logs(&id), 0);
        assert_eq!(env.sandbox.stats().deleted_with_logs, 0);
    }
    only_its_version_was_spoken(&env);
    let leftovers = env
        .scalar(
            "SELECT (SELECT count(*) FROM user_sync.events
                      WHERE host_user_id = 'u1' AND (email IS NOT NULL OR full_name IS NOT NULL))
                  + (SELECT count(*) FROM user_sync.users
                      WHERE host_user_id = 'u1' AND (username IS NOT NULL OR full_name IS NOT NULL))",
        )
        .await;
    assert_eq!(
        leftovers, 0,
        "the closed user's email or name is still stored"
    );
    let dump = env.queue_dump().await;
    if backend == Backend::Sqlite {
        // Finished jobs stay in the file until the sweeper clears them.
        assert!(dump.contains("u1"), "the queue dump reads the jobs: {dump}");
    }
    for secret in ["ada@", "Ada", "lovelace", KEY] {
        assert!(!dump.contains(secret), "the queue holds {secret:?}");
    }

    run.stop().await;
    env.finish().await;
}

async fn latest_event_wins_and_older_ones_are_superseded(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let first = env.signup("u1", "old@example.com", Some("Old")).await;
    let second = env.change("u1", "mid@example.com", Some("Mid")).await;
    let last = env.change("u1", "new@example.com", Some("New")).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(
        stats.route_total("PUT /users/{id}"),
        0,
        "no update was needed"
    );
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username, "new@example.com");
    assert_eq!(env.event_state(first).await.0, "superseded");
    assert_eq!(env.event_state(second).await.0, "superseded");
    assert_eq!(env.event_state(last).await.0, "applied");

    run.stop().await;
    env.finish().await;
}

async fn a_create_whose_answer_was_lost_is_adopted_not_duplicated(
    backend: Backend,
    version: ApiVersion,
) {
    let env = Env::start_speaking(backend, version, common::answers_lost()).await;
    let run = Running::start(&env).await;
    let event = env
        .signup("u1", "lost@example.com", Some("Lost Answer"))
        .await;

    // Every mutating answer is lost; wait until the create happened, then
    // let answers through so that the worker can confirm.
    answers_back_once_created(&env).await;

    assert_eq!(env.event_state(event).await.0, "applied");
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1, "exactly one Embedded user");
    assert_eq!(
        env.embedded_id("u1").await.as_deref(),
        Some(users[0].user_id.as_str())
    );
    assert!(
        env.open_conflicts().await.is_empty(),
        "a lost answer is no conflict"
    );
    let stats = env.sandbox.stats();
    assert!(stats.dropped >= 1);
    assert_eq!(stats.creates, 1, "created once");
    // The confirmation looked the username up: by the list where the
    // version has no lookup by username.
    let (lists, gets) = (
        stats.route_total(routes::LIST),
        stats.route_total(routes::GET),
    );
    if version == ApiVersion::V2021_12 {
        assert!(lists >= 1 && gets == 0, "{lists} lists, {gets} gets");
    } else {
        assert!(lists == 0 && gets >= 1, "{lists} lists, {gets} gets");
    }
    only_its_version_was_spoken(&env);
    // And the metrics say so.
    let metrics = reqwest::get(format!("http://{}/metrics", run.worker.ops_addr))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a body");
    let listed = format!(
        "user_sync_api_lookups_by_listing_total{{version=\"{}\"}}",
        version.as_str()
    );
    assert_eq!(
        metrics.contains(&listed),
        version == ApiVersion::V2021_12,
        "{listed} in {metrics}"
    );

    run.stop().await;
    env.finish().await;
}

async fn a_change_undone_after_its_answer_was_lost_is_undone_in_embedded(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "undo@example.com", Some("First Name"))
        .await;
    env.settle(SETTLE).await;

    // The rename is applied but its answer lost, again and again.
    env.sandbox.update_faults(FaultUpdate {
        drop_rate: Some(1.0),
        ..FaultUpdate::default()
    });
    env.change("u1", "undo@example.com", Some("Second Name"))
        .await;
    eventually(SETTLE, "the rename reaches the API", || async {
        env.sandbox.users()[0].full_name.as_deref() == Some("Second Name")
    })
    .await;
    // The host undoes it before the worker learnt that it happened.
    let undo = env
        .change("u1", "undo@example.com", Some("First Name"))
        .await;
    eventually(SETTLE, "the worker looks at the undo", || async {
        env.event_state(undo).await.0 != "pending"
            || env.sandbox.stats().count("GET /users/{id}", 200) > 0
    })
    .await;
    env.sandbox.update_faults(FaultUpdate {
        drop_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;

    assert_eq!(env.event_state(undo).await.0, "applied");
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].full_name.as_deref(), Some("First Name"));

    run.stop().await;
    env.finish().await;
}

async fn a_username_held_in_embedded_is_one_open_conflict(backend: Backend, version: ApiVersion) {
    let env = Env::start_speaking(backend, version, SandboxOptions::default()).await;
    let holder = env
        .sandbox
        .insert_user("taken@example.com", Some("Someone Else"));
    let run = Running::start(&env).await;
    let event = env.signup("u1", "Taken@Example.com", None).await;
    env.settle(SETTLE).await;
    // The same signup again must not report a second conflict.
    env.signup("u1", "taken@example.com", None).await;
    env.settle(SETTLE).await;

    assert_eq!(env.event_state(event).await.0, "conflict");
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let (host, username, reason, holder_host, holder_embedded) = &conflicts[0];
    assert_eq!(host, "u1");
    assert_eq!(username, "taken@example.com");
    assert_eq!(reason, "taken_in_embedded");
    assert_eq!(holder_host, &None);
    assert_eq!(holder_embedded.as_deref(), Some(holder.as_str()));
    assert_eq!(env.sandbox.users().len(), 1, "nothing created");
    assert_eq!(env.embedded_id("u1").await, None);
    only_its_version_was_spoken(&env);

    run.stop().await;
    env.finish().await;
}

async fn a_user_made_outside_is_never_adopted_nor_deleted_when_answers_are_lost(backend: Backend) {
    // With either setting of sync.lookup_before_create: by default the
    // create goes first, meets the holder, and its refusal is lost, so the
    // user found is held against the claim (an `unconfirmed_create`); with
    // `always` the lookup finds the holder before any create.
    for (lookup, reason) in [
        ("after_lost_answer", "unconfirmed_create"),
        ("always", "taken_in_embedded"),
    ] {
        // Every answer to a change is lost, the refusal of a taken
        // username too, and lookups fail now and then.
        let env = Env::start_on(
            backend,
            SandboxOptions {
                drop_rate: 1.0,
                fail_rate: 0.3,
                seed: Some(7),
                ..SandboxOptions::default()
            },
        )
        .await;
        // Made outside the worker a minute before: its id says so.
        let holder = env.sandbox.insert_user_made(
            "taken@example.com",
            Some("Someone Else"),
            Duration::from_secs(60),
        );
        let run = Running::with(&env, &[("USER_SYNC__SYNC__LOOKUP_BEFORE_CREATE", lookup)]).await;
        let signup = env
            .signup("u1", "Taken@Example.com", Some("Host User"))
            .await;
        env.settle(SETTLE).await;

        assert_eq!(env.event_state(signup).await.0, "conflict", "{lookup}");
        let conflicts = env.open_conflicts().await;
        assert_eq!(conflicts.len(), 1, "{lookup}: {conflicts:?}");
        assert_eq!(conflicts[0].2, reason, "{lookup}");
        assert_eq!(conflicts[0].4.as_deref(), Some(holder.as_str()), "{lookup}");
        assert_eq!(env.embedded_id("u1").await, None, "{lookup}: not adopted");

        // Closing the account must not delete someone else's user.
        env.closure("u1").await;
        env.settle(SETTLE).await;
        let users = env.sandbox.users();
        assert_eq!(users.len(), 1, "{lookup}: the outside user is still there");
        assert_eq!(users[0].user_id, holder);
        assert_eq!(users[0].full_name.as_deref(), Some("Someone Else"));
        assert_eq!(env.sandbox.stats().route_total("DELETE /users/{id}"), 0);
        assert_eq!(env.sandbox.stats().creates, 0, "{lookup}");

        run.stop().await;
        env.finish().await;
    }
}

async fn a_lost_answer_whose_user_id_carries_no_time_is_an_unconfirmed_create(backend: Backend) {
    let env = Env::start_on(
        backend,
        SandboxOptions {
            drop_rate: 1.0,
            id_format: IdFormat::Uuid,
            ..SandboxOptions::default()
        },
    )
    .await;
    let run = Running::start(&env).await;
    let event = env.signup("u1", "uuid@example.com", Some("No Time")).await;
    answers_back_once_created(&env).await;

    // The worker's own user, but nothing proves it: reported, not adopted,
    // and never created twice.
    assert_eq!(env.event_state(event).await.0, "conflict");
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(env.sandbox.stats().creates, 1);
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].2, "unconfirmed_create");
    assert_eq!(conflicts[0].4.as_deref(), Some(users[0].user_id.as_str()));
    assert_eq!(env.embedded_id("u1").await, None);

    run.stop().await;
    env.finish().await;
}

async fn two_host_users_with_one_username_conflict_before_any_call(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("first", "same@example.com", None).await;
    env.settle(SETTLE).await;
    let requests_before = env.sandbox.stats().total_requests;
    env.signup("second", "SAME@example.com ", None).await;
    // A tab the worker trims and the database's `btrim` does not: the
    // holder read with the event is for another username, and the worker
    // asks again instead of trusting it.
    env.signup("third", "\tSame@Example.com", None).await;
    env.settle(SETTLE).await;

    assert_eq!(
        env.sandbox.stats().total_requests,
        requests_before,
        "the duplicates were caught before any call"
    );
    let mut conflicts = env.open_conflicts().await;
    conflicts.sort();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    for (conflict, host) in conflicts.iter().zip(["second", "third"]) {
        assert_eq!(conflict.0, host);
        assert_eq!(conflict.2, "taken_by_host_user");
        assert_eq!(conflict.3.as_deref(), Some("first"));
    }

    run.stop().await;
    env.finish().await;
}

async fn a_refused_rename_is_a_conflict_never_a_delete(backend: Backend) {
    let env = Env::start_on(
        backend,
        SandboxOptions {
            refuse_rename: true,
            ..SandboxOptions::default()
        },
    )
    .await;
    let run = Running::start(&env).await;
    env.signup("u1", "before@example.com", Some("Name")).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    let change = env.change("u1", "after@example.com", Some("Name")).await;
    env.settle(SETTLE).await;

    assert_eq!(env.event_state(change).await.0, "conflict");
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].2, "rename_refused");
    assert_eq!(env.sandbox.stats().route_total("DELETE /users/{id}"), 0);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].user_id, id);

    run.stop().await;
    env.finish().await;
}

async fn closing_a_user_deleted_outside_is_success(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "gone@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    // Someone deletes the user in Embedded directly.
    let api = user_sync::embedded::EmbeddedClient::new(&env.settings().embedded).expect("client");
    api.delete_user(&user_sync::domain::EmbeddedUserId::parse(&id).expect("id"))
        .await
        .expect("deleted outside");
    let closure = env.closure("u1").await;
    // A closure of a user never seen is fine too.
    let never = env.closure("nobody").await;
    env.settle(SETTLE).await;

    assert_eq!(env.event_state(closure).await.0, "applied");
    assert_eq!(env.event_state(never).await.0, "applied");
    let outcomes = env
        .pairs("SELECT host_user_id, outcome FROM user_sync.erasures ORDER BY host_user_id")
        .await;
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        outcomes,
        vec![
            (some("nobody"), some("never_created")),
            (some("u1"), some("already_absent"))
        ]
    );

    run.stop().await;
    env.finish().await;
}

async fn bad_events_get_a_reason_and_block_nothing(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let unknown = env
        .event(Some("b1"), "upgrade", Some("b1@example.com"), None)
        .await;
    let no_host = env
        .event(None, "signup", Some("b2@example.com"), None)
        .await;
    let not_email = env
        .event(Some("b3"), "signup", Some("not an email"), None)
        .await;
    let control = env
        .event(
            Some("b4"),
            "signup",
            Some("b4@example.com"),
            Some("Bad\u{7}Name"),
        )
        .await;
    let long_name = "x".repeat(10_000);
    let too_long = env
        .event(
            Some("b5"),
            "signup",
            Some("b5@example.com"),
            Some(&long_name),
        )
        .await;
    let good = env.signup("ok", "ok@example.com", None).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    for id in [unknown, no_host, not_email, control, too_long] {
        let (state, reason) = env.event_state(id).await;
        assert_eq!(state, "invalid", "event {id}");
        let reason = reason.expect("a reason");
        assert!(!reason.is_empty());
        assert!(
            !reason.contains("example.com"),
            "the reason repeats the value: {reason}"
        );
    }
    assert_eq!(env.event_state(good).await.0, "applied");
    assert_eq!(env.sandbox.users().len(), 1);

    run.stop().await;
    env.finish().await;
}

async fn server_errors_and_429_storms_are_retried_to_completion(
    backend: Backend,
    version: ApiVersion,
) {
    let env = Env::start_speaking(
        backend,
        version,
        SandboxOptions {
            fail_rate: 0.3,
            rate_limit: Some(20),
            seed: Some(7),
            ..SandboxOptions::default()
        },
    )
    .await;
    for i in 0..60 {
        env.signup(&format!("u{i}"), &format!("user{i}@example.com"), None)
            .await;
    }
    let run = Running::with(&env, &[("USER_SYNC__WORKER__MAX_ATTEMPTS", "50")]).await;
    env.settle(Duration::from_secs(60)).await;

    let stats = env.sandbox.stats();
    assert_eq!(env.sandbox.users().len(), 60);
    assert_eq!(stats.creates, 60, "no duplicate create");
    assert!(stats.failed > 0, "faults were injected");
    assert!(stats.max_admitted_per_second <= 20);
    assert!(stats.rate_limited > 0, "429s were met");
    only_its_version_was_spoken(&env);
    let failed = env
        .scalar("SELECT count(*) FROM user_sync.events WHERE state <> 'applied'")
        .await;
    assert_eq!(failed, 0);

    run.stop().await;
    env.finish().await;
}

async fn a_refused_key_pauses_everything_and_fails_nothing(backend: Backend, version: ApiVersion) {
    let env = Env::start_speaking(backend, version, SandboxOptions::default()).await;
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some("rotated-key".into()),
        ..FaultUpdate::default()
    });
    let run = Running::start(&env).await;
    for i in 0..5 {
        env.signup(&format!("u{i}"), &format!("k{i}@example.com"), None)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let states = env
        .pairs("SELECT DISTINCT state, NULL FROM user_sync.events")
        .await;
    assert_eq!(
        states,
        vec![(Some("pending".to_owned()), None)],
        "nothing is marked failed"
    );
    let unauthorized = env.sandbox.stats().total_requests;
    // The probe tries the key every 200 ms: only a handful of calls.
    assert!(unauthorized < 40, "{unauthorized} calls while paused");

    // The key is accepted again: everything proceeds.
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(KEY.into()),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;
    assert_eq!(env.sandbox.users().len(), 5);
    only_its_version_was_spoken(&env);

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_queue_loses_nothing() {
    let env = Env::start(SandboxOptions::default()).await;
    // Dispatch with no worker to take the jobs, then lose them.
    let queue = user_sync::queue::RedisQueue::connect(&env.settings().redis)
        .await
        .expect("redis");
    let dispatcher = user_sync::outbox::Dispatcher::new(
        std::sync::Arc::new(user_sync::storage::PgStore::new(env.pg().clone())),
        user_sync::queue::shared(queue),
        env.settings().dispatcher,
    );
    for i in 0..20 {
        env.signup(&format!("u{i}"), &format!("f{i}@example.com"), None)
            .await;
    }
    assert_eq!(dispatcher.dispatch_once().await.expect("dispatch"), 20);
    env.flush_namespace().await;

    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    assert_eq!(env.sandbox.users().len(), 20);
    assert_eq!(env.sandbox.stats().creates, 20);

    // Flushed again while the worker runs, with jobs in flight: the worker
    // re-registers and the sweeper re-dispatches what was lost.
    env.sandbox.update_faults(FaultUpdate {
        latency_ms: Some(300),
        ..FaultUpdate::default()
    });
    for i in 20..60 {
        env.signup(&format!("u{i}"), &format!("f{i}@example.com"), None)
            .await;
    }
    let deadline = std::time::Instant::now() + SETTLE;
    while env.sandbox.stats().creates < 25 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.flush_namespace().await;
    env.settle(Duration::from_secs(60)).await;
    assert_eq!(env.sandbox.users().len(), 60);
    assert_eq!(env.sandbox.stats().creates, 60);
    assert_eq!(env.sandbox.stats().duplicate_attempts, 0);

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_processes_create_each_user_exactly_once() {
    let env = Env::start(common::latency(5)).await;
    let a = Running::start(&env).await;
    let b = Running::start(&env).await;
    let c = Running::start(&env).await;
    for i in 0..150 {
        env.signup(&format!("u{i}"), &format!("m{i}@example.com"), None)
            .await;
        if i % 3 == 0 {
            env.change(
                &format!("u{i}"),
                &format!("m{i}@example.com"),
                Some("Renamed"),
            )
            .await;
        }
    }
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert_eq!(stats.creates, 150);
    assert_eq!(stats.duplicate_attempts, 0);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 150);
    let renamed = users
        .iter()
        .filter(|u| u.full_name.as_deref() == Some("Renamed"))
        .count();
    assert_eq!(renamed, 50);

    a.stop().await;
    b.stop().await;
    c.stop().await;
    env.finish().await;
}

async fn shutdown_lets_running_jobs_finish(backend: Backend) {
    let env = Env::start_on(backend, common::latency(800)).await;
    let run = Running::start(&env).await;
    for i in 0..4 {
        env.signup(&format!("u{i}"), &format!("s{i}@example.com"), None)
            .await;
    }
    // Wait until the jobs are in flight, then stop.
    let deadline = std::time::Instant::now() + SETTLE;
    while env.sandbox.stats().total_requests < 4 {
        assert!(std::time::Instant::now() < deadline, "jobs never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.stop().await;

    let applied = env
        .scalar("SELECT count(*) FROM user_sync.events WHERE state = 'applied'")
        .await;
    assert_eq!(
        applied, 4,
        "in-flight jobs finished before the process stopped"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_quiet() {
    let env = Env::start(SandboxOptions::default()).await;
    let run = Running::with(
        &env,
        &[
            ("USER_SYNC__DISPATCHER__POLL_INTERVAL_MS", "5000"),
            ("USER_SYNC__SWEEPER__INTERVAL_MS", "60000"),
        ],
    )
    .await;
    // Every worker query reads the outbox; count the reads of its table.
    // Backends publish their statistics up to 10 s late (an idle backend's
    // flush interval), so measure long, and only once what the start read
    // (the index builds of `migrate` scan the table) has been published:
    // counted in the window, it made an idle worker at 0.6 reads a second
    // look like one at 1.
    let reads = |pool: sqlx::PgPool| async move {
        let n: i64 = sqlx::query_scalar(
            "SELECT (seq_scan + COALESCE(idx_scan, 0))::int8 FROM pg_stat_user_tables
             WHERE relid = 'user_sync.events'::regclass",
        )
        .fetch_one(&pool)
        .await
        .expect("table statistics");
        n
    };
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = reads(env.pg().clone()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = reads(env.pg().clone()).await;
    let per_second = (after - before) as f64 / 20.0;
    assert!(
        per_second <= 1.0,
        "{per_second} outbox reads per second while idle"
    );
    assert!(after > before, "the dispatcher's safety-net poll is alive");
    assert_eq!(env.sandbox.stats().total_requests, 0);

    run.stop().await;
    env.finish().await;
}

async fn a_user_closed_before_the_first_sync_costs_no_call(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    env.signup("u1", "brief@example.com", Some("Brief")).await;
    env.change("u1", "brief2@example.com", None).await;
    let closure = env.closure("u1").await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    assert_eq!(env.sandbox.stats().total_requests, 0);
    assert_eq!(env.event_state(closure).await.0, "applied");
    let outcome = env
        .pairs("SELECT outcome, NULL FROM user_sync.erasures WHERE host_user_id = 'u1'")
        .await;
    assert_eq!(outcome, vec![(Some("never_created".to_owned()), None)]);
    let leftovers = env
        .scalar(
            "SELECT count(*) FROM user_sync.events WHERE email IS NOT NULL OR full_name IS NOT NULL",
        )
        .await;
    assert_eq!(leftovers, 0);

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_never_overwrites_a_newer_one() {
    let env = Env::start(SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "a@example.com", Some("First")).await;
    env.settle(SETTLE).await;

    // Two host transactions: the older change takes its id first but
    // commits after the newer one has been applied.
    let mut late = env.pg().begin().await.expect("begin");
    let older: i64 = sqlx::query_scalar(
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         VALUES ('u1', 'profile_change', 'a@example.com', 'Older') RETURNING id",
    )
    .fetch_one(&mut *late)
    .await
    .expect("insert the older change");
    let newer = env.change("u1", "a@example.com", Some("Newer")).await;
    env.settle(SETTLE).await;
    late.commit().await.expect("commit the older change");
    env.settle(SETTLE).await;

    assert!(older < newer);
    assert_eq!(env.event_state(newer).await.0, "applied");
    assert_eq!(env.event_state(older).await.0, "superseded");
    assert_eq!(env.sandbox.users()[0].full_name.as_deref(), Some("Newer"));
    // The same event twice is harmless.
    let again = env.change("u1", "a@example.com", Some("Newer")).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(again).await.0, "applied");
    assert_eq!(env.sandbox.stats().route_total("PUT /users/{id}"), 1);

    run.stop().await;
    env.finish().await;
}

/// Forty quick changes of one user while workers run: never two calls for
/// the user at once, one create, and the last name wins.
async fn forty_quick_changes_of_one_user(env: &Env) {
    env.signup("u1", "busy@example.com", Some("Name 0")).await;
    for round in 1..=40 {
        env.change("u1", "busy@example.com", Some(&format!("Name {round}")))
            .await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert!(stats.route_total("PUT /users/{id}") >= 1);
    assert_eq!(stats.overlapping_user_requests, 0);
    assert_eq!(stats.creates, 1);
    let users = env.sandbox.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].full_name.as_deref(), Some("Name 40"));
}

/// On SQLite one process works on a file: its jobs for one user never
/// overlap either (the per-user lock is in the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_one_user_never_overlap_in_one_sqlite_process() {
    let env = Env::start_on(Backend::Sqlite, common::latency(20)).await;
    let run = Running::start(&env).await;
    forty_quick_changes_of_one_user(&env).await;

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_one_user_never_overlap_across_processes() {
    let env = Env::start(common::latency(20)).await;
    let a = Running::start(&env).await;
    let b = Running::start(&env).await;
    forty_quick_changes_of_one_user(&env).await;

    a.stop().await;
    b.stop().await;
    env.finish().await;
}

/// Forty host users dispatched together travel in two jobs, whose users
/// work at once; ten of them share one email. Whatever rounds their claims
/// land in, one of the ten gets the Embedded user, the nine others one
/// conflict each, and no create is sent for them.
async fn users_of_one_job_sharing_an_email_get_one_embedded_user(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    for i in 0..40 {
        let email = if i % 4 == 0 {
            "shared@example.com".to_owned()
        } else {
            format!("own{i}@example.com")
        };
        env.signup(&format!("u{i}"), &email, None).await;
    }
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    let users = env.sandbox.users();
    assert_eq!(find(&users, "shared@example.com").len(), 1);
    assert_eq!(users.len(), 31, "30 own emails and the shared one");
    let stats = env.sandbox.stats();
    assert_eq!(
        stats.route_total("POST /users/"),
        31,
        "no create for a taken username"
    );
    assert_eq!(stats.duplicate_attempts, 0);
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 9, "{conflicts:?}");
    let mut sharing: Vec<String> = (0..40).step_by(4).map(|i| format!("u{i}")).collect();
    let mut holders = Vec::new();
    for host in &sharing {
        if env.embedded_id(host).await.is_some() {
            holders.push(host.clone());
        }
    }
    assert_eq!(holders.len(), 1, "one of the ten holds the username");
    sharing.retain(|host| host != &holders[0]);
    for (host, _, reason, holder, ..) in &conflicts {
        assert!(sharing.contains(host), "{host}");
        assert_eq!(reason, "taken_by_host_user");
        assert_eq!(holder.as_deref(), Some(holders[0].as_str()));
    }
    for i in (0..40).filter(|i| i % 4 != 0) {
        assert!(env.embedded_id(&format!("u{i}")).await.is_some(), "u{i}");
    }

    run.stop().await;
    env.finish().await;
}

/// The users of one job share one connection and its advisory locks: a
/// user stays locked until its session is released (or, for a session
/// dropped mid-way, until the job's last session is gone), and a user
/// released early is free while the others are still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_users_are_locked_until_released_or_dropped() {
    use user_sync::domain::HostUserId;
    use user_sync::storage::{PgStore, SyncStore, UserSession};

    fn locked<T>(sessions: &[Option<T>]) -> Vec<bool> {
        sessions.iter().map(Option::is_some).collect()
    }

    let env = Env::start(SandboxOptions::default()).await;
    let store = PgStore::new(env.pg().clone());
    let host = |h: &str| HostUserId::parse(h).expect("a host user id");
    let (a, b, c) = (host("a"), host("b"), host("c"));

    let mut first = store
        .lock_users(&[a.clone(), b.clone()])
        .await
        .expect("lock a and b");
    assert_eq!(locked(&first), [true, true]);
    let again = store
        .lock_users(&[a.clone(), b.clone(), c.clone()])
        .await
        .expect("lock again");
    assert_eq!(locked(&again), [false, false, true], "a and b are held");
    drop(again);

    // b released: free at once, while a is still held.
    let b_session = first[1].take().expect("b's session");
    b_session.release().await.expect("release b");
    let now = store
        .lock_users(&[a.clone(), b.clone()])
        .await
        .expect("lock after b's release");
    assert_eq!(locked(&now), [false, true]);
    drop(now);

    // a's session dropped without a release (its job cancelled): the
    // connection is closed with it, which frees a.
    drop(first);
    eventually(Duration::from_secs(5), "a is free again", || async {
        let Ok(sessions) = store.lock_users(std::slice::from_ref(&a)).await else {
            return false;
        };
        sessions.into_iter().next().flatten().is_some()
    })
    .await;
    env.finish().await;
}

/// A create that failed before it was made (a 5xx) leaves its claim in
/// `creating`; the user then changes to an email another host user holds.
/// The next job confirms the first create was never made, meets the
/// conflict, and must leave no claim behind: a `creating` row with nothing
/// pending would wait for a confirmation that never comes.
async fn a_create_never_made_leaves_no_claim_when_the_next_username_is_taken(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("a", "taken@example.com", None).await;
    env.settle(SETTLE).await;
    // What a job leaves when its create was answered 503.
    env.execute(
        "INSERT INTO user_sync.users (host_user_id, username, state)
         VALUES ('b', 'never-made@example.com', 'creating')",
        0,
    )
    .await;
    env.change("b", "taken@example.com", None).await;
    env.settle(SETTLE).await;

    let creating = env
        .scalar("SELECT count(*) FROM user_sync.users WHERE state = 'creating'")
        .await;
    assert_eq!(creating, 0, "no claim is left waiting");
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].0, "b");
    assert_eq!(conflicts[0].2, "taken_by_host_user");
    assert_eq!(conflicts[0].3.as_deref(), Some("a"));
    assert_eq!(env.sandbox.stats().route_total("POST /users/"), 1);

    run.stop().await;
    env.finish().await;
}

/// A create of unknown outcome finds its username held by a user that is
/// already mapped to another host user (renamed to that username since,
/// outside the worker or by a rename whose outcome was lost): a conflict
/// naming that host user, never a second mapping of one Embedded user.
async fn an_unconfirmed_create_never_adopts_a_user_mapped_to_another_host_user(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let renamed = env.sandbox.insert_user("renamed@example.com", None);
    env.execute(
        &format!(
            "INSERT INTO user_sync.users (host_user_id, embedded_user_id, username, state)
             VALUES ('h', '{renamed}', 'before@example.com', 'synced')"
        ),
        0,
    )
    .await;
    // What a job leaves when its create's answer was lost.
    env.execute(
        "INSERT INTO user_sync.users (host_user_id, username, state)
         VALUES ('n', 'renamed@example.com', 'creating')",
        0,
    )
    .await;
    env.signup("n", "renamed@example.com", None).await;
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;

    assert_eq!(env.embedded_id("n").await, None, "n is not mapped");
    assert_eq!(env.embedded_id("h").await, Some(renamed.clone()));
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].0, "n");
    assert_eq!(conflicts[0].2, "taken_by_host_user");
    assert_eq!(conflicts[0].3.as_deref(), Some("h"));
    assert_eq!(conflicts[0].4.as_deref(), Some(renamed.as_str()));
    assert_eq!(env.sandbox.stats().route_total("POST /users/"), 0);
    let claims = env
        .scalar(
            "SELECT count(*) FROM user_sync.users
             WHERE host_user_id = 'n' AND state IN ('creating', 'synced')",
        )
        .await;
    assert_eq!(claims, 0, "n's claim is released");

    run.stop().await;
    env.finish().await;
}

/// The outbox after a burst: 20,000 pending events that the planner's
/// statistics, taken before the burst, say do not exist. A job's statements
/// must still reach their rows by key: each reads a few rows per user, not
/// every pending event. Each step runs seven times on one connection, so
/// that a statement prepared once has moved to its generic plan (made
/// without the rows' values) by the end. Counted with PostgreSQL's
/// per-transaction statistics, so nothing here depends on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_statements_read_by_key_after_a_burst_the_statistics_missed() {
    use user_sync::domain::EventState;
    use user_sync::domain::Profile;
    use user_sync::domain::{HostUserId, Username};
    use user_sync::storage::{
        NewClaim, SyncedUser, claim_each_for_create, finish_many, holders_of, mark_synced,
        newest_pending_many,
    };

    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    for sql in [
        "ALTER TABLE user_sync.events SET (autovacuum_enabled = false)",
        "ALTER TABLE user_sync.users SET (autovacuum_enabled = false)",
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name, state)
         SELECT 'old' || i, 'signup', 'old' || i || '@example.com', 'Old', 'applied'
         FROM generate_series(1, 500) AS i",
        "ANALYZE user_sync.events",
        "ANALYZE user_sync.users",
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         SELECT 'burst' || i, 'signup', 'burst' || i || '@example.com', 'Burst'
         FROM generate_series(1, 20000) AS i",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }

    let mut conn = pool.acquire().await.expect("a connection");
    let hosts: Vec<String> = (1..=8).map(|i| format!("burst{}", i * 997)).collect();
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let profile = |h: &str| Profile {
        username: Username::from_email(&format!("{h}@example.com")).expect("a username"),
        full_name: None,
    };
    let host = |h: &str| HostUserId::parse(h).expect("a host user id");

    for round in 0..7 {
        let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
        let before = rows_read(&mut tx).await;
        let next = newest_pending_many(&mut tx, &names)
            .await
            .expect("newest pending");
        let ids: Vec<i64> = next
            .iter()
            .map(|n| n.as_ref().expect("a pending event").event.id)
            .collect();
        let lookups: Vec<(Username, HostUserId)> = names
            .iter()
            .map(|h| (profile(h).username, host(h)))
            .collect();
        let refs: Vec<(&Username, &HostUserId)> = lookups.iter().map(|(u, h)| (u, h)).collect();
        holders_of(&mut tx, &refs).await.expect("holders");
        let claims: Vec<NewClaim> = names
            .iter()
            .zip(&ids)
            .map(|(h, id)| NewClaim {
                host: host(h),
                profile: profile(h),
                event_id: *id,
                seen_free: false,
            })
            .collect();
        claim_each_for_create(&mut tx, &claims)
            .await
            .expect("claims");
        let synced: Vec<SyncedUser> = names
            .iter()
            .zip(&ids)
            .map(|(h, id)| SyncedUser {
                host: host(h),
                id: user_sync::domain::EmbeddedUserId::parse(&format!("u-{h}")).expect("a user id"),
                profile: profile(h),
                event_id: *id,
                applied: None,
            })
            .collect();
        mark_synced(&mut tx, &synced).await.expect("synced");
        let ends: Vec<(i64, EventState, Option<&str>)> = ids
            .iter()
            .map(|id| (*id, EventState::Applied, None))
            .collect();
        finish_many(&mut tx, &ends).await.expect("finish");
        let after = rows_read(&mut tx).await;
        tx.rollback().await.expect("rollback");
        // A few rows per user and statement; a scan of the pending events
        // alone would be 20,000.
        assert!(
            after - before < 1_000,
            "round {round}: {} rows read for {} users",
            after - before,
            names.len()
        );
    }
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}

/// A job's read of a user's newest pending event counts the user's other
/// pending events (all older), and nothing that ended: the job supersedes
/// them only when there are some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_pending_event_is_read_with_how_many_older_ones_are_pending() {
    use user_sync::storage::newest_pending_many;

    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    for sql in [
        "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
         VALUES ('a', 'signup', 'a@example.com', NULL),
                ('a', 'profile_change', 'a1@example.com', NULL),
                ('b', 'signup', 'b@example.com', NULL),
                ('a', 'profile_change', 'a2@example.com', NULL),
                ('a', 'profile_change', 'a3@example.com', NULL),
                ('c', 'signup', 'c@example.com', NULL)",
        "UPDATE user_sync.events SET state = 'failed', reason = 'refused'
         WHERE email = 'a1@example.com'",
        "UPDATE user_sync.events SET state = 'applied' WHERE host_user_id = 'c'",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .expect(sql);
    }
    let id = |email: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT id FROM user_sync.events WHERE email = $1")
                .bind(email)
                .fetch_one(&pool)
                .await
                .expect("an event")
        }
    };
    let mut conn = pool.acquire().await.expect("a connection");
    let next = newest_pending_many(&mut conn, &["a", "b", "c"])
        .await
        .expect("newest pending");
    let seen: Vec<Option<(i64, i64)>> = next
        .iter()
        .map(|n| n.as_ref().map(|n| (n.event.id, n.older_pending)))
        .collect();
    assert_eq!(
        seen,
        vec![
            Some((id("a3@example.com").await, 2)),
            Some((id("b@example.com").await, 0)),
            None
        ]
    );
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}

/// Rows and index entries read in the current transaction, over every table
/// and index of the worker's schema.
async fn rows_read(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(pg_stat_get_xact_tuples_returned(c.oid)
                          + pg_stat_get_xact_tuples_fetched(c.oid)), 0)::int8
         FROM pg_class c WHERE c.relnamespace = 'user_sync'::regnamespace",
    )
    .fetch_one(conn)
    .await
    .expect("statistics")
}

/// Intents commit durably, outcomes without waiting for the disk: a
/// trigger of the test's records `synchronous_commit` as each write of a
/// job's session sees it. The relaxed setting ends with its transaction:
/// the connection, handed back to the pool, commits durably again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intents_are_durable_and_outcomes_do_not_wait_for_the_disk() {
    use user_sync::domain::EventState;
    use user_sync::domain::Profile;
    use user_sync::domain::{EmbeddedUserId, HostUserId, Username};
    use user_sync::storage::{Claim, Ending, SyncStore, UserSession};

    let env = Env::start(SandboxOptions::default()).await;
    env.signup("a", "a@example.com", None).await;
    env.signup("b", "b@example.com", None).await;
    for sql in [
        "CREATE TABLE public.commits (tbl text, state text, setting text)",
        "CREATE FUNCTION public.note_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.commits
             VALUES (TG_TABLE_NAME, NEW.state, current_setting('synchronous_commit'));
             RETURN NULL;
         END $$",
        "CREATE TRIGGER note_commit AFTER INSERT OR UPDATE ON user_sync.users
         FOR EACH ROW EXECUTE FUNCTION public.note_commit()",
        "CREATE TRIGGER note_commit AFTER UPDATE ON user_sync.events
         FOR EACH ROW EXECUTE FUNCTION public.note_commit()",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(env.pg())
            .await
            .expect(sql);
    }
    // One connection: the sessions' and the check's afterwards.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*env.pg().connect_options()).clone())
        .await
        .expect("connect");
    let store = user_sync::storage::PgStore::new(pool.clone());
    let a_event = env
        .scalar("SELECT id FROM user_sync.events WHERE host_user_id = 'a'")
        .await;
    let b_event = env
        .scalar("SELECT id FROM user_sync.events WHERE host_user_id = 'b'")
        .await;
    let hosts = [
        HostUserId::parse("a").expect("a host user id"),
        HostUserId::parse("b").expect("a host user id"),
    ];
    let mut sessions = store.lock_users(&hosts).await.expect("lock a and b");
    let mut a = sessions[0].take().expect("a is free");
    let mut b = sessions[1].take().expect("b is free");
    let profile = Profile {
        username: Username::from_email("a@example.com").expect("a username"),
        full_name: None,
    };
    let claim = a
        .claim_for_create(&profile, a_event, false)
        .await
        .expect("claim a's username");
    assert!(matches!(claim, Claim::Claimed));
    let user = EmbeddedUserId::parse("user-a").expect("a userId");
    a.mark_synced(&user, &profile, a_event, Some(a_event))
        .await
        .expect("a synced");
    b.finish(Ending {
        id: b_event,
        state: EventState::Invalid,
        reason: Some("a test's reason"),
    })
    .await
    .expect("b ended");
    a.release().await.expect("release a");
    b.release().await.expect("release b");

    let seen: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tbl, state, setting FROM public.commits ORDER BY tbl, state")
            .fetch_all(env.pg())
            .await
            .expect("the commits seen");
    let seen: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|(t, s, c)| (t.as_str(), s.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("events", "applied", "off"),
            ("events", "invalid", "off"),
            ("users", "creating", "on"),
            ("users", "synced", "off"),
        ]
    );
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .expect("the setting");
    assert_eq!(setting, "on", "the pool's connection commits durably again");
    env.finish().await;
}

/// A claim turning into a synced user changes no indexed column, so that
/// PostgreSQL keeps the new row on its page and writes no index entry (a
/// HOT update): counted with the transaction's own statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_becomes_a_synced_user_without_new_index_entries() {
    use user_sync::domain::Profile;
    use user_sync::domain::{EmbeddedUserId, HostUserId, Username};
    use user_sync::storage::{NewClaim, SyncedUser, claim_each_for_create, mark_synced};

    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    let mut conn = pool.acquire().await.expect("a connection");
    let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    let user = |i: usize| {
        let host = HostUserId::parse(&format!("h{i}")).expect("a host user id");
        let profile = Profile {
            username: Username::from_email(&format!("h{i}@example.com")).expect("a username"),
            full_name: None,
        };
        (host, profile)
    };
    let claims: Vec<NewClaim> = (0..32)
        .map(|i| {
            let (host, profile) = user(i);
            NewClaim {
                host,
                profile,
                event_id: i as i64,
                seen_free: false,
            }
        })
        .collect();
    claim_each_for_create(&mut tx, &claims)
        .await
        .expect("claims");
    let synced: Vec<SyncedUser> = (0..32)
        .map(|i| {
            let (host, profile) = user(i);
            SyncedUser {
                id: EmbeddedUserId::parse(&format!("user-{i}")).expect("a userId"),
                host,
                profile,
                event_id: i as i64,
                applied: None,
            }
        })
        .collect();
    mark_synced(&mut tx, &synced).await.expect("synced");
    let (updated, hot): (i64, i64) = sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('user_sync.users'::regclass),
                pg_stat_get_xact_tuples_hot_updated('user_sync.users'::regclass)",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("statistics");
    assert_eq!((updated, hot), (32, 32), "(updated, HOT-updated) users");
    // The index names no state: a row that stops holding its username must
    // clear it, or the username would stay held.
    let kept = sqlx::query("UPDATE user_sync.users SET state = 'failed' WHERE host_user_id = 'h0'")
        .execute(&mut *tx)
        .await;
    assert!(
        matches!(&kept, Err(sqlx::Error::Database(e)) if e.constraint() == Some("users_username_only_while_held")),
        "{kept:?}"
    );
    tx.rollback().await.expect("rollback");
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}

/// An event's end changes no indexed column (0014): PostgreSQL rewrites
/// the row on its page and writes no index entry (a HOT update), for an
/// event that applied or was superseded, ended alone or by the sync's own
/// statement. One that fails gains a reason, which `events_with_reason`
/// holds, and is not HOT: the rare path. Counted with the transaction's own
/// statistics; the ends are counted per minute in the same statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_end_writes_no_index_entry() {
    use user_sync::domain::EventState;
    use user_sync::storage::finish_many;

    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         SELECT 'h' || g, 'signup', 'h' || g || '@example.com' FROM generate_series(1, 24) g
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let mut conn = pool.acquire().await.expect("a connection");
    let mut tx = sqlx::Connection::begin(&mut *conn).await.expect("begin");
    let ends: Vec<(i64, EventState, Option<&str>)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| match i {
            0..16 => (*id, EventState::Applied, None),
            16..20 => (*id, EventState::Superseded, None),
            _ => (*id, EventState::Failed, Some("refused")),
        })
        .collect();
    finish_many(&mut tx, &ends[..20]).await.expect("ends");
    let hot = "SELECT pg_stat_get_xact_tuples_updated('user_sync.events'::regclass),
                      pg_stat_get_xact_tuples_hot_updated('user_sync.events'::regclass)";
    let counts: (i64, i64) = sqlx::query_as(hot)
        .fetch_one(&mut *tx)
        .await
        .expect("statistics");
    assert_eq!(counts, (20, 20), "(updated, HOT-updated) events");
    finish_many(&mut tx, &ends[20..]).await.expect("failures");
    let counts: (i64, i64) = sqlx::query_as(hot)
        .fetch_one(&mut *tx)
        .await
        .expect("statistics");
    assert_eq!(counts, (24, 20), "a failure is not HOT");
    let counted: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, sum(events)::bigint FROM user_sync.finished_counts GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .expect("counts");
    assert_eq!(
        counted,
        [("applied", 16), ("failed", 4), ("superseded", 4)].map(|(s, n)| (s.to_owned(), n))
    );
    tx.commit().await.expect("commit");
    drop(conn);
    pool.close().await;
    db.drop_db().await;
}

/// The sweeper walks the events the dispatcher took once, in its order:
/// it passes those that ended, stops at the first one still in flight and
/// not yet lost, and marks the lost ones; an event dispatched again keeps
/// its mark and a lease until it ends, and comes due again when the queue
/// lost its jobs. Every pending event is counted by `status` all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_walks_each_dispatched_event_once_and_finds_the_lost_ones() {
    use user_sync::domain::EventState;
    use user_sync::storage::{Outbox, PgStore, Reports, finish_many};

    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    let store = PgStore::new(pool.clone()).with_lease(Duration::from_secs(300));
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         SELECT 'h' || g, 'signup', 'h' || g || '@example.com' FROM generate_series(1, 10) g
         RETURNING id",
    )
    .fetch_all(&pool)
    .await
    .expect("events");
    let claim = store.claim_due(100).await.expect("claim");
    assert_eq!(claim.events().len(), 10);
    claim.confirm().await.expect("confirm");
    let end = |which: &[usize]| {
        let ends: Vec<(i64, EventState, Option<&str>)> = which
            .iter()
            .map(|i| (ids[*i], EventState::Applied, None))
            .collect();
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("a connection");
            finish_many(&mut conn, &ends).await.expect("ends");
        }
    };
    let place = || async {
        sqlx::query_as::<_, (Option<i64>, bool)>(
            "SELECT swept_id, sweeping IS NULL FROM user_sync.dispatcher",
        )
        .fetch_one(&pool)
        .await
        .expect("the sweeper's place")
    };
    let pending = || async { store.status().await.expect("status").pending_events };
    let long = Duration::from_secs(300);
    end(&[0, 1, 2, 4]).await;
    assert_eq!(pending().await, 6);
    // Nothing in flight for long: the walk passes the ended ones and stops
    // at the first in flight.
    assert_eq!(store.sweep_stale(long).await.expect("sweep"), 0);
    assert_eq!(place().await, (Some(ids[2]), false));
    assert_eq!(pending().await, 6);
    end(&[3]).await;
    assert_eq!(store.sweep_stale(long).await.expect("sweep"), 0);
    assert_eq!(place().await, (Some(ids[4]), false), "past 3 and 4, at 5");
    // 5 and 6 waited on their job for an hour: lost, marked, and the walk
    // stops at 7.
    sqlx::query(
        "UPDATE user_sync.events SET available_at = now() - interval '1 hour' WHERE id = ANY($1)",
    )
    .bind(&ids[5..7])
    .execute(&pool)
    .await
    .expect("aged");
    assert_eq!(store.sweep_stale(long).await.expect("sweep"), 2);
    assert_eq!(place().await, (Some(ids[6]), false));
    assert_eq!(pending().await, 5);
    let again = store.claim_due(100).await.expect("claim");
    let again_ids: Vec<i64> = again.events().iter().map(|c| c.id).collect();
    again.confirm().await.expect("confirm");
    assert_eq!(again_ids, ids[5..7]);
    let leased: Vec<(bool, bool, bool)> = sqlx::query_as(
        "SELECT redispatch, available_at > now() + interval '4 minutes', dispatched_at IS NOT NULL
         FROM user_sync.events WHERE id = ANY($1) ORDER BY id",
    )
    .bind(&ids[5..7])
    .fetch_all(&pool)
    .await
    .expect("leases");
    assert_eq!(leased, vec![(true, true, true); 2], "marked, with a lease");
    let nothing = store.claim_due(100).await.expect("claim");
    assert!(nothing.events().is_empty(), "a lease is not due");
    nothing.confirm().await.expect("confirm");
    // The queue lost its jobs: every event in flight is due at once, the
    // leased ones and those the walk had not reached.
    assert_eq!(store.sweep_stale(Duration::ZERO).await.expect("sweep"), 5);
    assert_eq!(place().await, (None, true), "the walk is past the tick");
    let all = store.claim_due(100).await.expect("claim");
    let mut all_ids: Vec<i64> = all.events().iter().map(|c| c.id).collect();
    all.confirm().await.expect("confirm");
    all_ids.sort_unstable();
    assert_eq!(all_ids, ids[5..]);
    assert_eq!(pending().await, 5);
    end(&[5, 6, 7, 8, 9]).await;
    assert_eq!(pending().await, 0);
    let marks: i64 = sqlx::query_scalar("SELECT count(*) FROM user_sync.events WHERE redispatch")
        .fetch_one(&pool)
        .await
        .expect("marks");
    assert_eq!(marks, 0, "an end takes the mark off");
    // An idle sweep writes nothing: the dispatcher's row stays as it is.
    assert_eq!(store.sweep_stale(long).await.expect("sweep"), 0);
    let xmin_before: String = sqlx::query_scalar("SELECT xmin::text FROM user_sync.dispatcher")
        .fetch_one(&pool)
        .await
        .expect("the row's version");
    assert_eq!(store.sweep_stale(long).await.expect("sweep"), 0);
    let xmin_after: String = sqlx::query_scalar("SELECT xmin::text FROM user_sync.dispatcher")
        .fetch_one(&pool)
        .await
        .expect("the row's version");
    assert_eq!(xmin_before, xmin_after, "an idle walk rewrites nothing");
    pool.close().await;
    db.drop_db().await;
}

/// Anyone who can push to the queue (another deployment on the same Redis)
/// can push `{"event_id": N, "host_user_id": null}`. The job is only a hint:
/// the event's own row decides, so a pending closure is still carried out,
/// never ended `invalid` (which would leave its user never erased).
async fn a_job_pushed_without_a_host_user_cannot_end_a_closure(backend: Backend) {
    use user_sync::queue::{JobEvent, JobQueue, RedisQueue, SqliteQueue, SyncJob};

    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // The sweeper never hands the closure to a job of its own during the
    // test: only the forged job can reach it.
    let run = Running::with(
        &env,
        &[("USER_SYNC__SWEEPER__REDISPATCH_AFTER_MS", "600000")],
    )
    .await;
    env.signup("u1", "ada@example.com", None).await;
    env.settle(SETTLE).await;
    assert_eq!(env.sandbox.users().len(), 1);

    // A closure the dispatcher leaves alone (as if its job were in flight),
    // then a forged job naming it with no host user.
    let closure = match backend {
        Backend::Postgres => common::dispatched_without_jobs(env.pg(), env.closure("u1")).await,
        Backend::Sqlite => {
            let closure = env.closure("u1").await;
            env.execute(
                "UPDATE user_sync.events SET dispatched_at = occurred_at WHERE id = $1",
                closure,
            )
            .await;
            closure
        }
    };
    let forged = vec![SyncJob {
        events: vec![JobEvent {
            event_id: closure,
            host_user_id: None,
        }],
    }];
    let settings = env.settings();
    match backend {
        Backend::Postgres => {
            let queue = RedisQueue::connect(&settings.redis).await.expect("redis");
            queue.push(forged).await.expect("push the forged job");
        }
        Backend::Sqlite => {
            let queue = SqliteQueue::connect(&settings.database).expect("the queue");
            queue.push(forged).await.expect("push the forged job");
        }
    }
    eventually(SETTLE, "the closure is no longer pending", || async {
        env.event_state(closure).await.0 != "pending"
    })
    .await;
    assert_eq!(env.event_state(closure).await, ("applied".to_owned(), None));
    assert!(env.sandbox.users().is_empty(), "the user was deleted");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.erasures").await,
        1
    );
    run.stop().await;
    env.finish().await;
}

/// A host id written with white space around it is the host's id as it
/// wrote it: its events are applied and its closure erases, rather than
/// being dispatched again every sweep (a trimmed copy matched none of its
/// rows).
async fn a_padded_host_user_id_is_applied_not_dispatched_forever(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    let signup = env.signup("42 ", "padded@example.com", None).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(signup).await.0, "applied");
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM user_sync.users WHERE host_user_id = '42 ' AND state = 'synced'"
        )
        .await,
        1
    );
    assert_eq!(env.sandbox.users().len(), 1);

    let closure = env.closure("42 ").await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(closure).await.0, "applied");
    assert!(
        env.sandbox.users().is_empty(),
        "the closure erased the user"
    );
    run.stop().await;
    env.finish().await;
}

/// `rediss://` works: the queue reaches a Redis that speaks TLS only, and
/// checks its certificate (a CA the process does not trust is refused, and
/// the worker never falls back to plain text).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_reaches_redis_over_tls_and_checks_its_certificate() {
    let redis = common::services::TlsRedis::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &common::admin_url(),
        &redis.url,
        SandboxOptions::default(),
    )
    .await;
    let mut vars = common::process::process_vars(&env);
    let untrusted = common::process::run_once(&vars, &["run"]).await;
    assert!(!untrusted.status.success(), "{untrusted}");
    assert!(untrusted.stderr.contains("Redis"), "{untrusted}");

    vars.insert(
        "SSL_CERT_FILE".into(),
        redis.ca.to_string_lossy().into_owned(),
    );
    let mut worker = common::process::Proc::spawn(&vars, &["run"]);
    worker.ready().await;
    env.signup("tls", "over.tls@example.com", None).await;
    env.settle(SETTLE).await;
    assert!(env.embedded_id("tls").await.is_some(), "{}", worker.log());
    worker.kill().await;
    // The test's own Redis goes with it: no namespace to flush (this test
    // process does not trust its CA).
    env.db_pool.close().await;
    env.sandbox.shutdown().await;
    env.db.drop_db().await;
}

/// Host users of one job claiming one username never meet in one
/// statement: nothing is refused by the unique index, so PostgreSQL's own
/// log (which would print the refused key) never holds the username.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_one_username_in_one_job_leave_the_server_log_clean() {
    let pg = common::services::OwnPostgres::start().await;
    let env = Env::start_with(
        Backend::Postgres,
        &pg.admin_url(),
        &common::redis_url(),
        SandboxOptions::default(),
    )
    .await;
    for i in 0..40 {
        let email = if i % 4 == 0 {
            "shared.claim@example.com".to_owned()
        } else {
            format!("own{i}@example.com")
        };
        env.signup(&format!("u{i}"), &email, None).await;
    }
    let run = Running::start(&env).await;
    env.settle(SETTLE).await;
    assert_eq!(env.sandbox.users().len(), 31);
    assert_eq!(env.open_conflicts().await.len(), 9);
    run.stop().await;

    let log = pg.server_log();
    assert!(!log.contains("duplicate key"), "{log}");
    assert!(!log.contains("shared.claim"), "{log}");
    env.finish().await;
}

/// The dispatch claim on PostgreSQL: one claim at a time (another made
/// meanwhile claims nothing, and nothing is ever claimed twice); a tick
/// larger than a batch is drained over several claims; an event ended
/// before a claim is left out of it, and a claim never waits for a job's
/// lock on an event; an abandoned claim hands its events back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dispatcher_claims_at_a_time_and_leaves_events_ended_meanwhile() {
    use user_sync::storage::{Outbox, PgStore};
    let db = common::TestDb::create().await;
    let pool = db.migrated_pool().await;
    let store = PgStore::new(pool.clone());
    let insert = |host: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO user_sync.events (host_user_id, kind, email, full_name)
                 VALUES ($1, 'signup', $1 || '@example.com', NULL) RETURNING id",
            )
            .bind(host)
            .fetch_one(&pool)
            .await
            .expect("insert an event")
        }
    };
    for host in ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"] {
        insert(host).await;
    }
    let first = store.claim_due(4).await.expect("claim");
    let second = store.claim_due(100).await.expect("claim");
    assert_eq!(first.events().len(), 4, "the first claim takes its batch");
    assert!(
        second.events().is_empty(),
        "a claim made while another is open claims nothing: {:?}",
        second.events().iter().map(|c| c.id).collect::<Vec<_>>()
    );
    second.confirm().await.expect("confirm");
    let taken: Vec<i64> = first.events().iter().map(|c| c.id).collect();
    first.confirm().await.expect("confirm");
    let rest = store.claim_due(100).await.expect("claim");
    let rest_ids: Vec<i64> = rest.events().iter().map(|c| c.id).collect();
    rest.confirm().await.expect("confirm");
    assert_eq!(rest_ids.len(), 6, "the rest, once the first claim ended");
    assert!(
        rest_ids.iter().all(|id| !taken.contains(id)),
        "no event claimed twice: {taken:?} then {rest_ids:?}"
    );

    // A host transaction that commits after later ones were claimed: its
    // event is claimed by the first claim that sees it, once.
    let mut late = pool.begin().await.expect("a host transaction");
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO user_sync.events (host_user_id, kind, email)
         VALUES ('late', 'signup', 'late@example.com') RETURNING id",
    )
    .fetch_one(&mut *late)
    .await
    .expect("insert");
    let after = insert("after").await;
    let claim = store.claim_due(100).await.expect("claim");
    assert_eq!(
        claim.events().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![after]
    );
    claim.confirm().await.expect("confirm");
    late.commit().await.expect("the late commit");
    let claim = store.claim_due(100).await.expect("claim");
    assert_eq!(
        claim.events().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![late_id]
    );
    claim.confirm().await.expect("confirm");
    assert!(late_id < after);

    // An event ended before the claim is left out; one a job holds (its
    // end not committed) does not make the claim wait.
    let ended = insert("b").await;
    sqlx::query(
        "UPDATE user_sync.events SET state = 'superseded', finished_at = now() WHERE id = $1",
    )
    .bind(ended)
    .execute(&pool)
    .await
    .expect("supersede");
    let held = insert("c").await;
    let newer = insert("c").await;
    let mut job = pool.begin().await.expect("a job's transaction");
    sqlx::query(
        "UPDATE user_sync.events SET state = 'superseded', finished_at = now() WHERE id = $1",
    )
    .bind(held)
    .execute(&mut *job)
    .await
    .expect("supersede");
    let claim = tokio::time::timeout(Duration::from_secs(5), store.claim_due(100))
        .await
        .expect("the claim does not wait for the job")
        .expect("claim");
    let ids: Vec<i64> = claim.events().iter().map(|c| c.id).collect();
    claim.confirm().await.expect("confirm");
    job.commit().await.expect("the job commits");
    assert!(!ids.contains(&ended), "an ended event is left out: {ids:?}");
    assert!(ids.contains(&newer), "{ids:?}");

    // A claim that stops at its limit says more may be due, also when it
    // holds fewer events: here it passed over an ended event still marked
    // to dispatch again (as an older version's end leaves it).
    let gone = insert("e0").await;
    sqlx::query(
        "UPDATE user_sync.events SET state = 'superseded', redispatch = true,
             available_at = now() - interval '1 second'
         WHERE id = $1",
    )
    .bind(gone)
    .execute(&pool)
    .await
    .expect("supersede");
    let kept = insert("e1").await;
    let claim = store.claim_due(1).await.expect("claim");
    assert!(claim.events().is_empty(), "{:?}", claim.events());
    assert!(claim.stopped_at_limit(), "the claim stopped at its limit");
    claim.confirm().await.expect("confirm");
    let claim = store.claim_due(1).await.expect("claim");
    assert_eq!(
        claim.events().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![kept]
    );
    assert!(claim.stopped_at_limit(), "one of one: more may be due");
    claim.confirm().await.expect("confirm");
    let claim = store.claim_due(1).await.expect("claim");
    assert!(claim.events().is_empty() && !claim.stopped_at_limit());
    claim.confirm().await.expect("confirm");

    // Abandoned, a claim hands its events back: the next one takes them.
    let back = insert("d").await;
    let claim = store.claim_due(100).await.expect("claim");
    assert_eq!(
        claim.events().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![back]
    );
    claim.abandon().await.expect("abandon");
    let claim = store.claim_due(100).await.expect("claim");
    assert_eq!(
        claim.events().iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![back]
    );
    claim.confirm().await.expect("confirm");
    let claim = store.claim_due(100).await.expect("claim");
    assert!(claim.events().is_empty(), "nothing twice once confirmed");
    claim.confirm().await.expect("confirm");
    pool.close().await;
    db.drop_db().await;
}

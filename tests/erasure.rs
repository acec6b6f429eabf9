//! GDPR erasure end to end, on both backends: an account closure deletes
//! the user's workflow logs, then the user, each call's intent recorded
//! first so that the proof in `user_sync.erasures` stays true across lost
//! answers, server errors, a refused key and a crash between the calls.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::Running;
use common::{Backend, Env, eventually};
use user_sync_sandbox::{FaultUpdate, SandboxOptions, routes};

const SETTLE: Duration = Duration::from_secs(30);

on_each_backend!(
    the_logs_go_before_the_user_and_the_proof_has_each_step,
    a_lost_answer_on_the_logs_call_is_sent_again,
    a_lost_answer_on_the_user_delete_is_recorded_deleted,
    a_refused_key_between_the_two_calls_resumes_at_the_user,
    a_closure_is_never_held_up_by_earlier_failed_invalid_or_conflicted_events,
    a_closed_user_whose_create_was_never_confirmed_is_erased_too,
);

/// The erasure record of `host`: outcome, embedded user id, and whether
/// each step has a time, in order (requested ≤ logs ≤ user ≤ completed).
async fn proof(env: &Env, host: &str) -> (String, Option<String>, bool, bool, bool) {
    let rows: Vec<(String, Option<String>, i64, i64, i64)> = env
        .rows(&format!(
            "SELECT outcome, embedded_user_id,
                    CAST(CASE WHEN logs_deleted_at IS NULL THEN 0 ELSE 1 END AS BIGINT),
                    CAST(CASE WHEN user_deleted_at IS NULL THEN 0 ELSE 1 END AS BIGINT),
                    CAST(CASE WHEN requested_at <= COALESCE(logs_deleted_at, requested_at)
                          AND COALESCE(logs_deleted_at, requested_at)
                              <= COALESCE(user_deleted_at, completed_at)
                          AND COALESCE(user_deleted_at, completed_at) <= completed_at
                         THEN 1 ELSE 0 END AS BIGINT)
             FROM user_sync.erasures WHERE host_user_id = '{host}'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "one record for {host}");
    let (outcome, id, logs, user, ordered) = rows.into_iter().next().expect("one");
    (outcome, id, logs == 1, user == 1, ordered == 1)
}

fn drop_rate(env: &Env, rate: f64) {
    env.sandbox.update_faults(FaultUpdate {
        drop_rate: Some(rate),
        ..FaultUpdate::default()
    });
}

async fn the_logs_go_before_the_user_and_the_proof_has_each_step(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "ada@example.com", Some("Ada")).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    assert!(env.sandbox.workflow_logs(&id) > 0);

    env.closure("u1").await;
    env.settle(SETTLE).await;
    let stats = env.sandbox.stats();
    assert_eq!(stats.count(routes::DELETE_LOGS, 200), 1);
    assert_eq!(stats.count(routes::DELETE, 200), 1);
    assert_eq!(stats.deleted_with_logs, 0, "the logs went first");
    assert_eq!(env.sandbox.workflow_logs(&id), 0);
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id), true, true, true)
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.erasure_steps")
            .await,
        0,
        "the steps go with the erasure"
    );
    run.stop().await;
    env.finish().await;
}

async fn a_lost_answer_on_the_logs_call_is_sent_again(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "ada@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    drop_rate(&env, 1.0);
    env.closure("u1").await;
    eventually(SETTLE, "the logs call's answer is lost", || async {
        env.sandbox.stats().count(routes::DELETE_LOGS, 0) > 0
    })
    .await;
    drop_rate(&env, 0.0);
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert!(stats.count(routes::DELETE_LOGS, 200) >= 1, "{stats:?}");
    assert_eq!(stats.deleted_with_logs, 0);
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id), true, true, true)
    );
    run.stop().await;
    env.finish().await;
}

async fn a_lost_answer_on_the_user_delete_is_recorded_deleted(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // Without the logs call, the first mutating call of the closure is the
    // user delete: its answer is the one lost.
    let run = Running::with(&env, &[("USER_SYNC__GDPR__DELETE_WORKFLOW_LOGS", "false")]).await;
    env.signup("u1", "ada@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    drop_rate(&env, 1.0);
    env.closure("u1").await;
    eventually(SETTLE, "the user delete's answer is lost", || async {
        env.sandbox.stats().count(routes::DELETE, 0) > 0
    })
    .await;
    drop_rate(&env, 0.0);
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert!(stats.count(routes::DELETE, 404) >= 1, "retried: {stats:?}");
    assert_eq!(stats.route_total(routes::DELETE_LOGS), 0, "turned off");
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id), false, true, true),
        "the worker's own delete, not already_absent"
    );
    run.stop().await;
    env.finish().await;
}

async fn a_refused_key_between_the_two_calls_resumes_at_the_user(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "ada@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some("rotated-key".into()),
        ..FaultUpdate::default()
    });
    // What a worker that crashed right after the logs call leaves behind:
    // the closure a minute old, its logs deleted since.
    let at = |ago: chrono::Duration| {
        (chrono::Utc::now() - ago)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string()
    };
    env.execute(
        &format!(
            "INSERT INTO user_sync.erasure_steps
                 (host_user_id, embedded_user_id, logs_sent_at, logs_deleted_at)
             VALUES ('u1', '{id}', '{sent}', '{deleted}')",
            sent = at(chrono::Duration::seconds(31)),
            deleted = at(chrono::Duration::seconds(30)),
        ),
        0,
    )
    .await;
    let closure = env
        .rows::<(i64,)>(&format!(
            "INSERT INTO user_sync.events (host_user_id, kind, occurred_at)
         VALUES ('u1', 'account_closure', '{}') RETURNING id",
            at(chrono::Duration::seconds(60))
        ))
        .await[0]
        .0;
    eventually(SETTLE, "the user delete is refused", || async {
        env.sandbox.stats().count(routes::DELETE, 401) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.event_state(closure).await.0,
        "pending",
        "paused, not failed"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.erasure_steps WHERE user_sent_at IS NOT NULL")
            .await,
        0,
        "a refused delete did nothing: its intent is taken back"
    );
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(common::KEY.into()),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;

    let stats = env.sandbox.stats();
    assert_eq!(
        stats.route_total(routes::DELETE_LOGS),
        0,
        "resumed at the user"
    );
    assert_eq!(stats.count(routes::DELETE, 200), 1);
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id), true, true, true)
    );
    run.stop().await;
    env.finish().await;
}

async fn a_closure_is_never_held_up_by_earlier_failed_invalid_or_conflicted_events(
    backend: Backend,
) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::with(&env, &[("USER_SYNC__WORKER__MAX_ATTEMPTS", "1")]).await;
    env.signup("u1", "ada@example.com", None).await;
    env.signup("u2", "grace@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");

    let invalid = env.change("u1", "not an email", None).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(invalid).await.0, "invalid");
    let conflicted = env.change("u1", "grace@example.com", None).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(conflicted).await.0, "conflict");
    env.sandbox.update_faults(FaultUpdate {
        fail_rate: Some(1.0),
        ..FaultUpdate::default()
    });
    let failed = env.change("u1", "ada@lovelace.org", Some("Ada")).await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(failed).await.0, "failed");
    env.sandbox.update_faults(FaultUpdate {
        fail_rate: Some(0.0),
        ..FaultUpdate::default()
    });

    let closure = env.closure("u1").await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(closure).await.0, "applied");
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id.clone()), true, true, true)
    );
    assert!(!env.sandbox.users().iter().any(|u| u.user_id == id));
    run.stop().await;
    env.finish().await;
}

async fn a_closed_user_whose_create_was_never_confirmed_is_erased_too(backend: Backend) {
    let env = Env::start_on(
        backend,
        SandboxOptions {
            drop_rate: 1.0,
            ..SandboxOptions::default()
        },
    )
    .await;
    let run = Running::start(&env).await;
    env.signup("u1", "lost@example.com", Some("Lost Answer"))
        .await;
    eventually(SETTLE, "the create reaches the API", || async {
        env.sandbox.stats().creates > 0
    })
    .await;
    // The host closes the account while the create is unconfirmed.
    env.closure("u1").await;
    drop_rate(&env, 0.0);
    env.settle(SETTLE).await;

    let created = env.sandbox.created();
    assert_eq!(created.len(), 1, "one create");
    assert!(
        env.sandbox.users().is_empty(),
        "the worker's own user is gone"
    );
    assert_eq!(env.sandbox.stats().deleted_with_logs, 0);
    assert_eq!(
        proof(&env, "u1").await,
        (
            "deleted".into(),
            Some(created[0].user_id.clone()),
            true,
            true,
            true
        )
    );
    run.stop().await;
    env.finish().await;
}

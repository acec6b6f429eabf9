//! What operators switch and inspect without SQL: the deployment-wide
//! pause, on each backend, through the binary as an operator runs it.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::{Proc, Running, process_vars, run_once};
use common::{Backend, Env};
use user_sync_sandbox::SandboxOptions;

const SETTLE: Duration = Duration::from_secs(30);

on_each_backend!(
    a_pause_holds_every_event_pending_until_resume,
    failed_events_are_listed_looked_up_and_sent_again,
    log_fingerprints_are_keyed_with_the_deployments_key,
);

async fn a_pause_holds_every_event_pending_until_resume(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // Two processes on PostgreSQL; one works on a SQLite file.
    let first = Running::start(&env).await;
    let second = match backend {
        Backend::Postgres => Some(Running::start(&env).await),
        Backend::Sqlite => None,
    };
    env.signup("before", "before@example.com", None).await;
    env.settle(SETTLE).await;

    let paused = run_once(
        &env.vars(),
        &["pause", "--reason", "INC-1: bad emails", "--by", "ops"],
    )
    .await;
    assert!(paused.status.success(), "{paused}");
    assert!(paused.stdout.contains("INC-1: bad emails"), "{paused}");
    let events = env
        .held_while_paused(
            20,
            env.change("before", "before@example.com", Some("Renamed")),
        )
        .await;

    let status = run_once(&env.vars(), &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["paused"]["reason"], "INC-1: bad emails");
    assert_eq!(status["paused"]["paused_by"], "ops");
    assert!(status["paused"]["paused_at"].is_string(), "{status}");
    let table = run_once(&env.vars(), &["status"]).await;
    assert!(
        table.stdout.contains("by ops: INC-1: bad emails"),
        "{table}"
    );

    let resumed = run_once(&env.vars(), &["resume"]).await;
    assert!(resumed.status.success(), "{resumed}");
    assert!(resumed.stdout.starts_with("resumed"), "{resumed}");
    env.settle(SETTLE).await;
    for event in events {
        assert_eq!(env.event_state(event).await.0, "applied");
    }
    assert_eq!(env.sandbox.users().len(), 21);
    let status = run_once(&env.vars(), &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert!(status["paused"].is_null(), "{status}");
    let again = run_once(&env.vars(), &["resume"]).await;
    assert!(again.stdout.contains("not paused"), "{again}");

    first.stop().await;
    if let Some(second) = second {
        second.stop().await;
    }
    env.finish().await;
}

async fn failed_events_are_listed_looked_up_and_sent_again(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let attempts = [("USER_SYNC__WORKER__MAX_ATTEMPTS", "2")];
    let run = Running::with(&env, &attempts).await;
    env.signup("ok", "fine@example.com", Some("Fine Person"))
        .await;
    env.settle(SETTLE).await;
    env.fail_every_call(true);
    let failing = [
        env.signup("f1", "first@example.com", Some("First")).await,
        env.signup("f2", "second@example.com", None).await,
    ];
    env.settle(SETTLE).await;
    run.stop().await;
    for event in failing {
        assert_eq!(env.event_state(event).await.0, "failed");
    }

    let listed = run_once(
        &env.vars(),
        &["events", "--state", "failed", "--format", "json"],
    )
    .await;
    assert!(listed.status.success(), "{listed}");
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let hosts = common::host_user_ids(&rows);
    assert_eq!(hosts, ["f2", "f1"], "newest first: {rows}");
    assert!(rows[0]["reason"].is_string(), "a failure says why: {rows}");
    for text in ["first@example.com", "second@example.com", "First"] {
        assert!(!listed.stdout.contains(text), "{text} in {listed}");
    }
    let csv = run_once(
        &env.vars(),
        &["events", "--host-user-id", "ok", "--format", "csv"],
    )
    .await;
    assert_eq!(
        csv.stdout.lines().count(),
        2,
        "a header and ok's one event: {csv}"
    );
    let since = run_once(&env.vars(), &["events", "--since", "2999-01-01T00:00:00Z"]).await;
    assert!(since.stdout.starts_with("no events"), "{since}");
    let bad = run_once(&env.vars(), &["events", "--since", "yesterday"]).await;
    assert_eq!(bad.status.code(), Some(2), "{bad}");

    let shown = run_once(&env.vars(), &["show", "ok"]).await;
    assert!(shown.status.success(), "{shown}");
    assert!(shown.stdout.contains("f***@e***.com"), "masked: {shown}");
    assert!(!shown.stdout.contains("fine@example.com"), "{shown}");
    let id = env.embedded_id("ok").await.expect("synced");
    assert!(shown.stdout.contains(&id), "{shown}");
    let revealed = run_once(&env.vars(), &["show", "ok", "--reveal", "--format", "json"]).await;
    let record: serde_json::Value = serde_json::from_str(&revealed.stdout).expect("JSON");
    assert_eq!(record["mapping"]["username"], "fine@example.com");
    assert_eq!(record["mapping"]["embedded_user_id"], id.as_str());
    assert_eq!(record["events"].as_array().map(Vec::len), Some(1));
    let unknown = run_once(&env.vars(), &["show", "nobody"]).await;
    assert!(unknown.stdout.contains("has not acted on it"), "{unknown}");

    env.fail_every_call(false);
    let nothing = run_once(&env.vars(), &["retry"]).await;
    assert_eq!(nothing.status.code(), Some(2), "{nothing}");
    let retried = run_once(&env.vars(), &["retry", "--failed"]).await;
    assert!(retried.status.success(), "{retried}");
    assert_eq!(retried.stdout.trim(), "2 events back to pending");
    let pending = run_once(
        &env.vars(),
        &["events", "--state", "pending", "--format", "json"],
    )
    .await;
    assert!(pending.status.success(), "{pending}");
    let rows: serde_json::Value = serde_json::from_str(&pending.stdout).expect("JSON");
    let hosts = common::host_user_ids(&rows);
    assert_eq!(
        hosts,
        ["f2", "f1"],
        "the retried ones, newest first: {rows}"
    );
    let run = Running::with(&env, &attempts).await;
    env.settle(SETTLE).await;
    for event in failing {
        assert_eq!(env.event_state(event).await.0, "applied");
    }
    assert!(env.embedded_id("f1").await.is_some());
    run.stop().await;
    let again = run_once(&env.vars(), &["retry", "ok", "f1"]).await;
    assert_eq!(again.stdout.trim(), "2 events back to pending", "{again}");
    env.finish().await;
}

/// The fingerprint a worker logs for a username is the HMAC under the key
/// `migrate` made for the deployment: a plain digest of the email does not
/// find it, and `log.fingerprint_key` replaces the key.
async fn log_fingerprints_are_keyed_with_the_deployments_key(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let keys: Vec<(String,)> = env
        .rows("SELECT fingerprint_key FROM user_sync.deployment")
        .await;
    assert_eq!(keys.len(), 1, "migrate made one key");
    let key = &keys[0].0;
    assert!(
        key.len() >= 64,
        "a long random key: {} characters",
        key.len()
    );
    let migrated = run_once(&env.vars(), &["migrate"]).await;
    assert!(migrated.status.success(), "{migrated}");
    let again: Vec<(String,)> = env
        .rows("SELECT fingerprint_key FROM user_sync.deployment")
        .await;
    assert_eq!(&again[0].0, key, "migrating again keeps the key");

    let conflicted = async |vars: std::collections::HashMap<String, String>, n: usize| {
        let mut worker = Proc::spawn(&vars, &["run"]);
        worker.ready().await;
        env.signup(&format!("a{n}"), "same.person@example.com", None)
            .await;
        env.settle(SETTLE).await;
        env.signup(&format!("b{n}"), "same.person@example.com", None)
            .await;
        env.settle(SETTLE).await;
        let log = worker.kill().await;
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["message"] == "username conflict reported")
            .and_then(|line| line["username_fingerprint"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no conflict line in:\n{log}"))
    };
    let logged = conflicted(process_vars(&env), 1).await;
    let username = "same.person@example.com";
    assert_eq!(
        logged,
        user_sync::domain::keyed_fingerprint(key.as_bytes(), username)
    );
    let mut vars = process_vars(&env);
    vars.insert("USER_SYNC__LOG__FINGERPRINT_KEY".into(), "rotated".into());
    // a1 holds the username already: b2 conflicts with it too.
    let rotated = conflicted(vars, 2).await;
    assert_eq!(
        rotated,
        user_sync::domain::keyed_fingerprint(b"rotated", username)
    );
    assert_ne!(rotated, logged);
    env.finish().await;
}

/// A part of `run` that stops for good stops the process, non-zero, with
/// one line naming it and what to do: here the worker's tables dropped
/// under a running worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_tables_are_dropped_exits_saying_to_migrate() {
    let env = Env::start(SandboxOptions::default()).await;
    let mut worker = Proc::spawn(&process_vars(&env), &["run"]);
    worker.ready().await;
    env.signup("before", "before@example.com", None).await;
    env.settle(SETTLE).await;
    sqlx::query("DROP SCHEMA user_sync CASCADE")
        .execute(env.pg())
        .await
        .expect("drop the worker's schema");
    let (status, log) = worker.exits_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(last.contains("the dispatcher stopped"), "{log}");
    assert!(last.contains("run `user-sync migrate`"), "{log}");
    env.finish().await;
}

//! What operators switch and inspect without SQL: the deployment-wide
//! pause, on each backend, through the binary as an operator runs it.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::{Running, run_once};
use common::{Backend, Env};
use user_sync_sandbox::SandboxOptions;

const SETTLE: Duration = Duration::from_secs(30);
/// A pause stops every process's calls within a second.
const PAUSE_TAKES: Duration = Duration::from_secs(1);

on_each_backend!(a_pause_holds_every_event_pending_until_resume);

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
    tokio::time::sleep(PAUSE_TAKES).await;
    let requests = env.sandbox.stats().total_requests;
    let mut events = Vec::new();
    for i in 0..20 {
        events.push(
            env.signup(&format!("u{i}"), &format!("u{i}@example.com"), None)
                .await,
        );
    }
    env.change("before", "before@example.com", Some("Renamed"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.sandbox.stats().total_requests,
        requests,
        "no API call while paused"
    );
    assert_eq!(env.pending().await, 21, "every event waits, none failed");
    let attempts = env
        .scalar("SELECT CAST(coalesce(sum(attempts), 0) AS BIGINT) FROM user_sync.events")
        .await;
    assert_eq!(attempts, 0, "a pause uses no attempt");

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

//! Reconciliation, end to end on each backend: listing conflicts, an
//! operator's adopt, retry and ignore (through the binary, as an operator
//! runs them), and conflicts that resolve themselves once their cause goes.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::{Running, run_once};
use common::{Backend, Env, KEY, client_of, eventually};
use user_sync::domain::EmbeddedUserId;
use user_sync_sandbox::{FaultUpdate, IdFormat, SandboxOptions};

const SETTLE: Duration = Duration::from_secs(20);

on_each_backend!(
    conflicts_are_listed_by_status_in_each_format,
    adopt_links_the_holder_and_brings_its_name_in_line,
    adopt_is_refused_for_a_username_another_host_user_holds,
    an_unconfirmed_create_is_adopted_by_an_operator,
    retry_records_the_attempt_then_resolves_once_the_username_is_free,
    ignore_keeps_the_conflict_closed_until_a_new_email,
    a_conflict_is_moot_once_the_holder_closes,
    a_conflict_is_moot_once_the_holder_changes_email,
    a_conflict_is_moot_once_the_outside_holder_is_deleted,
);

/// The one open conflict of `host`: (id, reason).
async fn open_conflict_of(env: &Env, host: &str) -> (i64, String) {
    let rows: Vec<(i64, String)> = env
        .rows(&format!(
            "SELECT id, reason FROM user_sync.conflicts
             WHERE host_user_id = '{host}' AND status = 'open'"
        ))
        .await;
    assert_eq!(rows.len(), 1, "one open conflict of {host}: {rows:?}");
    rows.into_iter().next().expect("one row")
}

/// How a conflict ended: (status, resolution, resolved_by, note).
type Ending = (String, Option<String>, Option<String>, Option<String>);

/// How conflict `id` ended.
async fn ending_of(env: &Env, id: i64) -> Ending {
    let rows: Vec<Ending> = env
        .rows(&format!(
            "SELECT status, resolution, resolved_by, note FROM user_sync.conflicts WHERE id = {id}"
        ))
        .await;
    rows.into_iter().next().expect("the conflict exists")
}

async fn checks_of(env: &Env, id: i64) -> i64 {
    env.scalar(&format!(
        "SELECT CAST(checks AS BIGINT) FROM user_sync.conflicts WHERE id = {id}"
    ))
    .await
}

async fn resolve(env: &Env, id: i64, args: &[&str]) -> common::process::Finished {
    let id = id.to_string();
    let mut all = vec!["conflicts", "resolve", id.as_str()];
    all.extend_from_slice(args);
    run_once(&env.vars(), &all).await
}

async fn conflicts_are_listed_by_status_in_each_format(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    env.sandbox.insert_user("outside@example.com", None);
    let run = Running::start(&env).await;
    env.signup("a", "same@example.com", None).await;
    env.settle(SETTLE).await;
    env.signup("b", "same@example.com", None).await;
    env.signup("c", "outside@example.com", Some("=cmd|' /C calc'!A0"))
        .await;
    env.settle(SETTLE).await;
    run.stop().await;
    let (ignored, _) = open_conflict_of(&env, "b").await;
    let done = resolve(&env, ignored, &["--ignore", "--by", "alice"]).await;
    assert!(done.status.success(), "{done}");

    let open = run_once(&env.vars(), &["conflicts", "--format", "json"]).await;
    assert!(open.status.success(), "{open}");
    let rows: serde_json::Value = serde_json::from_str(&open.stdout).expect("JSON");
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "only c's conflict is open: {rows:?}");
    for key in [
        "id",
        "host_user_id",
        "username",
        "reason",
        "status",
        "resolution",
        "holder_host_user_id",
        "holder_embedded_user_id",
        "detected_at",
        "resolved_at",
    ] {
        assert!(rows[0].get(key).is_some(), "{key} is in {}", rows[0]);
    }
    assert_eq!(rows[0]["host_user_id"], "c");
    assert_eq!(rows[0]["username"], "outside@example.com");
    assert_eq!(rows[0]["reason"], "taken_in_embedded");

    let resolved = run_once(
        &env.vars(),
        &["conflicts", "--status", "resolved", "--format", "json"],
    )
    .await;
    let rows: serde_json::Value = serde_json::from_str(&resolved.stdout).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(rows[0]["host_user_id"], "b");
    assert_eq!(rows[0]["resolution"], "ignored");
    assert!(rows[0]["resolved_at"].is_string(), "{rows}");

    let all = run_once(
        &env.vars(),
        &["conflicts", "--status", "all", "--format", "csv"],
    )
    .await;
    assert!(all.status.success(), "{all}");
    let mut csv = csv::Reader::from_reader(all.stdout.as_bytes());
    let header = csv.headers().expect("a header").clone();
    assert_eq!(&header[0], "id");
    assert_eq!(csv.records().count(), 2, "{}", all.stdout);

    let table = run_once(&env.vars(), &["conflicts"]).await;
    assert!(table.status.success(), "{table}");
    assert!(table.stdout.starts_with("ID "), "{}", table.stdout);
    assert!(
        table.stdout.contains("outside@example.com"),
        "{}",
        table.stdout
    );
    assert!(
        !table.stdout.contains("same@example.com"),
        "{}",
        table.stdout
    );
    env.finish().await;
}

async fn adopt_links_the_holder_and_brings_its_name_in_line(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let held = env
        .sandbox
        .insert_user("held@example.com", Some("Old Name"));
    let run = Running::start(&env).await;
    env.signup("h", "held@example.com", Some("New Name")).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let (id, reason) = open_conflict_of(&env, "h").await;
    assert_eq!(reason, "taken_in_embedded");
    let puts_before = env.sandbox.stats().route_total("PUT /users/{id}");

    let done = resolve(
        &env,
        id,
        &["--adopt", "--by", "alice", "--note", "ticket 12"],
    )
    .await;
    assert!(done.status.success(), "{done}");
    assert!(done.stdout.contains(&held), "{done}");

    assert_eq!(env.embedded_id("h").await, Some(held.clone()));
    assert_eq!(
        ending_of(&env, id).await,
        (
            "resolved".into(),
            Some("adopted".into()),
            Some("alice".into()),
            Some("ticket 12".into())
        )
    );
    assert_eq!(
        env.sandbox.stats().route_total("PUT /users/{id}"),
        puts_before + 1,
        "one PUT brings the name in line"
    );
    let user = env.sandbox.users().into_iter().find(|u| u.user_id == held);
    assert_eq!(user.and_then(|u| u.full_name).as_deref(), Some("New Name"));
    assert_eq!(env.sandbox.users().len(), 1, "no second user was made");

    // The adopted user is the host user's from now on: a change updates it,
    // and nothing reports the conflict again.
    let run = Running::start(&env).await;
    env.change("h", "held@example.com", Some("Newer Name"))
        .await;
    env.settle(SETTLE).await;
    run.stop().await;
    assert!(env.open_conflicts().await.is_empty());
    let user = env.sandbox.users().into_iter().find(|u| u.user_id == held);
    assert_eq!(
        user.and_then(|u| u.full_name).as_deref(),
        Some("Newer Name")
    );

    let again = resolve(&env, id, &["--adopt"]).await;
    assert_eq!(again.status.code(), Some(1), "{again}");
    assert!(again.stderr.contains("already resolved"), "{again}");
    env.finish().await;
}

async fn adopt_is_refused_for_a_username_another_host_user_holds(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("a", "same@example.com", None).await;
    env.settle(SETTLE).await;
    env.signup("b", "same@example.com", None).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let (id, reason) = open_conflict_of(&env, "b").await;
    assert_eq!(reason, "taken_by_host_user");

    let refused = resolve(&env, id, &["--adopt"]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused}");
    assert!(
        refused.stderr.contains("never given to two host users"),
        "{refused}"
    );
    assert_eq!(
        refused.stderr.trim().lines().count(),
        1,
        "one line: {refused}"
    );
    assert_eq!(ending_of(&env, id).await.0, "open");
    assert_eq!(env.embedded_id("b").await, None);

    let unknown = resolve(&env, id + 1000, &["--ignore"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown}");
    let neither = run_once(&env.vars(), &["conflicts", "resolve", "1"]).await;
    assert_eq!(
        neither.status.code(),
        Some(2),
        "an action is required: {neither}"
    );
    env.finish().await;
}

async fn retry_records_the_attempt_then_resolves_once_the_username_is_free(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let held = env.sandbox.insert_user("held@example.com", None);
    let run = Running::start(&env).await;
    env.signup("h", "held@example.com", Some("H")).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let (id, _) = open_conflict_of(&env, "h").await;
    let checks = checks_of(&env, id).await;

    let still = resolve(&env, id, &["--retry", "--by", "bob"]).await;
    assert_eq!(still.status.code(), Some(1), "{still}");
    assert!(still.stdout.contains("still open"), "{still}");
    assert_eq!(ending_of(&env, id).await.0, "open");
    assert_eq!(
        checks_of(&env, id).await,
        checks + 2,
        "the request and the attempt"
    );

    // The operator frees the username in Embedded.
    let api = client_of(&env.sandbox, KEY, None);
    let held_id = EmbeddedUserId::parse(&held).expect("an id");
    api.delete_user(&held_id)
        .await
        .expect("the holder is deleted");
    let done = resolve(&env, id, &["--retry", "--by", "bob", "--note", "freed"]).await;
    assert!(done.status.success(), "{done}");
    let ending = ending_of(&env, id).await;
    assert_eq!(
        ending,
        (
            "resolved".into(),
            Some("retried".into()),
            Some("bob".into()),
            Some("freed".into())
        )
    );
    let mine = env.embedded_id("h").await.expect("h is synced");
    assert_ne!(mine, held);
    env.finish().await;
}

async fn ignore_keeps_the_conflict_closed_until_a_new_email(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    env.sandbox.insert_user("held@example.com", None);
    env.sandbox.insert_user("also-held@example.com", None);
    let run = Running::start(&env).await;
    env.signup("h", "held@example.com", None).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let (id, _) = open_conflict_of(&env, "h").await;
    let done = resolve(&env, id, &["--ignore", "--note", "test account"]).await;
    assert!(done.status.success(), "{done}");
    assert_eq!(ending_of(&env, id).await.1.as_deref(), Some("ignored"));

    let run = Running::start(&env).await;
    env.change("h", "HELD@example.com", Some("Renamed")).await;
    env.settle(SETTLE).await;
    assert!(
        env.open_conflicts().await.is_empty(),
        "the same email does not reopen it"
    );
    env.change("h", "also-held@example.com", None).await;
    env.settle(SETTLE).await;
    run.stop().await;
    let conflicts = env.open_conflicts().await;
    assert_eq!(conflicts.len(), 1, "a new email does: {conflicts:?}");
    assert_eq!(conflicts[0].1, "also-held@example.com");
    assert_eq!(env.embedded_id("h").await, None);
    env.finish().await;
}

/// `b` waits for `a`'s username; `release` makes `a` let it go; `b` is then
/// synced at once, its conflict `moot`.
async fn moot_once_released(backend: Backend, release: impl AsyncFnOnce(&Env)) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("a", "same@example.com", None).await;
    env.settle(SETTLE).await;
    env.signup("b", "same@example.com", Some("B")).await;
    env.settle(SETTLE).await;
    let (id, reason) = open_conflict_of(&env, "b").await;
    assert_eq!(reason, "taken_by_host_user");

    release(&env).await;
    eventually(SETTLE, "b is synced", || async {
        env.embedded_id("b").await.is_some()
    })
    .await;
    let (status, resolution, by, _) = ending_of(&env, id).await;
    assert_eq!(
        (status.as_str(), resolution.as_deref(), by.as_deref()),
        ("resolved", Some("moot"), Some("worker"))
    );
    let b = env
        .sandbox
        .users()
        .into_iter()
        .find(|u| u.username == "same@example.com");
    assert_eq!(
        b.map(|u| u.user_id),
        env.embedded_id("b").await,
        "b holds the username in Embedded"
    );
    run.stop().await;
    env.finish().await;
}

async fn a_conflict_is_moot_once_the_holder_closes(backend: Backend) {
    moot_once_released(backend, async |env| {
        env.closure("a").await;
    })
    .await;
}

async fn a_conflict_is_moot_once_the_holder_changes_email(backend: Backend) {
    moot_once_released(backend, async |env| {
        env.change("a", "a-new@example.com", None).await;
    })
    .await;
}

async fn a_conflict_is_moot_once_the_outside_holder_is_deleted(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let held = env.sandbox.insert_user("held@example.com", None);
    let run = Running::with(
        &env,
        &[("USER_SYNC__CONFLICTS__RECHECK_INTERVAL_MS", "300")],
    )
    .await;
    env.signup("h", "held@example.com", None).await;
    env.settle(SETTLE).await;
    let (id, _) = open_conflict_of(&env, "h").await;
    // Still held: rechecked, still open.
    eventually(SETTLE, "a recheck looked the username up", || async {
        env.sandbox.stats().route_total("GET /users/{id}") >= 2
    })
    .await;
    assert_eq!(ending_of(&env, id).await.0, "open");

    let api = client_of(&env.sandbox, KEY, None);
    let held_id = EmbeddedUserId::parse(&held).expect("an id");
    api.delete_user(&held_id)
        .await
        .expect("the holder is deleted");
    eventually(SETTLE, "h is synced", || async {
        env.embedded_id("h").await.is_some()
    })
    .await;
    let (status, resolution, by, _) = ending_of(&env, id).await;
    assert_eq!(
        (status.as_str(), resolution.as_deref(), by.as_deref()),
        ("resolved", Some("moot"), Some("worker"))
    );
    run.stop().await;
    env.finish().await;
}

/// A create whose answer was lost, its user's id carrying no time: nothing
/// proves the user the worker's own, so an operator decides, and adopts it.
async fn an_unconfirmed_create_is_adopted_by_an_operator(backend: Backend) {
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
    env.signup("u1", "uuid@example.com", Some("No Time")).await;
    eventually(SETTLE, "the create reaches the API", || async {
        env.sandbox.stats().creates > 0
    })
    .await;
    env.sandbox.update_faults(FaultUpdate {
        drop_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;
    run.stop().await;
    let (id, reason) = open_conflict_of(&env, "u1").await;
    assert_eq!(reason, "unconfirmed_create");
    let made = env.sandbox.users();
    assert_eq!(made.len(), 1);

    let done = resolve(&env, id, &["--adopt", "--by", "carol"]).await;
    assert!(done.status.success(), "{done}");
    assert_eq!(env.embedded_id("u1").await, Some(made[0].user_id.clone()));
    assert_eq!(ending_of(&env, id).await.1.as_deref(), Some("adopted"));
    assert_eq!(
        env.sandbox.stats().route_total("PUT /users/{id}"),
        0,
        "the name was already in line"
    );

    // Adopted, it is the host user's: a closure now deletes it.
    let run = Running::start(&env).await;
    env.closure("u1").await;
    env.settle(SETTLE).await;
    run.stop().await;
    assert!(env.sandbox.users().is_empty(), "the adopted user is erased");
    env.finish().await;
}

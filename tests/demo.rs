//! `user-sync demo` as a newcomer runs it: the real binary, nothing but a
//! folder, then its kept database checked independently of its summary.

mod common;

use std::collections::HashMap;

use common::process::{run_once, user_sync};

/// Runs `user-sync demo` with `args` to a successful end whose checks all
/// passed; returns what it printed.
async fn demo(args: &[&str]) -> String {
    let mut command = vec!["demo"];
    command.extend_from_slice(args);
    // A hang guard, not a speed check: the demo prints its own elapsed
    // time, and speed is measured, never asserted in a test.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        user_sync(&HashMap::new(), &command).output(),
    )
    .await
    .expect("the demo finishes")
    .expect("the binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    stdout
}

/// The demo's story, checked against the database it leaves behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_syncs_every_account_reports_every_conflict_and_erases_every_closure() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let folder = dir.path().to_str().expect("a UTF-8 path");
    let stdout = demo(&["--users", "600", "--dir", folder]).await;
    for line in [
        "Embedded users created",
        "Embedded users updated",
        "Embedded users deleted",
        "429s absorbed",
        "conflicts reported",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }

    // The kept database says the same, whatever the summary says.
    let url = format!("sqlite:{}", dir.path().join("demo.db").display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("the kept database");
    let unaccounted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts a
         WHERE a.closed_at IS NULL
           AND NOT EXISTS (SELECT 1 FROM user_sync_users u
                           WHERE u.host_user_id = CAST(a.id AS TEXT) AND u.state = 'synced')
           AND NOT EXISTS (SELECT 1 FROM user_sync_conflicts c
                           WHERE c.host_user_id = CAST(a.id AS TEXT) AND c.status = 'open')",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        unaccounted, 0,
        "an open account without a user or a conflict"
    );
    let open: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts WHERE closed_at IS NULL")
        .fetch_one(&pool)
        .await
        .expect("count");
    let synced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_sync_users WHERE state = 'synced'")
            .fetch_one(&pool)
            .await
            .expect("count");
    let conflicts: Vec<(String, String)> = sqlx::query_as(
        "SELECT host_user_id, reason FROM user_sync_conflicts WHERE status = 'open' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .expect("conflicts");
    // 4 duplicated emails and 3 held in Embedded among the historical
    // accounts, 2 signups with a taken email in the live burst.
    assert_eq!(conflicts.len(), 9, "{conflicts:?}");
    assert_eq!(
        conflicts
            .iter()
            .filter(|c| c.1 == "taken_in_embedded")
            .count(),
        3
    );
    assert_eq!(synced + conflicts.len() as i64, open);
    // Closed during the burst: deleted, erased, no personal data left.
    let closed_live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_sync_events WHERE kind = 'account_closure'")
            .fetch_one(&pool)
            .await
            .expect("count");
    let deleted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_sync_erasures e JOIN user_sync_users u USING (host_user_id)
         WHERE e.outcome = 'deleted' AND u.state = 'erased'
           AND u.username IS NULL AND u.full_name IS NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert!(closed_live > 0);
    assert_eq!(deleted, closed_live);
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_sync_events e
         WHERE e.host_user_id IN (SELECT host_user_id FROM user_sync_erasures)
           AND (e.email IS NOT NULL OR e.full_name IS NOT NULL)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(
        leftovers, 0,
        "a closed user's email or name is still in the outbox"
    );

    // Usernames are masked in the summary.
    let emails: Vec<String> = sqlx::query_scalar("SELECT lower(trim(email)) FROM accounts")
        .fetch_all(&pool)
        .await
        .expect("emails");
    for email in &emails {
        assert!(
            !stdout.to_lowercase().contains(email),
            "the summary shows {email}"
        );
    }
    pool.close().await;

    // --dir keeps it for `status` and `conflicts`.
    let mut vars = HashMap::new();
    vars.insert("DATABASE_URL".to_owned(), url.clone());
    let status = run_once(&vars, &["status", "--json"]).await;
    assert!(status.status.success(), "{status}");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["open_conflicts"], 9);
    assert_eq!(status["pending_events"], 0);
    let listed = run_once(&vars, &["conflicts", "--format", "csv"]).await;
    assert!(listed.status.success(), "{listed}");
    assert_eq!(listed.stdout.lines().count(), 10, "{listed}");
}

/// On the oldest version, which lacks a batch create, a lookup by email and
/// the logs call: the same story, and the same checks pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_on_forge_too() {
    let stdout = demo(&["--users", "200", "--api-version", "2021-12"]).await;
    assert!(stdout.contains("spoken in version 2021-12"), "{stdout}");
    assert!(stdout.contains("has no batch create"), "{stdout}");
    let version = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("API version"))
        .expect("the version in the summary");
    assert!(version.trim_end().ends_with("2021-12"), "{version}");

    let refused = run_once(&HashMap::new(), &["demo", "--api-version", "2022-01"]).await;
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert!(
        refused
            .stderr
            .contains("2025-09, 2024-03, 2023-12, 2021-12"),
        "{refused}"
    );
}

//! GDPR erasure end to end, on both backends: an account closure deletes
//! the user's workflow logs, then the user, each call's intent recorded
//! first so that the proof in `user_sync.erasures` stays true across lost
//! answers, server errors, a refused key and a crash between the calls.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::{Proc, Running, process_vars, run_once, user_sync};
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
    erase_files_requests_and_waits_for_their_proof,
    erase_reads_ids_from_a_file_and_from_standard_input,
    erase_wait_exits_1_while_pending_and_2_on_bad_input,
    the_proof_exports_as_csv_and_json_without_personal_data,
    an_overdue_request_is_alerted_once_and_shown_in_status_and_metrics,
    steps_of_an_erasure_a_later_signup_called_off_are_done_again,
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

/// The time `seconds` ago as both backends write it.
fn ago(seconds: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(seconds))
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The steps an erasure that stopped after deleting the logs of `id` leaves
/// behind: its logs call sent 31 s ago and answered 30 s ago.
async fn logs_deleted_half_a_minute_ago(env: &Env, id: &str) {
    env.execute(
        &format!(
            "INSERT INTO user_sync.erasure_steps
                 (host_user_id, embedded_user_id, logs_sent_at, logs_deleted_at)
             VALUES ('u1', '{id}', '{sent}', '{deleted}')",
            sent = ago(31),
            deleted = ago(30),
        ),
        0,
    )
    .await;
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
    let skipped = env
        .pairs("SELECT logs_skipped, NULL FROM user_sync.erasures")
        .await;
    assert_eq!(skipped, vec![(Some("disabled".to_owned()), None)]);
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
    logs_deleted_half_a_minute_ago(&env, &id).await;
    let closure = env
        .rows::<(i64,)>(&format!(
            "INSERT INTO user_sync.events (host_user_id, kind, occurred_at)
         VALUES ('u1', 'account_closure', '{}') RETURNING id",
            ago(60)
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
    // What a refusal of the API may leave: a reason that echoes the name.
    env.execute(
        &format!(
            "UPDATE user_sync.events SET reason = 'refused: fullName \"Ada Lovelace\" is not allowed'
             WHERE id = {failed}"
        ),
        0,
    )
    .await;

    let closure = env.closure("u1").await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(closure).await.0, "applied");
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id.clone()), true, true, true)
    );
    assert!(!env.sandbox.users().iter().any(|u| u.user_id == id));
    let reasons: Vec<(Option<String>,)> = env
        .rows("SELECT reason FROM user_sync.events WHERE host_user_id = 'u1'")
        .await;
    for (reason,) in &reasons {
        assert!(
            !reason.as_deref().unwrap_or_default().contains("Ada"),
            "an erased user's reason keeps a name: {reasons:?}"
        );
    }
    assert!(
        reasons
            .iter()
            .any(|(r,)| r.as_deref() == Some("cleared on erasure")),
        "{reasons:?}"
    );
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

async fn erase_files_requests_and_waits_for_their_proof(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("known", "known@example.com", Some("Known Person"))
        .await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("known").await.expect("synced");

    let erased = run_once(
        &env.vars(),
        &["erase", "known", "never-seen", "--wait", "--timeout", "30"],
    )
    .await;
    assert!(erased.status.success(), "{erased}");
    assert!(erased.stdout.contains("known: requested"), "{erased}");
    let lines: Vec<&str> = erased.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("known ") && l.contains(&id) && l.contains(" deleted ")),
        "{erased}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("never-seen ") && l.contains("never_created")),
        "{erased}"
    );
    for secret in ["known@", "Known Person"] {
        assert!(!erased.stdout.contains(secret), "{secret:?}: {erased}");
    }
    assert!(env.sandbox.users().is_empty());
    assert_eq!(env.sandbox.stats().deleted_with_logs, 0);
    assert_eq!(proof(&env, "known").await.0, "deleted");
    assert_eq!(proof(&env, "never-seen").await.0, "never_created");

    // Erased already: answered with its record, nothing filed again.
    let again = run_once(&env.vars(), &["erase", "known", "--wait"]).await;
    assert!(again.status.success(), "{again}");
    assert!(again.stdout.contains("known: already erased"), "{again}");
    assert!(again.stdout.contains(&id), "its record: {again}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.events WHERE kind = 'account_closure'")
            .await,
        2,
        "no new closure"
    );
    run.stop().await;
    env.finish().await;
}

async fn erase_reads_ids_from_a_file_and_from_standard_input(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let file = dir.path().join("requests.txt");
    std::fs::write(&file, "from-file-1\n\n  from-file-2  \n").expect("write the list");
    let path = file.to_str().expect("a UTF-8 path");
    let from_file = run_once(&env.vars(), &["erase", "--file", path, "--wait"]).await;
    assert!(from_file.status.success(), "{from_file}");

    let mut child = user_sync(&env.vars(), &["erase", "--file", "-", "--wait"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("its stdin");
        stdin.write_all(b"from-stdin\n").await.expect("write ids");
    }
    let output = tokio::time::timeout(SETTLE, child.wait_with_output())
        .await
        .expect("erase --file - finishes")
        .expect("its output");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let hosts = env
        .pairs("SELECT host_user_id, outcome FROM user_sync.erasures ORDER BY host_user_id")
        .await;
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        hosts,
        vec![
            (some("from-file-1"), some("never_created")),
            (some("from-file-2"), some("never_created")),
            (some("from-stdin"), some("never_created")),
        ]
    );
    run.stop().await;
    env.finish().await;
}

async fn erase_wait_exits_1_while_pending_and_2_on_bad_input(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // No worker runs: the request stays pending.
    let waited = run_once(&env.vars(), &["erase", "stuck", "--wait", "--timeout", "1"]).await;
    assert_eq!(waited.status.code(), Some(1), "{waited}");
    assert!(waited.stdout.contains("still pending"), "{waited}");
    let pending = run_once(&env.vars(), &["erasures", "--pending", "--format", "json"]).await;
    assert!(pending.status.success(), "{pending}");
    let rows: serde_json::Value = serde_json::from_str(&pending.stdout).expect("JSON");
    assert_eq!(rows[0]["host_user_id"], "stuck", "{pending}");
    assert_eq!(rows[0]["overdue"], false);
    // Filed again while pending: the same request, not a second one.
    let twice = run_once(&env.vars(), &["erase", "stuck"]).await;
    assert!(twice.stdout.contains("already requested"), "{twice}");
    assert_eq!(env.scalar("SELECT count(*) FROM user_sync.events").await, 1);

    for args in [
        vec!["erase"],
        vec!["erase", "  "],
        vec!["erase", "--file", "/no/such/file"],
        vec!["erase", "bad\u{7}id"],
        vec!["erasures", "--since", "yesterday"],
    ] {
        let bad = run_once(&env.vars(), &args).await;
        assert_eq!(bad.status.code(), Some(2), "{args:?}: {bad}");
    }
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.events").await,
        1,
        "bad input files nothing"
    );
    env.finish().await;
}

async fn the_proof_exports_as_csv_and_json_without_personal_data(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "ada@example.com", Some("Ada Lovelace"))
        .await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    env.closure("u1").await;
    env.closure("u2").await;
    env.settle(SETTLE).await;
    run.stop().await;

    let csv = run_once(&env.vars(), &["erasures", "--format", "csv"]).await;
    assert!(csv.status.success(), "{csv}");
    let mut lines = csv.stdout.lines();
    assert_eq!(
        lines.next(),
        Some(
            "host_user_id,embedded_user_id,outcome,requested_at,logs_deleted_at,\
             logs_skipped,user_deleted_at,completed_at"
        )
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2, "{csv}");
    let u1 = rows.iter().find(|r| r[0] == "u1").expect("u1's line");
    assert_eq!(&u1[1..3], [id.as_str(), "deleted"]);
    assert!(
        [u1[3], u1[4], u1[6], u1[7]]
            .iter()
            .all(|t| t.ends_with('Z') && t.contains('T')),
        "{u1:?}"
    );
    assert_eq!(u1[5], "", "the logs were not skipped");
    let u2 = rows.iter().find(|r| r[0] == "u2").expect("u2's line");
    assert_eq!(&u2[1..3], ["", "never_created"]);
    assert_eq!(&u2[4..7], ["", "", ""], "no step for a user never created");

    let json = run_once(
        &env.vars(),
        &["erasures", "--format", "json", "--host-user-id", "u1"],
    )
    .await;
    let records: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let records = records.as_array().expect("an array");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["embedded_user_id"], id.as_str());
    assert!(records[0]["logs_deleted_at"].is_string());
    let later = run_once(
        &env.vars(),
        &[
            "erasures",
            "--since",
            "2999-01-01T00:00:00Z",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(later.stdout.trim(), "[]", "{later}");
    let table = run_once(&env.vars(), &["erasures"]).await;
    for out in [&csv.stdout, &json.stdout, &table.stdout] {
        for secret in ["ada@", "Ada", "Lovelace"] {
            assert!(!out.contains(secret), "{secret:?} in {out}");
        }
    }
    env.finish().await;
}

async fn an_overdue_request_is_alerted_once_and_shown_in_status_and_metrics(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("late", "late@example.com", Some("Late Person"))
        .await;
    env.settle(SETTLE).await;
    run.stop().await;
    // The key refused: the closure waits, paused, past its alert.
    env.sandbox.update_faults(FaultUpdate {
        api_key: Some("rotated-key".into()),
        ..FaultUpdate::default()
    });
    env.closure("late").await;
    let mut vars = process_vars(&env);
    vars.insert("USER_SYNC__GDPR__ALERT_AFTER_S".into(), "1".into());
    vars.insert("USER_SYNC__GDPR__DEADLINE_S".into(), "2".into());
    let mut worker = Proc::spawn(&vars, &["run"]);
    let addr = worker.ready().await;
    eventually(SETTLE, "the overdue alert", || async {
        worker.log().contains("erasure_overdue")
    })
    .await;
    // Several more looks at the deadline: the alert is not repeated
    // within the hour.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts: Vec<String> = worker
        .log()
        .lines()
        .filter(|l| l.contains("erasure_overdue"))
        .map(str::to_owned)
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert: serde_json::Value = serde_json::from_str(&alerts[0]).expect("a JSON line");
    assert_eq!(alert["host_user_id"], "late", "{alert}");
    assert_eq!(alert["deadline_s"], 2, "{alert}");

    let status = run_once(&env.vars(), &["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("JSON");
    assert_eq!(status["pending_erasures"], 1, "{status}");
    assert!(
        status["oldest_pending_erasure_seconds"].as_f64() >= Some(1.0),
        "{status}"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("its text");
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("user_sync_erasure_oldest_pending_seconds"))
        .unwrap_or_else(|| panic!("no erasure gauge in {metrics}"));
    let seconds: f64 = gauge
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a value");
    assert!(seconds >= 1.0, "{gauge}");

    env.sandbox.update_faults(FaultUpdate {
        api_key: Some(common::KEY.into()),
        ..FaultUpdate::default()
    });
    env.settle(SETTLE).await;
    let (_, log) = worker.terminate(SETTLE).await;
    for secret in ["late@", "Late Person"] {
        assert!(!log.contains(secret), "{secret:?} in the worker's log");
    }
    assert_eq!(proof(&env, "late").await.0, "deleted");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.erasure_alerts")
            .await,
        0,
        "the alert's row goes with the erasure"
    );
    env.finish().await;
}

/// On SQLite, an erased user's email and name are not left in the file's
/// free space nor in its write-ahead log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_no_erased_value_in_free_pages_or_the_wal() {
    const EMAIL: &str = "erased.person.7q@example.com";
    const NAME: &str = "Erasedname Sevenq";
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", EMAIL, Some(NAME)).await;
    env.settle(SETTLE).await;
    env.change("u1", EMAIL, Some(NAME)).await;
    env.settle(SETTLE).await;
    let file = std::path::PathBuf::from(&env.db.name);
    let wal = std::path::PathBuf::from(format!("{}-wal", env.db.name));
    let holds = |needle: &str| {
        [&file, &wal].into_iter().any(|path| {
            std::fs::read(path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
    };
    assert!(holds(EMAIL), "the check sees the email while it is stored");

    // A reader's snapshot from before the closure keeps the WAL from being
    // truncated: the erasure is recorded, but not shown done until it is.
    let user_sync::storage::Database::Sqlite(pool) = &env.db_pool else {
        panic!("a SQLite test on PostgreSQL")
    };
    let mut reader = pool.begin().await.expect("a reader");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM user_sync_users")
        .fetch_one(&mut *reader)
        .await
        .expect("the reader's snapshot");
    assert_eq!(users, 1);
    let closure = env.closure("u1").await;
    eventually(SETTLE, "the erasure recorded", || async {
        env.scalar("SELECT count(*) FROM user_sync.erasures").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.event_state(closure).await.0, "pending");
    assert!(
        holds(EMAIL),
        "the old pages are in the WAL until it is truncated"
    );
    reader.rollback().await.expect("the reader ends");
    env.settle(SETTLE).await;
    assert_eq!(proof(&env, "u1").await.0, "deleted");
    for value in [EMAIL, NAME] {
        assert!(
            !holds(value),
            "{value:?} is still in the SQLite file or its WAL"
        );
    }
    run.stop().await;
    env.finish().await;
}

/// A closure whose erasure deleted the logs, then a signup before the user
/// went (the user lives on, and makes logs again), then a new closure:
/// the old steps are not this erasure's. Its logs are deleted again, and
/// its proof's times are its own, in order.
async fn steps_of_an_erasure_a_later_signup_called_off_are_done_again(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::start(&env).await;
    env.signup("u1", "ada@example.com", None).await;
    env.settle(SETTLE).await;
    let id = env.embedded_id("u1").await.expect("synced");
    // What the called-off erasure left: its logs deleted half a minute ago.
    logs_deleted_half_a_minute_ago(&env, &id).await;
    assert!(env.sandbox.workflow_logs(&id) > 0, "logs made since");

    env.closure("u1").await;
    env.settle(SETTLE).await;
    let stats = env.sandbox.stats();
    assert_eq!(stats.count(routes::DELETE_LOGS, 200), 1, "the logs again");
    assert_eq!(stats.deleted_with_logs, 0);
    assert_eq!(
        proof(&env, "u1").await,
        ("deleted".into(), Some(id), true, true, true)
    );
    run.stop().await;
    env.finish().await;
}

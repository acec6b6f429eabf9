//! Retention (`[retention]`): old finished rows go, what the worker still
//! needs stays, the host's inserts never wait on it; and the operators'
//! reads that must not grow with history read none of it.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use common::process::{Proc, process_vars, run_once};
use common::{Backend, Env, eventually};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use user_sync::config::RetentionSettings;
use user_sync::domain::{EventFilter, EventState};
use user_sync::ops::{PassOutcome, Removed, run_pass, run_retention};
use user_sync::storage::{
    Cursor, Database, PgStore, Reports, Retention, SqliteStore, Sweep, sweep_retention_in,
};
use user_sync_sandbox::SandboxOptions;

on_each_backend!(
    old_finished_rows_go_and_what_the_worker_needs_stays,
    one_process_runs_a_pass_at_a_time,
    a_running_worker_removes_old_events_and_status_says_so,
    the_hosts_inserts_go_through_while_retention_deletes,
);

/// A time `days` ago, as both backends store it and read it in SQL.
fn ago(days: f64) -> String {
    let at = Utc::now() - TimeDelta::milliseconds((days * 86_400_000.0) as i64);
    at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

fn retention_of(env: &Env) -> Arc<dyn Retention> {
    match &env.db_pool {
        Database::Postgres(pool) => Arc::new(PgStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqliteStore::new(pool.clone())),
    }
}

fn reports_of(env: &Env) -> Arc<dyn Reports> {
    match &env.db_pool {
        Database::Postgres(pool) => Arc::new(PgStore::new(pool.clone())),
        Database::Sqlite(pool) => Arc::new(SqliteStore::new(pool.clone())),
    }
}

/// An outbox row as the worker leaves it: `state`, finished `finished`
/// days ago (`None`: pending), occurred a minute before.
async fn event(
    env: &Env,
    host: Option<&str>,
    kind: &str,
    state: &str,
    finished: Option<f64>,
) -> i64 {
    let host = host.map_or_else(|| "NULL".to_owned(), |h| format!("'{h}'"));
    let occurred = ago(finished.unwrap_or(0.0) + 1.0 / 1440.0);
    let finished = finished.map_or_else(|| "NULL".to_owned(), |days| format!("'{}'", ago(days)));
    // A failed, invalid or conflict event says why, as the worker writes it.
    let reason = if ["failed", "invalid", "conflict"].contains(&state) {
        "'a reason'"
    } else {
        "NULL"
    };
    env.scalar(&format!(
        "INSERT INTO user_sync.events
             (host_user_id, kind, email, state, reason, occurred_at, available_at, finished_at)
         VALUES ({host}, '{kind}', 'someone@example.com', '{state}', {reason}, '{occurred}',
                 '{occurred}', {finished})
         RETURNING id"
    ))
    .await
}

async fn user(env: &Env, host: &str, last_event: i64) {
    env.execute(
        &format!(
            "INSERT INTO user_sync.users (host_user_id, state, last_event_id)
             VALUES ('{host}', 'synced', $1)"
        ),
        last_event,
    )
    .await;
}

async fn conflict(env: &Env, host: &str, event: i64, resolved: Option<(&str, f64)>) -> i64 {
    let (status, resolution, at) = match resolved {
        Some((resolution, days)) => (
            "resolved",
            format!("'{resolution}'"),
            format!("'{}'", ago(days)),
        ),
        None => ("open", "NULL".to_owned(), "NULL".to_owned()),
    };
    env.scalar(&format!(
        "INSERT INTO user_sync.conflicts
             (host_user_id, username, reason, event_id, status, resolution, resolved_at,
              detected_at)
         VALUES ('{host}', '{host}@example.com', 'taken_in_embedded', {event}, '{status}',
                 {resolution}, {at}, '{}')
         RETURNING id",
        ago(200.0)
    ))
    .await
}

async fn erasure(env: &Env, host: &str, days: f64) -> i64 {
    env.scalar(&format!(
        "INSERT INTO user_sync.erasures
             (host_user_id, event_id, outcome, requested_at, completed_at)
         VALUES ('{host}', (SELECT coalesce(max(id), 0) + 1000 FROM user_sync.erasures),
                 'never_created', '{t}', '{t}')
         RETURNING id",
        t = ago(days)
    ))
    .await
}

async fn delivery(env: &Env, delivered: Option<f64>, abandoned: Option<f64>) -> i64 {
    let at =
        |days: Option<f64>| days.map_or_else(|| "NULL".to_owned(), |d| format!("'{}'", ago(d)));
    env.scalar(&format!(
        "INSERT INTO user_sync.webhook_deliveries (type, payload, created_at, delivered_at, abandoned_at)
         VALUES ('event.failed', '{{}}', '{}', {}, {})
         RETURNING id",
        ago(40.0),
        at(delivered),
        at(abandoned)
    ))
    .await
}

/// The ids of `ids` still in `table`.
async fn still_there(env: &Env, table: &str, ids: &[i64]) -> Vec<i64> {
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    env.rows::<(i64,)>(&format!(
        "SELECT id FROM user_sync.{table} WHERE id IN ({list}) ORDER BY id"
    ))
    .await
    .into_iter()
    .map(|(id,)| id)
    .collect()
}

/// Makes the deployment's next pass due now; `full`: from the oldest event.
async fn due_now(env: &Env, full: bool) {
    let full = if full { ", full_pass_at = NULL" } else { "" };
    env.execute(
        &format!(
            "UPDATE user_sync.retention SET next_pass_at = '{}'{full}",
            ago(1.0)
        ),
        0,
    )
    .await;
}

async fn pass(env: &Env, settings: &RetentionSettings) -> Removed {
    let store = retention_of(env);
    match run_pass(store.as_ref(), settings, "test", &CancellationToken::new())
        .await
        .expect("a retention pass")
    {
        PassOutcome::Done(removed) => removed,
        other => panic!("the pass did not run to its end: {other:?}"),
    }
}

async fn old_finished_rows_go_and_what_the_worker_needs_stays(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let old = Some(8.0);
    // Host user a: two old events overtaken by a third, the newest, which
    // the worker acted on last.
    let a1 = event(&env, Some("a"), "signup", "applied", old).await;
    let a2 = event(&env, Some("a"), "profile_change", "superseded", old).await;
    let a3 = event(&env, Some("a"), "profile_change", "applied", old).await;
    user(&env, "a", a3).await;
    // b: the worker last acted on b1; two invalid events came after it.
    let b1 = event(&env, Some("b"), "signup", "applied", old).await;
    let b2 = event(&env, Some("b"), "profile_change", "invalid", old).await;
    let b3 = event(&env, Some("b"), "profile_change", "invalid", old).await;
    user(&env, "b", b1).await;
    // c: an event whose conflict is still open, one whose conflict was
    // resolved, both overtaken by an invalid event.
    let c1 = event(&env, Some("c"), "signup", "conflict", old).await;
    let c2 = event(&env, Some("c"), "signup", "conflict", old).await;
    let c3 = event(&env, Some("c"), "profile_change", "invalid", old).await;
    let open = conflict(&env, "c", c2, None).await;
    let moot = conflict(&env, "c", c1, Some(("moot", 100.0))).await;
    // d: a closure that failed, followed by an invalid event only: an
    // erasure still owed.
    let d1 = event(&env, Some("d"), "account_closure", "failed", old).await;
    let d2 = event(&env, Some("d"), "profile_change", "invalid", old).await;
    // e: a failed closure the user came back from (a later signup, then a
    // change): no erasure is owed; the signup goes only after the closure.
    let e1 = event(&env, Some("e"), "account_closure", "failed", old).await;
    let e2 = event(&env, Some("e"), "signup", "applied", old).await;
    let e3 = event(&env, Some("e"), "profile_change", "applied", old).await;
    user(&env, "e", e3).await;
    // f: an old event, then one pending for more than a week.
    let f1 = event(&env, Some("f"), "signup", "applied", old).await;
    let f2 = event(&env, Some("f"), "profile_change", "pending", None).await;
    env.execute(
        &format!(
            "UPDATE user_sync.events SET occurred_at = '{}' WHERE id = $1",
            ago(9.0)
        ),
        f2,
    )
    .await;
    // h: no host user at all; g: finished too recently. Written in the
    // order they occurred, as a host writes them (retention on PostgreSQL
    // walks the outbox by id, up to the first event too young to go).
    let h1 = event(&env, None, "signup", "invalid", old).await;
    let g1 = event(&env, Some("g"), "signup", "applied", Some(6.0)).await;
    let g2 = event(&env, Some("g"), "profile_change", "applied", Some(6.0)).await;
    let h2 = event(&env, None, "signup", "invalid", Some(1.0)).await;
    // Conflicts and erasures, and webhook deliveries.
    let ignored = conflict(&env, "i", 0, Some(("ignored", 100.0))).await;
    let recent_moot = conflict(&env, "j", 0, Some(("moot", 10.0))).await;
    let old_open = conflict(&env, "k", 0, None).await;
    let proof = erasure(&env, "z", 400.0).await;
    let delivered_old = delivery(&env, Some(8.0), None).await;
    let delivered_new = delivery(&env, Some(1.0), None).await;
    let abandoned_old = delivery(&env, None, Some(31.0)).await;
    let abandoned_new = delivery(&env, None, Some(10.0)).await;
    let waiting = delivery(&env, None, None).await;
    let pending_erasures = |env: &Env| {
        let store = reports_of(env);
        async move { store.status().await.expect("status").pending_erasures }
    };
    assert_eq!(pending_erasures(&env).await, 1, "d owes an erasure");

    let defaults = RetentionSettings::default();
    let removed = pass(&env, &defaults).await;

    let events = [
        a1, a2, a3, b1, b2, b3, c1, c2, c3, d1, d2, e1, e2, e3, f1, f2, h1, g1, g2, h2,
    ];
    assert_eq!(
        still_there(&env, "events", &events).await,
        vec![a3, b1, b3, c2, c3, d1, d2, e2, e3, f2, g1, g2, h2],
        "gone: a1 a2 (overtaken), b2 (an invalid event overtaken), c1 (its conflict \
         resolved), e1 (a failed closure overtaken), f1, h1 (no host user)"
    );
    assert_eq!(
        still_there(
            &env,
            "conflicts",
            &[open, moot, ignored, recent_moot, old_open]
        )
        .await,
        vec![open, ignored, recent_moot, old_open],
        "a conflict resolved 100 days ago goes; ignored ones stay"
    );
    assert_eq!(still_there(&env, "erasures", &[proof]).await, vec![proof]);
    assert_eq!(
        still_there(
            &env,
            "webhook_deliveries",
            &[
                delivered_old,
                delivered_new,
                abandoned_old,
                abandoned_new,
                waiting
            ]
        )
        .await,
        vec![delivered_new, abandoned_new, waiting]
    );
    assert_eq!(
        removed,
        Removed {
            events: 7,
            conflicts: 1,
            erasures: 0,
            webhooks: 2,
        }
    );
    assert_eq!(pending_erasures(&env).await, 1, "d's erasure is still owed");
    let status = reports_of(&env).status().await.expect("status");
    assert_eq!(
        (
            status.retention.events,
            status.retention.conflicts,
            status.retention.webhooks
        ),
        (7, 1, 2)
    );
    assert!(status.retention.last_removed_at.is_some());
    assert!(status.retention.last_pass_at.is_some());
    // Nothing new since: a pass from the floor removes nothing, and e2 (kept
    // while the failed closure before it was there) waits for a pass from
    // the oldest event, which comes once a day.
    due_now(&env, false).await;
    assert_eq!(pass(&env, &defaults).await, Removed::default());
    due_now(&env, true).await;
    assert_eq!(pass(&env, &defaults).await.events, 1);
    assert_eq!(still_there(&env, "events", &[e2]).await, Vec::<i64>::new());
    // A pass that is not due does nothing.
    assert_eq!(
        run_pass(
            retention_of(&env).as_ref(),
            &defaults,
            "test",
            &CancellationToken::new()
        )
        .await
        .expect("a look"),
        PassOutcome::NotDue
    );

    // Erasure records go only when erasures_days says so; 0 keeps events.
    due_now(&env, true).await;
    let keep_events = RetentionSettings {
        events: None,
        erasures: Some(Duration::from_secs(365 * 86_400)),
        ..defaults
    };
    let young = event(&env, Some("a"), "profile_change", "applied", Some(30.0)).await;
    let removed = pass(&env, &keep_events).await;
    assert_eq!((removed.events, removed.erasures), (0, 1));
    assert_eq!(
        still_there(&env, "erasures", &[proof]).await,
        Vec::<i64>::new()
    );
    assert_eq!(
        still_there(&env, "events", &[a3, young]).await,
        vec![a3, young]
    );
    env.finish().await;
}

async fn one_process_runs_a_pass_at_a_time(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let store = retention_of(&env);
    let lease = Duration::from_secs(60);
    let first = store.claim_pass("one", lease).await.expect("claim");
    assert!(
        first.is_some_and(|p| p.floor.is_none()),
        "the first pass starts from the oldest event"
    );
    assert_eq!(
        store.claim_pass("two", lease).await.expect("claim"),
        None,
        "held by one"
    );
    // The lease runs out (the process died): another process takes over,
    // and the first one's next batch says it lost the pass.
    env.execute(
        &format!(
            "UPDATE user_sync.retention SET leased_until = '{}'",
            ago(0.001)
        ),
        0,
    )
    .await;
    assert!(
        store
            .claim_pass("two", lease)
            .await
            .expect("claim")
            .is_some()
    );
    let sweep = Sweep::Conflicts { before: Utc::now() };
    let lost = store
        .sweep("one", lease, sweep, Cursor::start(), 10)
        .await
        .expect("a batch");
    assert!(!lost.lease_held);
    let held = store
        .sweep("two", lease, sweep, Cursor::start(), 10)
        .await
        .expect("a batch");
    assert!(held.lease_held);
    store
        .end_pass(
            "two",
            user_sync::storage::PassEnd {
                floor: Some(Utc::now()),
                full_from: Some(Utc::now()),
                next_in: Duration::from_secs(3600),
            },
        )
        .await
        .expect("end");
    assert_eq!(
        store.claim_pass("one", lease).await.expect("claim"),
        None,
        "the next pass is due in an hour"
    );
    due_now(&env, false).await;
    let next = store.claim_pass("one", lease).await.expect("claim");
    assert!(
        next.is_some_and(|p| p.floor.is_some()),
        "starts from the floor"
    );
    env.finish().await;
}

async fn a_running_worker_removes_old_events_and_status_says_so(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    for host in ["a", "b", "c"] {
        event(&env, Some(host), "signup", "applied", Some(10.0)).await;
        event(&env, Some(host), "profile_change", "applied", Some(9.0)).await;
    }
    let mut vars = process_vars(&env);
    vars.insert("USER_SYNC__RETENTION__INTERVAL_MS".into(), "200".into());
    let mut worker = Proc::spawn(&vars, &["run"]);
    let ops = worker.ready().await;
    let store = reports_of(&env);
    eventually(Duration::from_secs(30), "the old events removed", || {
        let store = store.clone();
        async move { store.status().await.expect("status").retention.events == 3 }
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.events").await,
        3,
        "each user's newest event stays"
    );
    let status = run_once(&env.vars(), &["status"]).await;
    assert!(status.status.success(), "{status}");
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("events removed"))
        .unwrap_or_else(|| panic!("no retention in status: {status}"));
    assert!(line.trim_end().ends_with(" 3"), "{line}");
    let last_pass = status
        .stdout
        .lines()
        .find(|l| l.starts_with("last retention pass"))
        .unwrap_or_else(|| panic!("no last pass in status: {status}"));
    assert!(!last_pass.trim_end().ends_with("never"), "{last_pass}");
    let json = run_once(&env.vars(), &["status", "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("status --json");
    assert_eq!(json["retention"]["events"], 3, "{json}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("a body");
    assert!(
        metrics.contains("user_sync_retention_removed_rows{table=\"events\"} 3"),
        "{metrics}"
    );
    worker.kill().await;
    env.finish().await;
}

/// Writes `rows` old finished events of 100 host users (each user's newest
/// among them), in one statement.
async fn old_history(env: &Env, rows: i64) {
    let sql = match env.backend {
        Backend::Postgres => format!(
            "INSERT INTO user_sync.events
                 (host_user_id, kind, email, state, occurred_at, finished_at)
             SELECT 'h' || (g % 100), 'signup', 'h@example.com', 'applied', '{0}', '{0}'
             FROM generate_series(1, $1) g",
            ago(30.0)
        ),
        Backend::Sqlite => format!(
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < $1)
             INSERT INTO user_sync.events
                 (host_user_id, kind, email, state, occurred_at, finished_at)
             SELECT 'h' || (g % 100), 'signup', 'h@example.com', 'applied', '{0}', '{0}' FROM s",
            ago(30.0)
        ),
    };
    env.execute(&sql, rows).await;
}

/// The host's transaction: its change and its outbox row. On PostgreSQL it
/// gives up on any lock it would wait for longer than `lock_timeout`.
const HOST_INSERT: &str = "INSERT INTO user_sync.events (host_user_id, kind, email)
     VALUES ('h1', 'profile_change', 'h1@example.com')";

async fn the_hosts_inserts_go_through_while_retention_deletes(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    old_history(&env, 20_000).await;
    match &env.db_pool {
        Database::Postgres(pool) => {
            // A deletion batch holds its rows' locks until it commits;
            // meanwhile the host inserts (for a user whose rows are being
            // deleted, too) and another deleter runs: neither waits.
            let mut batch = pool.begin().await.expect("begin");
            let sweep = Sweep::Events {
                state: EventState::Applied,
                before: Utc::now() - TimeDelta::days(7),
            };
            let lease = Duration::from_secs(60);
            let swept = sweep_retention_in(&mut batch, "test", lease, sweep, Cursor::start(), 500)
                .await
                .expect("a deletion batch");
            assert_eq!((swept.looked, swept.removed), (500, 500));
            let mut host = PgConnection::connect(&env.db.url).await.expect("connect");
            for _ in 0..3 {
                let mut tx = host.begin().await.expect("begin");
                sqlx::query("SET LOCAL lock_timeout = '200ms'")
                    .execute(&mut *tx)
                    .await
                    .expect("lock_timeout");
                let started = Instant::now();
                sqlx::query(HOST_INSERT)
                    .execute(&mut *tx)
                    .await
                    .expect("the host's insert never waits for retention");
                tx.commit().await.expect("the host's transaction commits");
                assert!(started.elapsed() < Duration::from_millis(200));
            }
            batch.commit().await.expect("the batch commits");
        }
        Database::Sqlite(_) => {
            // One writer at a time: the host's insert waits for a batch (a
            // few milliseconds), within any sensible busy timeout.
            let store = retention_of(&env);
            let deleting = tokio::spawn(async move {
                run_pass(
                    store.as_ref(),
                    &RetentionSettings::default(),
                    "test",
                    &CancellationToken::new(),
                )
                .await
            });
            let mut host = sqlx::SqliteConnection::connect_with(
                &sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&env.db.name)
                    .busy_timeout(Duration::from_secs(2)),
            )
            .await
            .expect("the host's connection");
            let mut longest = Duration::ZERO;
            let mut inserts = 0;
            while !deleting.is_finished() {
                let started = Instant::now();
                let mut tx = host.begin().await.expect("begin");
                sqlx::query(sqlx::AssertSqlSafe(env.sql(HOST_INSERT)))
                    .execute(&mut *tx)
                    .await
                    .expect("the host's insert waits no longer than its busy timeout");
                tx.commit().await.expect("the host's transaction commits");
                longest = longest.max(started.elapsed());
                inserts += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let outcome = deleting.await.expect("the pass ran").expect("the pass");
            let PassOutcome::Done(removed) = outcome else {
                panic!("{outcome:?}")
            };
            // Each user's newest old event stays (h1's too, unless the
            // host's inserts came before the pass reached it).
            assert!(
                (20_000 - 100..=20_000 - 99).contains(&removed.events),
                "{removed:?}"
            );
            assert_eq!(
                env.scalar("SELECT count(*) FROM user_sync.events WHERE state = 'applied'")
                    .await,
                20_000 - i64::try_from(removed.events).expect("a count")
            );
            assert!(inserts > 0);
            println!("{inserts} host inserts during the pass, the longest took {longest:?}");
        }
    }
    // Each user's newest event stays, and every host insert is there.
    let left = env
        .scalar("SELECT count(*) FROM user_sync.events WHERE host_user_id = 'h1'")
        .await;
    assert!(
        left >= 2,
        "h1's newest event and the host's inserts: {left}"
    );
    env.finish().await;
}

/// The reads of `status`, `/metrics` and the console's overview and
/// activity, the failed events' list, and a sweep, on an outbox of 200,000
/// finished events: none scans the outbox; the failed ones are read
/// through the index of the events with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_reads_never_scan_the_outbox() {
    let env = Env::start_on(Backend::Postgres, SandboxOptions::default()).await;
    let Database::Postgres(pool) = &env.db_pool else {
        unreachable!()
    };
    sqlx::query(
        "INSERT INTO user_sync.events
             (host_user_id, kind, email, state, reason, occurred_at, finished_at, dispatched_at)
         SELECT 'h' || (g % 10000), 'signup', 'h@example.com',
                CASE WHEN g % 1000 = 0 THEN 'failed' ELSE 'applied' END,
                CASE WHEN g % 1000 = 0 THEN 'refused' END,
                now() - interval '1 day',
                -- 100 finished in the last minutes, the rest hours ago
                CASE WHEN g <= 100 THEN now() - make_interval(secs => g)
                     ELSE now() - interval '2 hours' - make_interval(secs => g) END,
                now()
         FROM generate_series(1, 200000) g",
    )
    .execute(pool)
    .await
    .expect("history");
    // The ends of the last minutes as their statements counted them, a
    // row each (folded by the sweeper, below), and the worker's
    // dispatcher and sweeper past the history, as a worker leaves them.
    sqlx::query(
        "INSERT INTO user_sync.finished_counts (minute, state, events)
         SELECT date_trunc('minute', now() - make_interval(secs => g)), 'applied', 1
         FROM generate_series(1, 100) g",
    )
    .execute(pool)
    .await
    .expect("counts");
    sqlx::query(
        "UPDATE user_sync.dispatcher SET snapshot = pg_current_snapshot(),
             swept = pg_current_snapshot()",
    )
    .execute(pool)
    .await
    .expect("the dispatcher and the sweeper past the history");
    env.signup("p1", "p1@example.com", None).await;
    sqlx::query("VACUUM (ANALYZE) user_sync.events")
        .execute(pool)
        .await
        .expect("vacuum");
    // One connection, whose statistics are flushed on demand.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.db.url)
        .await
        .expect("a pool of one");
    let store = PgStore::new(one.clone());
    let scans = || async {
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(&one)
            .await
            .expect("flush");
        // Scans of the whole table, rows read from it (by scans of the
        // table or of an index), and scans of the finished events' index.
        let row: (i64, i64, i64) = sqlx::query_as(
            "SELECT t.seq_scan, t.seq_tup_read + coalesce(t.idx_tup_fetch, 0), i.idx_scan
             FROM pg_stat_user_tables t
             JOIN pg_stat_user_indexes i ON i.relid = t.relid AND i.indexrelname = 'events_with_reason'
             WHERE t.schemaname = 'user_sync' AND t.relname = 'events'",
        )
        .fetch_one(pool)
        .await
        .expect("statistics");
        row
    };
    use user_sync::storage::Outbox;
    let (seq_before, read_before, index_before) = scans().await;
    // A sweep folds the counts together; the walk finds p1 not yet
    // dispatched, and reads nothing else.
    store
        .sweep_stale(Duration::from_secs(300))
        .await
        .expect("a sweep");
    let folded: i64 = sqlx::query_scalar("SELECT count(*) FROM user_sync.finished_counts")
        .fetch_one(pool)
        .await
        .expect("the counts' rows");
    assert!(folded <= 3, "{folded} rows left of the counts");
    let status = store.status().await.expect("status");
    assert_eq!(
        (status.pending_events, status.failed_events),
        (1, 200),
        "{status:?}"
    );
    use user_sync::storage::Operate;
    let minutes = store
        .finished_per_minute(Utc::now() - TimeDelta::hours(1))
        .await
        .expect("activity");
    let last_hour: i64 = minutes.iter().map(|m| m.events).sum();
    assert_eq!(last_hour, 100, "{minutes:?}");
    let failed = store
        .events(&EventFilter {
            state: Some("failed".into()),
            limit: 50,
            ..EventFilter::default()
        })
        .await
        .expect("failed events");
    assert_eq!(failed.len(), 50);
    let (seq_after, read_after, index_after) = scans().await;
    assert_eq!(seq_after, seq_before, "a read scanned the whole outbox");
    assert!(
        read_after - read_before < 2_000,
        "the reads fetched {} rows of the outbox's 200,000",
        read_after - read_before
    );
    assert!(
        index_after > index_before,
        "the index of the events with a reason was read"
    );
    one.close().await;
    env.finish().await;
}

/// An index `migrate` builds concurrently: `run` refuses to start
/// without it, and `migrate` builds it again, also when a build was cut
/// short and left it invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_builds_the_reasons_index_and_run_needs_it() {
    let env = Env::start_on(Backend::Postgres, SandboxOptions::default()).await;
    env.execute("DROP INDEX user_sync.events_with_reason", 0)
        .await;
    let error = env
        .db_pool
        .check_current()
        .await
        .expect_err("the index is missing")
        .to_string();
    assert!(
        error.contains("events_with_reason") && error.contains("run `user-sync migrate`"),
        "{error}"
    );
    let run = run_once(&env.vars(), &["run"]).await;
    assert!(!run.status.success(), "{run}");
    assert!(run.stderr.contains("run `user-sync migrate`"), "{run}");
    let migrated = run_once(&env.vars(), &["migrate"]).await;
    assert!(migrated.status.success(), "{migrated}");
    env.db_pool
        .check_current()
        .await
        .expect("the index is back");
    // A build cut short leaves an invalid index behind.
    env.execute(
        "UPDATE pg_index SET indisvalid = false
         WHERE indexrelid = 'user_sync.events_with_reason'::regclass",
        0,
    )
    .await;
    assert!(env.db_pool.check_current().await.is_err());
    env.db_pool.migrate().await.expect("migrate");
    env.db_pool.check_current().await.expect("rebuilt");
    env.finish().await;
}

/// A retention part whose database is away keeps trying (never stops the
/// process); one whose tables are gone stops for good, saying what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_retries_a_database_away_and_stops_when_its_tables_are_gone() {
    let env = Env::start_on(Backend::Postgres, SandboxOptions::default()).await;
    let settings = RetentionSettings {
        interval: Duration::from_millis(50),
        ..RetentionSettings::default()
    };
    let away = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy_with(
            sqlx::postgres::PgConnectOptions::new()
                .host("127.0.0.1")
                .port(1)
                .username("nobody"),
        );
    let shutdown = CancellationToken::new();
    let retrying = tokio::spawn(run_retention(
        Arc::new(PgStore::new(away)),
        settings,
        "away".into(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!retrying.is_finished(), "a database away is retried");
    shutdown.cancel();
    retrying
        .await
        .expect("joined")
        .expect("a shutdown is a clean end");

    env.execute("DROP TABLE user_sync.retention", 0).await;
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        run_retention(
            retention_of(&env),
            settings,
            "test".into(),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("it stops for good")
    .expect_err("with an error");
    assert!(
        format!("{stopped:#}").contains("run `user-sync migrate`"),
        "{stopped:#}"
    );
    env.finish().await;
}

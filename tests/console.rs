//! The operator API on each backend, as the console and scripts use it:
//! the token, every route's answers and errors, a pause across processes,
//! and conflicts resolved by the running worker.

#[macro_use]
mod common;

use std::time::Duration;

use common::console::{Api, TOKEN, WITH_TOKEN};
use common::process::{Proc, Running, process_vars, run_once};
use common::{Backend, Env};
use serde_json::json;
use user_sync_sandbox::SandboxOptions;

const SETTLE: Duration = Duration::from_secs(30);

on_each_backend!(
    every_route_needs_the_token_and_every_answer_is_locked_down,
    without_a_token_the_console_is_not_served,
    events_users_and_retries_through_the_api,
    conflicts_are_listed_and_resolved_by_the_running_worker,
    erasures_are_listed_newest_first_and_exported_as_csv,
    a_pause_through_the_api_holds_every_process_until_resumed,
);

async fn console_worker(env: &Env) -> (Running, Api) {
    let run = Running::with(env, &WITH_TOKEN).await;
    let api = Api::at(run.worker.ops_addr);
    (run, api)
}

async fn every_route_needs_the_token_and_every_answer_is_locked_down(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let (run, api) = console_worker(&env).await;

    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for route in [
        "/api/v1/status",
        "/api/v1/events",
        "/api/v1/users/42",
        "/api/v1/conflicts",
        "/api/v1/erasures?format=csv",
        "/api/v1/activity",
        "/api/v1/no-such-route",
    ] {
        for authorization in [
            None,
            Some(wrong.as_str()),
            Some(basic.as_str()),
            Some("Bearer"),
        ] {
            let answer = api.get_with(route, authorization).await;
            assert_eq!(
                answer.status, 401,
                "{route} with {authorization:?}: {answer}"
            );
            assert!(answer.error().contains("token"), "{answer}");
            assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
            assert!(!answer.text.contains(TOKEN), "{answer}");
        }
    }
    let lower = api
        .get_with("/api/v1/status", Some(&format!("bearer {TOKEN}")))
        .await;
    assert_eq!(lower.status, 200, "the scheme is case-insensitive: {lower}");

    let status = api.get("/api/v1/status").await;
    assert_eq!(status.status, 200, "{status}");
    let page = api.get_with("/console", None).await;
    assert_eq!(page.status, 200, "the page itself asks for the token");
    assert!(page.text.contains("/console/app.js"), "{}", page.text);
    assert!(!page.text.contains("<script>"), "no inline script");
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/app.css", "text/css"),
    ] {
        let file = api.get_with(path, None).await;
        assert_eq!(file.status, 200, "{path}");
        assert!(file.header("content-type").unwrap_or("").starts_with(kind));
    }
    for answer in [&status, &page, &api.get_with("/api/v1/status", None).await] {
        assert_eq!(
            answer.header("content-security-policy"),
            Some("default-src 'self'; frame-ancestors 'none'")
        );
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert!(
            answer
                .headers
                .keys()
                .all(|name| !name.as_str().starts_with("access-control-")),
            "no CORS header: {:?}",
            answer.headers
        );
    }
    let unknown = api.get("/api/v1/no-such-route").await;
    assert_eq!(unknown.status, 404, "{unknown}");
    assert!(unknown.error().contains("no such route"));

    // Changes: POST only, and JSON only (a cross-site form sends neither).
    let as_get = api.get("/api/v1/pause").await;
    assert_eq!(as_get.status, 405, "{as_get}");
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let form = api
            .post_as("/api/v1/pause", content_type, "{\"reason\":\"x\"}")
            .await;
        assert_eq!(form.status, 415, "{content_type}: {form}");
        assert!(form.error().contains("application/json"), "{form}");
    }
    let preflight = api.request(reqwest::Method::OPTIONS, "/api/v1/pause").await;
    assert!(
        preflight
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "a preflight is never granted: {:?}",
        preflight.headers
    );
    let broken = api
        .post_as("/api/v1/pause", "application/json", "{\"reason\":")
        .await;
    assert_eq!(broken.status, 400, "{broken}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.pause WHERE paused_at IS NOT NULL")
            .await,
        0,
        "nothing refused changed anything"
    );

    // The rest of the ops server is as it was.
    assert_eq!(api.get_with("/healthz", None).await.status, 200);
    assert_eq!(api.get_with("/readyz", None).await.status, 200);
    run.stop().await;
    env.finish().await;
}

async fn without_a_token_the_console_is_not_served(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // On loopback, "on" without a token stays off; "off" wins over a token.
    for extra in [
        &[][..],
        &[("USER_SYNC__CONSOLE__ENABLED", "on")][..],
        &[
            ("USER_SYNC__CONSOLE__ENABLED", "off"),
            ("USER_SYNC_CONSOLE_TOKEN", TOKEN),
        ][..],
    ] {
        let run = Running::with(&env, extra).await;
        let api = Api::at(run.worker.ops_addr);
        for path in ["/api/v1/status", "/console", "/console/app.js"] {
            let answer = api.get(path).await;
            assert_eq!(answer.status, 404, "{path} with {extra:?}: {answer}");
        }
        assert_eq!(api.get_with("/healthz", None).await.status, 200);
        assert_eq!(api.get_with("/readyz", None).await.status, 200);
        assert_eq!(api.get_with("/metrics", None).await.status, 200);
        run.stop().await;
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_wanted_on_an_open_bind_without_a_token_refuses_to_start() {
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    let mut vars = env.vars();
    vars.insert("USER_SYNC__HTTP__BIND".into(), "0.0.0.0:0".into());
    vars.insert("USER_SYNC__CONSOLE__ENABLED".into(), "on".into());
    let refused = run_once(&vars, &["run"]).await;
    assert_eq!(refused.status.code(), Some(2), "{refused}");
    assert_eq!(refused.stderr.lines().count(), 1, "one line: {refused}");
    for key in ["console.enabled", "http.bind", "USER_SYNC_CONSOLE_TOKEN"] {
        assert!(refused.stderr.contains(key), "{key} named: {refused}");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_logged() {
    let env = Env::start_on(Backend::Sqlite, SandboxOptions::default()).await;
    let mut vars = process_vars(&env);
    vars.insert("USER_SYNC_CONSOLE_TOKEN".into(), TOKEN.into());
    vars.insert("USER_SYNC__LOG__LEVEL".into(), "debug".into());
    let mut worker = Proc::spawn(&vars, &["run"]);
    let api = Api::at(worker.ready().await);
    let wrong = "Bearer wrong-token-0f9e";
    assert_eq!(
        api.get_with("/api/v1/status", Some(wrong)).await.status,
        401
    );
    assert_eq!(api.get("/api/v1/status").await.status, 200);
    assert_eq!(
        api.post("/api/v1/pause", json!({"reason": "r"}))
            .await
            .status,
        200
    );
    assert_eq!(api.post("/api/v1/resume", json!({})).await.status, 200);
    let (_, log) = worker.terminate(Duration::from_secs(20)).await;
    assert!(log.contains("paused from the operator API"), "{log}");
    for secret in [TOKEN, "wrong-token-0f9e"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    env.finish().await;
}

async fn events_users_and_retries_through_the_api(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let run = Running::with(
        &env,
        &[WITH_TOKEN[0], ("USER_SYNC__WORKER__MAX_ATTEMPTS", "2")],
    )
    .await;
    let api = Api::at(run.worker.ops_addr);
    env.signup("ok", "fine@example.com", Some("Fine Person"))
        .await;
    env.settle(SETTLE).await;
    env.fail_every_call(true);
    let failing = [
        env.signup("f1", "first@example.com", Some("First")).await,
        env.signup("f2", "second@example.com", None).await,
    ];
    env.settle(SETTLE).await;

    let listed = api.get("/api/v1/events?state=failed").await;
    assert_eq!(listed.status, 200, "{listed}");
    let rows = listed.json();
    let hosts = common::host_user_ids(&rows);
    assert_eq!(hosts, ["f2", "f1"], "newest first: {rows}");
    assert!(rows[0]["reason"].is_string(), "a failure says why: {rows}");
    for text in ["first@example.com", "second@example.com", "First", "email"] {
        assert!(!listed.text.contains(text), "{text} in {listed}");
    }
    let one = api
        .get("/api/v1/events?host_user_id=ok&limit=5")
        .await
        .json();
    assert_eq!(one.as_array().map(Vec::len), Some(1), "{one}");
    let later = api
        .get("/api/v1/events?since=2999-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(later, json!([]));
    for (query, message) in [
        ("state=broken", "state must be one of"),
        ("since=yesterday", "since must be a time"),
        ("limit=0", "limit must be a number"),
        ("limit=ten", "limit must be a number"),
    ] {
        let bad = api.get(&format!("/api/v1/events?{query}")).await;
        assert_eq!(bad.status, 400, "{query}: {bad}");
        assert!(bad.error().contains(message), "{query}: {bad}");
    }

    let shown = api.get("/api/v1/users/ok").await;
    assert_eq!(shown.status, 200, "{shown}");
    assert_eq!(shown.json()["mapping"]["username"], "f***@e***.com");
    assert!(!shown.text.contains("fine@example.com"), "{shown}");
    let id = env.embedded_id("ok").await.expect("synced");
    assert_eq!(shown.json()["mapping"]["embedded_user_id"], id.as_str());
    let revealed = api.get("/api/v1/users/ok?reveal=true").await.json();
    assert_eq!(revealed["mapping"]["username"], "fine@example.com");
    assert_eq!(revealed["events"].as_array().map(Vec::len), Some(1));
    let unknown = api.get("/api/v1/users/nobody").await;
    assert_eq!(unknown.status, 404, "{unknown}");
    assert!(unknown.error().contains("nobody"), "{unknown}");
    let bad_flag = api.get("/api/v1/users/ok?reveal=perhaps").await;
    assert_eq!(bad_flag.status, 400, "{bad_flag}");

    for body in [
        json!({}),
        json!({"state": "broken"}),
        json!({"state": "failed", "host_user_ids": ["f1"]}),
        json!({"host_user_ids": []}),
        json!({"host_user_ids": ["  "]}),
        json!({"everything": true}),
    ] {
        let refused = api.post("/api/v1/events/retry", body.clone()).await;
        assert_eq!(refused.status, 400, "{body}: {refused}");
        assert!(!refused.error().is_empty());
    }
    env.fail_every_call(false);
    let retried = api
        .post("/api/v1/events/retry", json!({"state": "failed"}))
        .await;
    assert_eq!(retried.status, 200, "{retried}");
    assert_eq!(retried.json(), json!({"retried": 2}));
    env.settle(SETTLE).await;
    for event in failing {
        assert_eq!(env.event_state(event).await.0, "applied");
    }
    let again = api
        .post(
            "/api/v1/events/retry",
            json!({"host_user_ids": ["ok", "f1", "nobody"]}),
        )
        .await;
    assert_eq!(again.json(), json!({"retried": 2}), "{again}");
    env.settle(SETTLE).await;

    let status = api.get("/api/v1/status").await.json();
    assert_eq!(status["synced_users"], 3, "{status}");
    assert_eq!(status["failed_events"], 0, "{status}");
    assert!(status["paused"].is_null(), "{status}");
    assert!(status["queue_depth"].is_u64(), "{status}");
    assert_eq!(status["rate_limit"]["allowed_rps"], 1000.0, "{status}");
    assert!(
        status["rate_limit"]["calls_granted"].as_u64() >= Some(3),
        "{status}"
    );
    let activity = api.get("/api/v1/activity").await.json();
    let minutes = activity["minutes"].as_array().expect("minutes");
    assert_eq!(minutes.len(), 60, "every minute of the hour: {activity}");
    let counted = |state: &str| -> i64 {
        minutes
            .iter()
            .filter_map(|m| m["counts"][state].as_i64())
            .sum()
    };
    // An event counts once, as it ended last: ok's, f1's and f2's, whose
    // failures the retry undid.
    assert_eq!(counted("applied"), 3, "{activity}");
    assert_eq!(counted("failed"), 0, "{activity}");
    assert!(minutes[59]["minute"].as_str() >= minutes[0]["minute"].as_str());
    assert_eq!(api.get("/api/v1/activity?minutes=0").await.status, 400);
    run.stop().await;
    env.finish().await;
}

async fn conflicts_are_listed_and_resolved_by_the_running_worker(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let outside = env.sandbox.insert_user("outside@example.com", None);
    let (run, api) = console_worker(&env).await;
    env.signup("a", "same@example.com", None).await;
    env.settle(SETTLE).await;
    env.signup("b", "same@example.com", None).await;
    env.signup("c", "outside@example.com", Some("Carla")).await;
    env.settle(SETTLE).await;

    let open = api.get("/api/v1/conflicts").await;
    assert_eq!(open.status, 200, "{open}");
    let rows = open.json();
    let rows = rows.as_array().expect("an array").clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let id_of = |host: &str| {
        rows.iter()
            .find(|r| r["host_user_id"] == host)
            .and_then(|r| r["id"].as_i64())
            .unwrap_or_else(|| panic!("a conflict of {host}: {rows:?}"))
    };
    let (b, c) = (id_of("b"), id_of("c"));
    assert!(
        rows.iter()
            .all(|r| r["username"].as_str().is_some_and(|u| u.contains('@'))),
        "operators resolving conflicts see the username: {rows:?}"
    );

    let refused = api
        .post(
            &format!("/api/v1/conflicts/{b}/resolve"),
            json!({"action": "adopt"}),
        )
        .await;
    assert_eq!(refused.status, 409, "{refused}");
    assert!(refused.error().contains("taken_by_host_user"), "{refused}");

    let adopted = api
        .post(
            &format!("/api/v1/conflicts/{c}/resolve"),
            json!({"action": "adopt", "note": "ticket 7", "by": "alice"}),
        )
        .await;
    assert_eq!(adopted.status, 200, "{adopted}");
    let done = adopted.json();
    assert_eq!(done["resolved"], true, "{done}");
    assert!(
        done["message"]
            .as_str()
            .is_some_and(|m| m.contains("adopted")),
        "{done}"
    );
    assert_eq!(
        env.embedded_id("c").await.as_deref(),
        Some(outside.as_str())
    );
    let again = api
        .post(
            &format!("/api/v1/conflicts/{c}/resolve"),
            json!({"action": "ignore"}),
        )
        .await;
    assert_eq!(again.status, 409, "{again}");
    assert!(again.error().contains("already resolved"), "{again}");

    let ignored = api
        .post(
            &format!("/api/v1/conflicts/{b}/resolve"),
            json!({"action": "ignore"}),
        )
        .await;
    assert_eq!(ignored.status, 200, "{ignored}");
    let resolved = api.get("/api/v1/conflicts?status=resolved").await.json();
    let by: Vec<(String, String, Option<String>)> = resolved
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["resolution"].as_str().unwrap_or_default().to_owned(),
                r["resolved_by"].as_str().unwrap_or_default().to_owned(),
                r["note"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert!(
        by.contains(&("adopted".into(), "alice".into(), Some("ticket 7".into()))),
        "{by:?}"
    );
    assert!(
        by.contains(&("ignored".into(), "console".into(), None)),
        "{by:?}"
    );
    assert_eq!(api.get("/api/v1/conflicts").await.json(), json!([]));
    assert_eq!(
        api.get("/api/v1/conflicts?status=all")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    for (path, body, status) in [
        (
            "/api/v1/conflicts/999999/resolve",
            json!({"action": "ignore"}),
            404,
        ),
        (
            "/api/v1/conflicts/abc/resolve",
            json!({"action": "ignore"}),
            400,
        ),
        (
            &*format!("/api/v1/conflicts/{b}/resolve"),
            json!({"action": "delete"}),
            400,
        ),
        (&*format!("/api/v1/conflicts/{b}/resolve"), json!({}), 400),
    ] {
        let answer = api.post(path, body.clone()).await;
        assert_eq!(answer.status, status, "{path} {body}: {answer}");
        assert!(!answer.error().is_empty());
    }
    assert_eq!(api.get("/api/v1/conflicts?status=closed").await.status, 400);
    run.stop().await;
    env.finish().await;
}

async fn erasures_are_listed_newest_first_and_exported_as_csv(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let (run, api) = console_worker(&env).await;
    env.signup("leaving", "leaving@example.com", Some("Lea"))
        .await;
    env.settle(SETTLE).await;
    env.closure("leaving").await;
    env.settle(SETTLE).await;
    env.closure("=never-synced").await;
    env.settle(SETTLE).await;

    let listed = api.get("/api/v1/erasures").await;
    assert_eq!(listed.status, 200, "{listed}");
    let rows = listed.json();
    let outcomes: Vec<(&str, &str)> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["host_user_id"].as_str().unwrap_or_default(),
                r["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [("=never-synced", "never_created"), ("leaving", "deleted")],
        "newest first: {rows}"
    );
    assert!(!listed.text.contains("leaving@example.com"), "{listed}");
    let first = api.get("/api/v1/erasures?limit=1").await.json();
    assert_eq!(first.as_array().map(Vec::len), Some(1), "{first}");

    let csv = api.get("/api/v1/erasures?format=csv").await;
    assert_eq!(csv.status, 200, "{csv}");
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(
        csv.header("content-disposition")
            .is_some_and(|d| d.contains("erasures.csv")),
        "{:?}",
        csv.headers
    );
    let mut reader = csv::Reader::from_reader(csv.text.as_bytes());
    let header = reader.headers().expect("a header").clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        [
            "host_user_id",
            "embedded_user_id",
            "outcome",
            "requested_at",
            "logs_deleted_at",
            "logs_skipped",
            "user_deleted_at",
            "completed_at"
        ],
        "the proof export of `user-sync erasures --format csv`"
    );
    let records: Vec<csv::StringRecord> = reader.records().map(|r| r.expect("a row")).collect();
    assert_eq!(records.len(), 2, "{}", csv.text);
    assert_eq!(&records[0][0], "'=never-synced", "a formula is neutralised");
    assert_eq!(&records[1][2], "deleted");
    assert_eq!(api.get("/api/v1/erasures?format=xml").await.status, 400);
    assert_eq!(
        api.get("/api/v1/status").await.json()["completed_erasures"],
        2
    );
    run.stop().await;
    env.finish().await;
}

async fn a_pause_through_the_api_holds_every_process_until_resumed(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    // Two processes on PostgreSQL, each with its console; one on SQLite.
    let (first, api) = console_worker(&env).await;
    let second = match backend {
        Backend::Postgres => Some(console_worker(&env).await),
        Backend::Sqlite => None,
    };
    env.signup("before", "before@example.com", None).await;
    env.settle(SETTLE).await;

    let paused = api
        .post("/api/v1/pause", json!({"reason": "INC-2: bad emails"}))
        .await;
    assert_eq!(paused.status, 200, "{paused}");
    assert_eq!(paused.json()["paused"]["reason"], "INC-2: bad emails");
    assert_eq!(paused.json()["paused"]["paused_by"], "console");
    let events = env.held_while_paused(10, env.closure("before")).await;

    let seen_by = match &second {
        Some((_, other)) => other,
        None => &api,
    };
    let status = seen_by.get("/api/v1/status").await.json();
    assert_eq!(status["paused"]["reason"], "INC-2: bad emails", "{status}");
    assert_eq!(status["pending_events"], 11, "{status}");
    assert_eq!(status["pending_erasures"], 1, "{status}");
    let cli = run_once(&env.vars(), &["status", "--json"]).await;
    assert!(
        cli.stdout.contains("INC-2: bad emails"),
        "the same pause: {cli}"
    );

    let resumed = seen_by.post("/api/v1/resume", json!({})).await;
    assert_eq!(resumed.status, 200, "{resumed}");
    assert_eq!(resumed.json()["resumed"]["reason"], "INC-2: bad emails");
    env.settle(SETTLE).await;
    for event in events {
        assert_eq!(env.event_state(event).await.0, "applied");
    }
    let status = api.get("/api/v1/status").await.json();
    assert!(status["paused"].is_null(), "{status}");
    assert_eq!(status["pending_erasures"], 0, "{status}");
    let again = api.post_as("/api/v1/resume", "application/json", "").await;
    assert_eq!(again.json(), json!({"resumed": null}), "{again}");

    first.stop().await;
    if let Some((second, _)) = second {
        second.stop().await;
    }
    env.finish().await;
}

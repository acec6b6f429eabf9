//! Webhooks to the host, end to end: the worker's deliverer (in process, or
//! `user-sync run` processes) against a receiver in the test over real
//! HTTP, which checks every request with the `standardwebhooks` crate, an
//! implementation of the specification independent of the worker's own
//! signing code. The webhooks come from the real pipeline (a closure, an
//! event that fails for good) or, where only delivery is under test, are
//! written as the storage layer writes them.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::process::{Proc, Running, process_vars, run_once};
use common::services::free_port;
use common::{Backend, Env, eventually};
use tokio_util::sync::CancellationToken;
use user_sync_sandbox::{FaultUpdate, SandboxOptions};

const SETTLE: Duration = Duration::from_secs(30);
/// Long enough for a few retries of the deliverer's backoff (a second,
/// then two, then four...).
const RETRIES: Duration = Duration::from_secs(60);

/// The deployment's secret: `whsec_` and base64 of 24 random-looking bytes.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Another one, that the worker was not given.
const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

// ---------------------------------------------------------------------------
// The receiver
// ---------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    webhook_id: String,
    content_type: String,
    body: String,
    /// What `standardwebhooks` said of its signature.
    verified: Result<(), String>,
    headers: HeaderMap,
}

impl Received {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// How the receiver answers a request whose signature checks out (one
/// that does not is answered `401`, as a host would).
#[derive(Debug, Clone, Copy)]
enum Answer {
    Accept,
    Status(u16),
}

#[derive(Clone)]
struct ReceiverState {
    verifier: Arc<standardwebhooks::Webhook>,
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
}

/// A host's webhook endpoint, at `/hooks` of its address.
struct Receiver {
    addr: SocketAddr,
    state: ReceiverState,
    stop: CancellationToken,
}

impl Receiver {
    /// Listens on `port` (0: any), verifying with `secret`.
    async fn start(port: u16, secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the receiver's port is free");
        let addr = listener.local_addr().expect("a local address");
        let state = ReceiverState {
            verifier: Arc::new(standardwebhooks::Webhook::new(secret).expect("a secret")),
            received: Arc::default(),
            answer: Arc::new(Mutex::new(Answer::Accept)),
        };
        let app = axum::Router::new()
            .route("/hooks", axum::routing::post(receive))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Self { addr, state, stop }
    }

    fn url(&self) -> String {
        url_at(self.addr.port())
    }

    fn answer(&self, answer: Answer) {
        *self.state.answer.lock().expect("answer lock") = answer;
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("received lock").clone()
    }

    /// The requests whose signature checked out, and that were accepted.
    fn verified(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.verified.is_ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn url_at(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hooks")
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let verified = state
        .verifier
        .verify(&body, &headers)
        .map_err(|e| e.to_string());
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let ok = verified.is_ok();
    state
        .received
        .lock()
        .expect("received lock")
        .push(Received {
            webhook_id: header("webhook-id"),
            content_type: header("content-type"),
            body: String::from_utf8_lossy(&body).into_owned(),
            verified,
            headers: headers.clone(),
        });
    if !ok {
        return StatusCode::UNAUTHORIZED;
    }
    match *state.answer.lock().expect("answer lock") {
        Answer::Accept => StatusCode::NO_CONTENT,
        Answer::Status(status) => {
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Variables that turn webhooks on, to `url`, signed with [`SECRET`].
fn webhook_vars(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("USER_SYNC__WEBHOOKS__URL", url.to_owned()),
        ("USER_SYNC_WEBHOOK_SECRET", SECRET.to_owned()),
    ]
}

async fn start_worker(env: &Env, url: &str, extra: &[(&str, &str)]) -> Running {
    let vars = webhook_vars(url);
    let mut all: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    Running::with(env, &all).await
}

/// A host user who signed up and closed the account before the worker
/// started: one `erasure.completed` webhook (`never_created`), no API call.
async fn signed_up_and_closed(env: &Env, host: &str) -> i64 {
    env.signup(
        host,
        &format!("{host}.person@example.com"),
        Some("Closed Person"),
    )
    .await;
    env.closure(host).await
}

/// Every delivery row: (webhook id, type, attempts, delivered, abandoned).
async fn deliveries(env: &Env) -> Vec<(String, String, i32, bool, bool)> {
    env.rows(
        "SELECT webhook_id, type, attempts, delivered_at IS NOT NULL, abandoned_at IS NOT NULL
         FROM user_sync.webhook_deliveries ORDER BY id",
    )
    .await
}

async fn count_deliveries(env: &Env, condition: &str) -> i64 {
    env.scalar(&format!(
        "SELECT count(*) FROM user_sync.webhook_deliveries WHERE {condition}"
    ))
    .await
}

/// The binary's variables for `user-sync webhooks`, with webhooks to `url`
/// when given.
fn command_vars(env: &Env, url: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut vars = env.vars();
    if let Some(url) = url {
        for (key, value) in webhook_vars(url) {
            vars.insert(key.into(), value);
        }
    }
    vars
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

on_each_backend!(
    conflicts_opened_and_resolved_reach_the_host_without_the_username,
    an_erasure_and_a_failed_event_reach_the_host_signed_without_personal_data,
    a_receiver_down_then_up_loses_nothing_and_sees_the_same_ids,
    a_webhook_past_its_max_age_is_abandoned_listed_and_redelivered,
    a_type_left_out_of_webhooks_events_is_not_written,
);

async fn an_erasure_and_a_failed_event_reach_the_host_signed_without_personal_data(
    backend: Backend,
) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let receiver = Receiver::start(0, SECRET).await;
    let run = start_worker(
        &env,
        &receiver.url(),
        &[("USER_SYNC__WORKER__MAX_ATTEMPTS", "2")],
    )
    .await;

    // A user synced, then closed: deleted in Embedded, one erasure.
    env.signup("u1", "ada.lovelace@example.com", Some("Ada Lovelace"))
        .await;
    env.settle(SETTLE).await;
    let embedded = env.embedded_id("u1").await.expect("u1 synced");
    let closure = env.closure("u1").await;
    env.settle(SETTLE).await;

    // A signup the API keeps failing: it fails for good after two attempts.
    env.sandbox.update_faults(FaultUpdate {
        fail_rate: Some(1.0),
        ..FaultUpdate::default()
    });
    let failing = env
        .signup("u2", "grace.hopper@example.com", Some("Grace Hopper"))
        .await;
    env.settle(SETTLE).await;
    assert_eq!(env.event_state(failing).await.0, "failed");

    eventually(RETRIES, "both webhooks delivered", || async {
        receiver.verified().len() >= 2
    })
    .await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "each webhook once: {received:?}");
    for r in &received {
        r.verified.as_ref().expect("the signature checks out");
        assert_eq!(r.content_type, "application/json");
        assert!(r.webhook_id.starts_with("msg_"), "{}", r.webhook_id);
        for personal in [
            "ada",
            "Ada",
            "Lovelace",
            "grace",
            "Grace",
            "Hopper",
            "example.com",
        ] {
            assert!(!r.body.contains(personal), "{personal:?} in {}", r.body);
            for (name, value) in &r.headers {
                let value = value.to_str().unwrap_or_default();
                assert!(!value.contains(personal), "{personal:?} in header {name}");
            }
        }
        let body = r.json();
        let timestamp = body["timestamp"].as_str().expect("a timestamp");
        chrono::DateTime::parse_from_rfc3339(timestamp).expect("an RFC 3339 timestamp");
    }
    let of_type = |kind: &str| {
        received
            .iter()
            .map(Received::json)
            .find(|b| b["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} webhook: {received:?}"))
    };
    let erasure = of_type("erasure.completed");
    let erasure_id = env
        .scalar("SELECT id FROM user_sync.erasures WHERE host_user_id = 'u1'")
        .await;
    assert_eq!(
        erasure["data"],
        serde_json::json!({
            "erasure_id": erasure_id,
            "event_id": closure,
            "host_user_id": "u1",
            "embedded_user_id": embedded,
            "outcome": "deleted",
        })
    );
    let failed = of_type("event.failed");
    assert_eq!(
        failed["data"],
        serde_json::json!({
            "event_id": failing,
            "host_user_id": "u2",
            "kind": "signup",
            "attempts": 2,
        })
    );

    // The ids on the wire are the rows' ids, and the rows are delivered
    // (marked once the receiver's answer is back, just after it got them).
    common::eventually(Duration::from_secs(10), "both marked delivered", || async {
        count_deliveries(&env, "delivered_at IS NOT NULL").await == 2
    })
    .await;
    let rows = deliveries(&env).await;
    assert_eq!(rows.len(), 2);
    for (webhook_id, _, attempts, delivered, abandoned) in &rows {
        assert!(received.iter().any(|r| &r.webhook_id == webhook_id));
        assert_eq!((*attempts, *delivered, *abandoned), (1, true, false));
    }
    // The body on the wire is the body stored (and signed) with the change.
    let stored: Vec<(String,)> = env
        .rows("SELECT payload FROM user_sync.webhook_deliveries ORDER BY id")
        .await;
    for (payload,) in stored {
        assert!(received.iter().any(|r| r.body == payload), "{payload}");
    }

    // The metrics count the deliveries by type and result.
    let metrics = reqwest::get(format!("http://{}/metrics", run.worker.ops_addr))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("a body");
    assert!(
        metrics.contains(
            "user_sync_webhook_deliveries_total{type=\"event.failed\",result=\"delivered\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("user_sync_webhook_oldest_undelivered_seconds"),
        "{metrics}"
    );

    run.stop().await;
    env.finish().await;
}

async fn a_receiver_down_then_up_loses_nothing_and_sees_the_same_ids(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    for host in ["d1", "d2", "d3"] {
        signed_up_and_closed(&env, host).await;
    }
    // Nobody listens on the receiver's port yet.
    let port = free_port();
    let run = start_worker(&env, &url_at(port), &[]).await;
    eventually(
        RETRIES,
        "every webhook tried twice while the host is down",
        || async { count_deliveries(&env, "attempts >= 2 AND last_error = 'connect'").await == 3 },
    )
    .await;
    let ids_while_down: Vec<String> = deliveries(&env).await.into_iter().map(|d| d.0).collect();
    assert_eq!(count_deliveries(&env, "delivered_at IS NOT NULL").await, 0);

    // Up, but failing: the retries arrive, and are refused.
    let receiver = Receiver::start(port, SECRET).await;
    receiver.answer(Answer::Status(503));
    eventually(RETRIES, "every webhook retried against a 503", || async {
        let mut seen: Vec<String> = receiver
            .received()
            .into_iter()
            .map(|r| r.webhook_id)
            .collect();
        seen.sort();
        seen.dedup();
        seen.len() == 3
    })
    .await;
    assert_eq!(count_deliveries(&env, "delivered_at IS NOT NULL").await, 0);
    assert_eq!(
        count_deliveries(&env, "last_error = 'status 503'").await,
        3,
        "the last error is the status, never the body"
    );

    // Accepting: each is delivered, under the id it had all along.
    receiver.answer(Answer::Accept);
    eventually(RETRIES, "every webhook delivered", || async {
        count_deliveries(&env, "delivered_at IS NOT NULL").await == 3
    })
    .await;
    let received = receiver.received();
    for id in &ids_while_down {
        let attempts: Vec<&Received> = received.iter().filter(|r| &r.webhook_id == id).collect();
        assert!(
            attempts.len() >= 2,
            "{id}: refused, then accepted: {attempts:?}"
        );
        assert!(attempts.iter().all(|r| r.verified.is_ok()));
        let bodies: std::collections::HashSet<&str> =
            attempts.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies.len(), 1, "{id}: one body on every attempt");
    }
    let mut seen: Vec<String> = received.iter().map(|r| r.webhook_id.clone()).collect();
    seen.sort();
    seen.dedup();
    let mut expected = ids_while_down.clone();
    expected.sort();
    assert_eq!(seen, expected, "no webhook lost, none made up");

    run.stop().await;
    env.finish().await;
}

async fn a_webhook_past_its_max_age_is_abandoned_listed_and_redelivered(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    signed_up_and_closed(&env, "a1").await;
    let receiver = Receiver::start(0, SECRET).await;
    receiver.answer(Answer::Status(500));
    let run = start_worker(
        &env,
        &receiver.url(),
        &[("USER_SYNC__WEBHOOKS__MAX_AGE_MS", "3000")],
    )
    .await;
    eventually(RETRIES, "the webhook is abandoned", || async {
        count_deliveries(&env, "abandoned_at IS NOT NULL").await == 1
    })
    .await;
    let tried = receiver.received().len();
    assert!(tried >= 2, "retried before it was abandoned: {tried}");
    // Abandoned: no further attempt (the deliverer polls every second).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.received().len(),
        tried,
        "an abandoned webhook was retried"
    );
    let webhook_id = deliveries(&env).await[0].0.clone();

    // Listed, as a table and as JSON.
    let vars = command_vars(&env, None);
    let out = run_once(&vars, &["webhooks"]).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains(&webhook_id))
        .unwrap_or_else(|| panic!("not listed: {out}"));
    assert!(
        line.contains("erasure.completed") && line.contains("abandoned"),
        "{line}"
    );
    assert!(line.contains("status 500"), "{line}");
    let out = run_once(&vars, &["webhooks", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(listed[0]["webhook_id"], webhook_id.as_str());
    assert_eq!(listed[0]["type"], "erasure.completed");
    assert_eq!(listed[0]["state"], "abandoned");
    assert_eq!(listed[0]["attempts"], tried);
    assert_eq!(listed[0]["last_error"], "status 500");
    assert!(
        listed[0]["age_seconds"].as_f64().is_some_and(|a| a >= 3.0),
        "{out}"
    );

    // --redeliver without a receiver to send to: bad configuration.
    let out = run_once(&vars, &["webhooks", "--redeliver"]).await;
    assert_eq!(out.status.code(), Some(2), "{out}");
    assert!(out.stderr.contains("webhooks.url"), "{out}");

    // The receiver still refuses: the redelivery fails, and says so.
    let vars = command_vars(&env, Some(&receiver.url()));
    let out = run_once(&vars, &["webhooks", "--redeliver"]).await;
    assert_eq!(out.status.code(), Some(1), "{out}");
    assert!(out.stdout.contains("0 delivered, 1 failed"), "{out}");
    assert_eq!(receiver.received().len(), tried + 1);
    assert_eq!(count_deliveries(&env, "abandoned_at IS NOT NULL").await, 1);

    // It accepts: delivered, under the same id, and no longer listed.
    receiver.answer(Answer::Accept);
    let out = run_once(&vars, &["webhooks", "--redeliver"]).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stdout.contains("1 delivered, 0 failed"), "{out}");
    let verified = receiver.verified();
    let last = verified.last().expect("a request");
    assert_eq!(last.webhook_id, webhook_id);
    assert_eq!(
        count_deliveries(&env, "delivered_at IS NOT NULL AND abandoned_at IS NULL").await,
        1
    );
    let out = run_once(&vars, &["webhooks"]).await;
    assert!(out.stdout.contains("no undelivered webhooks"), "{out}");
    let out = run_once(&vars, &["webhooks", "--redeliver"]).await;
    assert_eq!(out.status.code(), Some(0), "{out}");
    assert!(out.stdout.contains("0 delivered, 0 failed"), "{out}");

    run.stop().await;
    env.finish().await;
}

async fn a_type_left_out_of_webhooks_events_is_not_written(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let receiver = Receiver::start(0, SECRET).await;

    // Off (no url): no type is subscribed, and nothing is written.
    let run = Running::start(&env).await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.webhook_subscriptions")
            .await,
        0
    );
    signed_up_and_closed(&env, "off").await;
    env.settle(SETTLE).await;
    run.stop().await;
    assert_eq!(count_deliveries(&env, "true").await, 0);

    // Failed events only: a closure writes nothing, a failure does.
    let run = start_worker(
        &env,
        &receiver.url(),
        &[
            ("USER_SYNC__WEBHOOKS__EVENTS", "event.failed"),
            ("USER_SYNC__WORKER__MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let types: Vec<(String,)> = env
        .rows("SELECT type FROM user_sync.webhook_subscriptions")
        .await;
    assert_eq!(types, vec![("event.failed".to_owned(),)]);
    signed_up_and_closed(&env, "c1").await;
    env.settle(SETTLE).await;
    env.sandbox.update_faults(FaultUpdate {
        fail_rate: Some(1.0),
        ..FaultUpdate::default()
    });
    env.signup("f1", "f1.person@example.com", None).await;
    env.settle(SETTLE).await;
    eventually(RETRIES, "the failure delivered", || async {
        !receiver.verified().is_empty()
    })
    .await;
    let types: Vec<String> = deliveries(&env).await.into_iter().map(|d| d.1).collect();
    assert_eq!(types, ["event.failed"], "the erasure wrote a webhook");
    assert_eq!(
        env.scalar("SELECT count(*) FROM user_sync.erasures").await,
        2,
        "both closures were erased"
    );

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_caught_by_the_receiver() {
    let env = Env::start(SandboxOptions::default()).await;
    signed_up_and_closed(&env, "w1").await;
    // The host verifies with a secret the worker was not given.
    let receiver = Receiver::start(0, OTHER_SECRET).await;
    let run = start_worker(&env, &receiver.url(), &[]).await;
    eventually(RETRIES, "two attempts reach the host", || async {
        receiver.received().len() >= 2
    })
    .await;
    let received = receiver.received();
    let right = standardwebhooks::Webhook::new(SECRET).expect("a secret");
    for r in &received {
        assert_eq!(
            r.verified.as_ref().err().map(String::as_str),
            Some("signature invalid"),
            "the host took a webhook signed with another key"
        );
        // Signed, and well: with the worker's own secret it checks out.
        right
            .verify(r.body.as_bytes(), &r.headers)
            .expect("signed with the worker's secret");
    }
    assert_eq!(count_deliveries(&env, "delivered_at IS NOT NULL").await, 0);
    assert_eq!(count_deliveries(&env, "last_error = 'status 401'").await, 1);
    // Each attempt is signed afresh, under the same id.
    assert!(
        received
            .iter()
            .all(|r| r.webhook_id == received[0].webhook_id)
    );

    run.stop().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_deliver_each_webhook_once() {
    const WEBHOOKS: usize = 120;
    let env = Env::start(SandboxOptions::default()).await;
    // Written as the storage layer writes them, many more than a batch.
    env.execute(
        "INSERT INTO user_sync.webhook_subscriptions (type) VALUES ('event.failed')",
        0,
    )
    .await;
    env.execute(
        &format!(
            "INSERT INTO user_sync.webhook_deliveries (type, payload)
             SELECT 'event.failed',
                    user_sync.webhook_body('event.failed', jsonb_build_object('event_id', n))
             FROM generate_series(1, {WEBHOOKS}) AS n"
        ),
        0,
    )
    .await;
    let receiver = Receiver::start(0, SECRET).await;
    let mut vars = process_vars(&env);
    for (key, value) in webhook_vars(&receiver.url()) {
        vars.insert(key.into(), value);
    }
    let mut a = Proc::spawn(&vars, &["run"]);
    let mut b = Proc::spawn(&vars, &["run"]);
    a.ready().await;
    b.ready().await;
    eventually(RETRIES, "every webhook delivered", || async {
        count_deliveries(&env, "delivered_at IS NOT NULL").await == WEBHOOKS as i64
    })
    .await;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), WEBHOOKS, "every webhook arrived");
    assert_eq!(total, WEBHOOKS, "a webhook arrived twice");
    assert!(received.iter().all(|r| r.verified.is_ok()));
    assert_eq!(
        count_deliveries(&env, "attempts = 1").await,
        WEBHOOKS as i64
    );

    let (status, _) = a.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    let (status, _) = b.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status}");
    env.finish().await;
}

async fn conflicts_opened_and_resolved_reach_the_host_without_the_username(backend: Backend) {
    let env = Env::start_on(backend, SandboxOptions::default()).await;
    let receiver = Receiver::start(0, SECRET).await;
    let outside = env.sandbox.insert_user("held.outside@example.com", None);
    let run = start_worker(&env, &receiver.url(), &[]).await;
    env.signup("a", "shared.name@example.com", Some("Ada"))
        .await;
    env.settle(SETTLE).await;
    env.signup("b", "shared.name@example.com", Some("Bea"))
        .await;
    env.signup("c", "held.outside@example.com", Some("Cy"))
        .await;
    env.settle(SETTLE).await;
    let ids: Vec<(i64, String)> = env
        .rows("SELECT id, host_user_id FROM user_sync.conflicts ORDER BY host_user_id")
        .await;
    assert_eq!(ids.len(), 2, "{ids:?}");

    // a lets the username go: b's conflict resolves itself; c's is
    // ignored by an operator, from the command line.
    env.closure("a").await;
    eventually(SETTLE, "b is synced", || async {
        env.embedded_id("b").await.is_some()
    })
    .await;
    let c = ids[1].0.to_string();
    let ignored = common::process::run_once(
        &env.vars(),
        &[
            "conflicts",
            "resolve",
            &c,
            "--ignore",
            "--by",
            "alice",
            "--note",
            "private note",
        ],
    )
    .await;
    assert!(ignored.status.success(), "{ignored}");

    eventually(RETRIES, "every webhook delivered", || async {
        receiver.verified().len() >= 5
    })
    .await;
    let received = receiver.verified();
    let bodies: Vec<serde_json::Value> = received.iter().map(Received::json).collect();
    let of = |kind: &str, host: &str| {
        bodies
            .iter()
            .filter(|b| b["type"] == kind && b["data"]["host_user_id"] == host)
            .cloned()
            .collect::<Vec<_>>()
    };
    let opened_b = of("conflict.opened", "b");
    assert_eq!(opened_b.len(), 1, "{bodies:?}");
    assert_eq!(opened_b[0]["data"]["conflict_id"], ids[0].0);
    assert_eq!(opened_b[0]["data"]["reason"], "taken_by_host_user");
    assert_eq!(opened_b[0]["data"]["holder_host_user_id"], "a");
    let opened_c = of("conflict.opened", "c");
    assert_eq!(opened_c.len(), 1, "{bodies:?}");
    assert_eq!(opened_c[0]["data"]["reason"], "taken_in_embedded");
    assert_eq!(
        opened_c[0]["data"]["holder_embedded_user_id"],
        outside.as_str()
    );
    let resolved_b = of("conflict.resolved", "b");
    assert_eq!(resolved_b.len(), 1, "{bodies:?}");
    assert_eq!(resolved_b[0]["data"]["resolution"], "moot");
    assert_eq!(resolved_b[0]["data"]["status"], "resolved");
    let resolved_c = of("conflict.resolved", "c");
    assert_eq!(resolved_c.len(), 1, "{bodies:?}");
    assert_eq!(resolved_c[0]["data"]["resolution"], "ignored");
    assert_eq!(of("erasure.completed", "a").len(), 1, "{bodies:?}");
    for r in &received {
        for private in [
            "shared.name",
            "held.outside",
            "example.com",
            "alice",
            "private note",
            "Bea",
        ] {
            assert!(!r.body.contains(private), "{private:?} in {}", r.body);
        }
    }
    let ids: std::collections::BTreeSet<&str> =
        received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "each webhook once");

    run.stop().await;
    env.finish().await;
}

//! The sandbox over real HTTP: what the Embedded Users API answers, and every
//! fault it can inject. Raw `reqwest` sends what the crate's client never
//! would (no key, no version, malformed batches); the crate's client is used
//! where the typed answer is what matters.

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use common::{answers_lost, new_user};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use user_sync::domain::Username;
use user_sync::embedded::{ApiError, EmbeddedClient, InvalidBatchUser, UserRef, UserUpdate};
use user_sync_sandbox::{
    FaultUpdate, Sandbox, SandboxArgs, SandboxOptions, SandboxStats, SandboxUser, routes,
};

const KEY: &str = "test-key";

async fn sandbox(options: SandboxOptions) -> Sandbox {
    common::sandbox_accepting(KEY, options).await
}

/// Raw HTTP against one sandbox: `api` sends the key and version, `bare`
/// sends nothing the caller does not add.
struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    fn new(sandbox: &Sandbox) -> Self {
        // reqwest is built without a bundled crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .retry(reqwest::retry::never())
            .build()
            .expect("HTTP client");
        Self {
            http,
            base: sandbox.base_url().as_str().trim_end_matches('/').to_owned(),
        }
    }

    fn bare(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    fn api(&self, method: Method, path: &str) -> RequestBuilder {
        self.bare(method, path)
            .bearer_auth(KEY)
            .header("x-api-version", "2025-09")
    }
}

/// Sends a request and returns its status and JSON body (`Null` if none).
async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status();
    let bytes = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

fn client(sandbox: &Sandbox, key: &str) -> EmbeddedClient {
    common::client_of(sandbox, key, None)
}

#[tokio::test]
async fn refuses_a_bad_key_and_a_missing_authorization() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let unauthorized = json!({"message": "Unauthorized"});

    let refused = [
        raw.bare(Method::GET, "/users")
            .header("x-api-version", "2025-09"),
        raw.bare(Method::GET, "/users")
            .header("x-api-version", "2025-09")
            .bearer_auth("wrong-key"),
        raw.bare(Method::GET, "/users")
            .header("x-api-version", "2025-09")
            .header("authorization", format!("Basic {KEY}")),
        raw.bare(Method::GET, "/users")
            .header("x-api-version", "2025-09")
            .header("authorization", KEY),
    ];
    for request in refused {
        assert_eq!(
            send(request).await,
            (StatusCode::UNAUTHORIZED, unauthorized.clone())
        );
    }
    let created = raw
        .bare(Method::POST, "/users/")
        .header("x-api-version", "2025-09")
        .json(&json!({"username": "a@example.com"}));
    assert_eq!(send(created).await.0, StatusCode::UNAUTHORIZED);

    // The scheme is case-insensitive: the docs print `bearer`.
    for scheme in ["bearer", "Bearer", "BEARER"] {
        let request = raw
            .bare(Method::GET, "/users")
            .header("x-api-version", "2025-09")
            .header("authorization", format!("{scheme} {KEY}"));
        assert_eq!(send(request).await.0, StatusCode::OK, "{scheme}");
    }

    let stats = sb.stats();
    assert_eq!(stats.count(routes::LIST, 401), 4);
    assert_eq!(stats.count(routes::CREATE, 401), 1);
    assert_eq!(stats.count(routes::LIST, 200), 3);
    assert_eq!(stats.creates, 0);
    assert!(sb.users().is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn requires_a_known_api_version() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);

    let (status, body) = send(raw.bare(Method::GET, "/users").bearer_auth(KEY)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = body["message"].as_str().expect("a message");
    assert!(
        message.contains("x-api-version") && message.contains("2025-09"),
        "{message}"
    );

    let (status, body) = send(
        raw.bare(Method::POST, "/users/")
            .bearer_auth(KEY)
            .header("x-api-version", "2024-03")
            .json(&json!({"username": "a@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .expect("a message")
            .contains("Unsupported")
    );
    assert!(sb.users().is_empty(), "a refused version changes nothing");

    // The key is checked first.
    let status = send(raw.bare(Method::GET, "/users").bearer_auth("wrong"))
        .await
        .0;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_taken_username_is_refused_in_any_letter_case_with_the_configured_status() {
    for configured in [400u16, 409, 422] {
        let sb = sandbox(SandboxOptions {
            duplicate_status: configured,
            ..SandboxOptions::default()
        })
        .await;
        let raw = Raw::new(&sb);
        let create = |username: &str| {
            raw.api(Method::POST, "/users/")
                .json(&json!({"username": username, "fullName": "Grace Hopper"}))
        };

        let (status, body) = send(create("Grace@Example.com")).await;
        assert_eq!(status, StatusCode::OK);
        let id = body["userId"].as_str().expect("a userId").to_owned();

        for spelling in [
            "Grace@Example.com",
            "grace@example.com",
            "GRACE@EXAMPLE.COM",
        ] {
            let (status, body) = send(create(spelling)).await;
            assert_eq!(status.as_u16(), configured, "{spelling}");
            let message = body["message"].as_str().expect("a message").to_lowercase();
            assert!(
                !message.contains("grace"),
                "the answer names the user: {message}"
            );
        }

        let users = sb.users();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].user_id, id);
        assert_eq!(users[0].username, "Grace@Example.com", "stored as given");
        let stats = sb.stats();
        assert_eq!(stats.creates, 1);
        assert_eq!(stats.duplicate_attempts, 3);
        assert_eq!(stats.count(routes::CREATE, configured), 3);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn a_create_needs_a_username_and_a_json_body() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    for body in [
        json!({"fullName": "No Name"}),
        json!({"username": "  "}),
        json!({"username": null}),
    ] {
        let (status, answer) = send(raw.api(Method::POST, "/users/").json(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!answer.to_string().contains("No Name"));
    }
    let (status, _) = send(raw.api(Method::POST, "/users/").body("not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(sb.users().is_empty());
    sb.shutdown().await;
}

#[tokio::test]
async fn a_batch_holds_1_to_1000_users() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let batch = |n: usize| {
        let users: Vec<Value> = (0..n)
            .map(|i| json!({"username": format!("u{i}@example.com")}))
            .collect();
        raw.api(Method::POST, "/users/batch")
            .json(&json!({"users": users}))
    };

    for n in [0, 1_001] {
        let (status, body) = send(batch(n)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{n} users");
        assert!(body["message"].is_string());
    }
    for body in [json!({}), json!({"users": "a@example.com"}), json!([])] {
        let status = send(raw.api(Method::POST, "/users/batch").json(&body))
            .await
            .0;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(sb.users().is_empty());

    let (status, body) = send(batch(1_000)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"message": "success", "invalidUsers": []}));
    assert_eq!(sb.users().len(), 1_000);
    assert_eq!(sb.stats().creates, 1_000);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_batch_reports_taken_repeated_and_unnamed_users() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    sb.insert_user("taken@example.com", None);

    let (status, body) = send(
        raw.api(Method::POST, "/users/batch")
            .json(&json!({"users": [
                {"username": "new@example.com", "fullName": "New"},
                {"username": "TAKEN@example.com"},
                {"fullName": "No Name"},
                {"username": "New@Example.com", "fullName": "Again"},
                {"username": "   "},
                {"username": null, "fullName": null},
                {"username": "other@example.com"},
            ]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"message": "success", "invalidUsers": [
            {"username": "TAKEN@example.com"},
            {"fullName": "Missing Username"},
            {"username": "New@Example.com"},
            {"fullName": "Missing Username"},
            {"fullName": "Missing Username"},
        ]})
    );
    let mut names: Vec<String> = sb.users().into_iter().map(|u| u.username).collect();
    names.sort();
    assert_eq!(
        names,
        ["new@example.com", "other@example.com", "taken@example.com"]
    );
    let stats = sb.stats();
    assert_eq!(stats.creates, 2, "the seeded user is not an API create");
    assert_eq!(stats.duplicate_attempts, 2);

    // Nothing valid: 400, nothing created.
    let (status, body) = send(
        raw.api(Method::POST, "/users/batch")
            .json(&json!({"users": [
                {"username": "new@example.com"}, {"fullName": "Nobody"},
            ]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, json!({"message": "No valid users provided"}));
    assert_eq!(sb.users().len(), 3);

    // The crate's client reads the same answer.
    let outcome = client(&sb, KEY)
        .create_users_batch(&[
            new_user("third@example.com", None),
            new_user("NEW@example.com", None),
        ])
        .await
        .expect("batch");
    assert_eq!(
        outcome.invalid,
        [InvalidBatchUser::Username(Username::from_api(
            "new@example.com"
        ))]
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn users_are_found_by_id_and_by_username_in_any_case() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let (_, created) = send(
        raw.api(Method::POST, "/users/")
            .json(&json!({"username": "ada+x@example.com", "fullName": "Ada"})),
    )
    .await;
    let id = created["userId"].as_str().expect("a userId").to_owned();
    let expected = json!({"userId": id, "username": "ada+x@example.com", "fullName": "Ada"});

    for key in [id.as_str(), "ada+x@example.com", "ADA+X@Example.COM"] {
        assert_eq!(
            send(raw.api(Method::GET, &format!("/users/{key}"))).await,
            (StatusCode::OK, expected.clone()),
            "{key}"
        );
    }
    assert_eq!(
        send(raw.api(Method::GET, "/users")).await,
        (StatusCode::OK, json!({"data": [expected.clone()]}))
    );
    // An undocumented filter is accepted and does not change the answer.
    let status = send(raw.api(Method::GET, "/users?parentWorkflowId=wf-1"))
        .await
        .0;
    assert_eq!(status, StatusCode::OK);

    let (status, token) = send(raw.api(Method::GET, &format!("/users/{id}/token"))).await;
    assert_eq!(status, StatusCode::OK);
    let token = token["token"].as_str().expect("a token");
    assert_eq!(token.split('.').count(), 3, "JWT-shaped");
    assert!(!token.contains("ada"));

    let api = client(&sb, KEY);
    let username = Username::from_email("ADA+X@example.com").expect("email");
    let found = api
        .get_user(UserRef::Username(&username))
        .await
        .expect("by name");
    assert_eq!(found.user_id.as_str(), id);
    sb.shutdown().await;
}

#[tokio::test]
async fn unknown_users_and_routes_are_404() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    sb.insert_user("known@example.com", None);
    let not_found = json!({"message": "User not found"});

    let requests = [
        raw.api(Method::GET, "/users/no-such-user"),
        raw.api(Method::PUT, "/users/no-such-user")
            .json(&json!({"fullName": "X"})),
        raw.api(Method::DELETE, "/users/no-such-user"),
        raw.api(Method::GET, "/users/no-such-user/token"),
        raw.api(Method::DELETE, "/users/no-such-user/logs"),
        // Updates, deletes and tokens take an id, not a username.
        raw.api(Method::PUT, "/users/known@example.com")
            .json(&json!({"fullName": "X"})),
        raw.api(Method::DELETE, "/users/known@example.com"),
        raw.api(Method::GET, "/users/known@example.com/token"),
    ];
    for request in requests {
        assert_eq!(
            send(request).await,
            (StatusCode::NOT_FOUND, not_found.clone())
        );
    }
    assert_eq!(sb.users().len(), 1);
    assert_eq!(sb.users()[0].full_name, None);

    let (status, body) = send(raw.api(Method::GET, "/workflows")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string());
    assert_eq!(sb.stats().count(routes::OTHER, 404), 1);
    sb.shutdown().await;
}

#[tokio::test]
async fn updates_change_names_and_renames_follow_the_configured_rule() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let ada = sb.insert_user("ada@example.com", Some("Ada"));
    sb.insert_user("grace@example.com", None);
    let put = |body: Value| raw.api(Method::PUT, &format!("/users/{ada}")).json(&body);

    let (status, body) = send(put(json!({"fullName": "Augusta Ada King"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"userId": ada, "username": "ada@example.com", "fullName": "Augusta Ada King"})
    );

    // A taken name, in any case, answers the duplicate status.
    let (status, body) = send(put(json!({"username": "GRACE@example.com"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!body.to_string().to_lowercase().contains("grace"));
    let status = send(put(json!({"username": "  "}))).await.0;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = send(put(json!({"username": "countess@example.com"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["username"], "countess@example.com");
    let status = send(raw.api(Method::GET, "/users/ada@example.com")).await.0;
    assert_eq!(status, StatusCode::NOT_FOUND, "the old name is free");
    let status = send(raw.api(Method::GET, "/users/countess@example.com"))
        .await
        .0;
    assert_eq!(status, StatusCode::OK);

    // `null` clears the full name.
    let (_, body) = send(put(json!({"fullName": null}))).await;
    assert_eq!(body["fullName"], Value::Null);

    sb.update_faults(FaultUpdate {
        refuse_rename: Some(true),
        ..FaultUpdate::default()
    });
    let (status, body) = send(put(json!({"username": "lovelace@example.com"}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!body.to_string().contains("lovelace"));
    // A change of letter case only is not a rename.
    let (status, body) = send(put(json!({"username": "Countess@Example.com"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["username"], "Countess@Example.com");
    sb.shutdown().await;
}

#[tokio::test]
async fn a_burst_is_rate_limited_with_and_without_retry_after() {
    for with_header in [true, false] {
        let sb = sandbox(common::rate_limited(5, with_header)).await;
        let raw = Raw::new(&sb);
        let responses =
            futures::future::join_all((0..60).map(|_| raw.api(Method::GET, "/users").send())).await;
        let mut ok = 0;
        let mut limited = 0;
        for response in responses {
            let response = response.expect("an answer");
            match response.status() {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    let retry_after = response.headers().get("retry-after");
                    assert_eq!(retry_after.is_some(), with_header);
                    if let Some(value) = retry_after {
                        let seconds: u64 = value
                            .to_str()
                            .expect("ASCII")
                            .parse()
                            .expect("whole seconds");
                        assert!(seconds >= 1, "{seconds}");
                    }
                }
                other => panic!("unexpected {other}"),
            }
        }
        // 60 requests on loopback take far less than the 12 seconds it
        // would need for all of them to be admitted at 5 per second.
        assert!(ok >= 5 && limited >= 1, "{ok} admitted, {limited} limited");
        let stats = sb.stats();
        assert!(stats.max_admitted_per_second <= 5, "{stats:?}");
        assert!(stats.max_admitted_per_second >= 1, "{stats:?}");
        // A 429 means the window already held 5 admitted requests.
        assert!(stats.max_received_per_second >= 6, "{stats:?}");
        assert_eq!(stats.rate_limited, limited);
        assert_eq!(stats.count(routes::LIST, 429), limited);
        assert_eq!(stats.total_requests, 60);

        // Once a full second has passed, requests are admitted again.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        assert_eq!(send(raw.api(Method::GET, "/users")).await.0, StatusCode::OK);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn injected_failures_answer_5xx_and_change_nothing() {
    let sb = sandbox(SandboxOptions {
        fail_rate: 1.0,
        ..SandboxOptions::default()
    })
    .await;
    let raw = Raw::new(&sb);
    let ada = sb.insert_user("ada@example.com", Some("Ada"));

    let requests = [
        raw.api(Method::POST, "/users/")
            .json(&json!({"username": "new@example.com"})),
        raw.api(Method::POST, "/users/batch")
            .json(&json!({"users": [{"username": "b@example.com"}]})),
        raw.api(Method::PUT, &format!("/users/{ada}"))
            .json(&json!({"fullName": "Changed"})),
        raw.api(Method::DELETE, &format!("/users/{ada}")),
        // Before anything: a bad key is not even looked at.
        raw.bare(Method::GET, "/users"),
    ];
    for request in requests {
        let status = request.send().await.expect("an answer").status();
        assert!(
            matches!(status.as_u16(), 500 | 502 | 503),
            "expected an injected 5xx, got {status}"
        );
    }
    let users = sb.users();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].full_name.as_deref(), Some("Ada"));
    let stats = sb.stats();
    assert_eq!(stats.failed, 5);
    assert_eq!(stats.creates, 0);

    sb.update_faults(FaultUpdate {
        fail_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    assert_eq!(send(raw.api(Method::GET, "/users")).await.0, StatusCode::OK);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_dropped_mutation_is_applied_then_its_connection_cut() {
    let sb = sandbox(answers_lost()).await;
    let raw = Raw::new(&sb);

    let cut = |request: RequestBuilder| async move {
        let error = request.send().await.expect_err("the connection is cut");
        assert!(!error.is_status() && !error.is_timeout(), "{error:?}");
    };
    cut(raw
        .api(Method::POST, "/users/")
        .json(&json!({"username": "lost@example.com"})))
    .await;
    let users = sb.users();
    assert_eq!(users.len(), 1, "the create was applied");
    let id = users[0].user_id.clone();

    // Reads are never cut.
    let (status, body) = send(raw.api(Method::GET, &format!("/users/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["username"], "lost@example.com");

    cut(raw
        .api(Method::PUT, &format!("/users/{id}"))
        .json(&json!({"fullName": "Found"})))
    .await;
    assert_eq!(sb.users()[0].full_name.as_deref(), Some("Found"));
    cut(raw
        .api(Method::POST, "/users/batch")
        .json(&json!({"users": [{"username": "b@example.com"}]})))
    .await;
    assert_eq!(sb.users().len(), 2);
    cut(raw.api(Method::DELETE, &format!("/users/{id}/logs"))).await;
    cut(raw.api(Method::DELETE, &format!("/users/{id}"))).await;
    assert_eq!(sb.users().len(), 1, "the delete was applied");

    let stats = sb.stats();
    assert_eq!(stats.dropped, 5);
    assert_eq!(stats.creates, 2);
    assert_eq!(stats.count(routes::CREATE, 0), 1);
    assert_eq!(stats.count(routes::DELETE, 0), 1);
    assert_eq!(stats.count(routes::GET, 200), 1);
    sb.shutdown().await;
}

#[tokio::test]
async fn every_create_is_journaled_deleted_users_and_batches_included() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, KEY);
    let first = api
        .create_user(&new_user("one@example.com", Some("One")))
        .await
        .expect("created");
    api.delete_user(&first).await.expect("deleted");
    // Created again after its deletion: a second entry, as it should be.
    api.create_user(&new_user("one@example.com", None))
        .await
        .expect("created again");
    api.create_users_batch(&[new_user("two@example.com", None)])
        .await
        .expect("batch");
    sb.insert_user("seeded@example.com", None);
    let refused = api.create_user(&new_user("ONE@example.com", None)).await;
    assert!(refused.is_err(), "a taken username is refused");

    let created: Vec<(String, Option<String>)> = sb
        .created()
        .into_iter()
        .map(|u| (u.username, u.full_name))
        .collect();
    assert_eq!(
        created,
        [
            ("one@example.com".into(), Some("One".into())),
            ("one@example.com".into(), None),
            ("two@example.com".into(), None),
        ]
    );
    assert_eq!(sb.created()[0].user_id, first.as_str());
    sb.shutdown().await;
}

#[tokio::test]
async fn admin_routes_need_no_key_and_are_not_counted() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);

    let (status, body) = send(
        raw.bare(Method::POST, "/_admin/users")
            .json(&json!({"username": "seeded@example.com", "fullName": "Seeded"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = body["userId"].as_str().expect("a userId").to_owned();
    // Seeding an existing name returns its holder.
    let (_, again) = send(
        raw.bare(Method::POST, "/_admin/users")
            .json(&json!({"username": "SEEDED@example.com"})),
    )
    .await;
    assert_eq!(again["userId"], id.as_str());
    let status = send(raw.bare(Method::POST, "/_admin/users").json(&json!({})))
        .await
        .0;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(
        send(raw.bare(Method::GET, "/_admin/users")).await,
        (
            StatusCode::OK,
            json!([{"userId": id, "username": "seeded@example.com", "fullName": "Seeded"}])
        )
    );

    let faults = |body: Value| raw.bare(Method::PUT, "/_admin/faults").json(&body);
    assert_eq!(
        send(faults(json!({"fail_rate": 1.0}))).await.0,
        StatusCode::NO_CONTENT
    );
    let status = send(raw.api(Method::GET, "/users")).await.0;
    assert!(status.is_server_error(), "{status}");
    for invalid in [
        json!({"fail_rate": 2.0}),
        json!({"duplicate_status": 418}),
        json!({"failRate": 0.0}),
        json!({"api_key": ""}),
    ] {
        let (status, body) = send(faults(invalid.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{invalid}");
        assert!(body["message"].is_string());
    }
    let status = send(faults(
        json!({"fail_rate": 0.0, "rate_limit": null, "api_key": "rotated"}),
    ))
    .await
    .0;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        send(raw.api(Method::GET, "/users")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let rotated = raw
        .bare(Method::GET, "/users")
        .bearer_auth("rotated")
        .header("x-api-version", "2025-09");
    assert_eq!(send(rotated).await.0, StatusCode::OK);

    let (status, body) = send(raw.bare(Method::GET, "/_admin/stats")).await;
    assert_eq!(status, StatusCode::OK);
    let stats: SandboxStats = serde_json::from_value(body).expect("stats JSON");
    assert_eq!(stats, sb.stats());
    assert_eq!(stats.total_requests, 3, "admin calls are not counted");
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.count(routes::LIST, 401), 1);

    // A cross-site form post (no JSON content type) changes nothing.
    for (method, path) in [
        (Method::POST, "/_admin/reset"),
        (Method::POST, "/_admin/users"),
        (Method::PUT, "/_admin/faults"),
    ] {
        let form = raw
            .bare(method.clone(), path)
            .header("content-type", "application/x-www-form-urlencoded")
            .body("username=x%40example.com&fail_rate=1");
        assert_eq!(
            send(form).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path}"
        );
        assert_eq!(
            send(raw.bare(method, path)).await.0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{path} without a content type"
        );
    }
    assert_eq!(sb.users().len(), 1, "nothing was wiped or added");
    assert_eq!(sb.stats().total_requests, 3);

    assert_eq!(
        send(raw.bare(Method::POST, "/_admin/reset").json(&json!({})))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert!(sb.users().is_empty());
    assert_eq!(sb.stats(), SandboxStats::default());
    sb.shutdown().await;
}

#[tokio::test]
async fn an_admin_token_when_set_guards_every_admin_route() {
    let sb = sandbox(SandboxOptions {
        admin_token: Some("admin-secret".into()),
        ..SandboxOptions::default()
    })
    .await;
    let raw = Raw::new(&sb);
    for (method, path) in [
        (Method::GET, "/_admin/stats"),
        (Method::GET, "/_admin/users"),
        (Method::POST, "/_admin/reset"),
        (Method::PUT, "/_admin/faults"),
    ] {
        let bare = raw.bare(method.clone(), path).json(&json!({}));
        assert_eq!(send(bare).await.0, StatusCode::UNAUTHORIZED, "{path}");
        let wrong = raw
            .bare(method, path)
            .bearer_auth("not-it")
            .json(&json!({}));
        assert_eq!(send(wrong).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let seeded = raw
        .bare(Method::POST, "/_admin/users")
        .bearer_auth("admin-secret")
        .json(&json!({"username": "seeded@example.com"}));
    assert_eq!(send(seeded).await.0, StatusCode::OK);
    assert_eq!(sb.users().len(), 1);
    // The API itself still takes the API key, not the admin token.
    assert_eq!(send(raw.api(Method::GET, "/users")).await.0, StatusCode::OK);
    sb.shutdown().await;
}

#[tokio::test]
async fn the_key_can_be_rotated_and_revoked_at_run_time() {
    let sb = sandbox(SandboxOptions::default()).await;
    let old = client(&sb, KEY);
    let new = client(&sb, "next-key");
    assert!(old.list_users().await.is_ok());
    assert_eq!(
        new.list_users().await,
        Err(ApiError::Unauthorized { status: 401 })
    );

    sb.update_faults(FaultUpdate {
        api_key: Some("next-key".into()),
        ..FaultUpdate::default()
    });
    assert_eq!(
        old.list_users().await,
        Err(ApiError::Unauthorized { status: 401 })
    );
    assert!(new.list_users().await.is_ok());

    // An invalid update changes nothing, not even its valid fields.
    let err = sb
        .try_update_faults(FaultUpdate {
            api_key: Some(KEY.into()),
            drop_rate: Some(7.0),
            ..FaultUpdate::default()
        })
        .expect_err("invalid drop rate");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("drop_rate"), "{err}");
    assert!(new.list_users().await.is_ok());
    sb.shutdown().await;
}

#[tokio::test]
async fn invalid_options_are_refused_at_start() {
    let cases = [
        (
            "duplicate_status",
            SandboxOptions {
                duplicate_status: 418,
                ..SandboxOptions::default()
            },
        ),
        (
            "fail_rate",
            SandboxOptions {
                fail_rate: 1.5,
                ..SandboxOptions::default()
            },
        ),
        (
            "fail_rate",
            SandboxOptions {
                fail_rate: f64::NAN,
                ..SandboxOptions::default()
            },
        ),
        (
            "drop_rate",
            SandboxOptions {
                drop_rate: -0.1,
                ..SandboxOptions::default()
            },
        ),
        (
            "api_key",
            SandboxOptions {
                api_key: " ".into(),
                ..SandboxOptions::default()
            },
        ),
    ];
    for (field, options) in cases {
        let err = Sandbox::start("127.0.0.1:0".parse().expect("address"), options)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{field}");
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[tokio::test]
async fn the_same_seed_replays_the_same_faults_and_ids() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let sb = sandbox(SandboxOptions {
            fail_rate: 0.5,
            seed: Some(42),
            ..SandboxOptions::default()
        })
        .await;
        let raw = Raw::new(&sb);
        let id = sb.insert_user("seeded@example.com", None);
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(send(raw.api(Method::GET, "/users")).await.0.as_u16());
        }
        runs.push((id, statuses));
        sb.shutdown().await;
    }
    assert_eq!(runs[0], runs[1]);
    let statuses = &runs[0].1;
    assert!(
        statuses.contains(&200) && statuses.iter().any(|s| *s >= 500),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn workflow_logs_outlive_a_user_deleted_before_them() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, KEY);
    let careful = api
        .create_user(&new_user("careful@example.com", None))
        .await
        .expect("created");
    let careless = api
        .create_user(&new_user("careless@example.com", None))
        .await
        .expect("created");
    assert!(
        sb.workflow_logs(careful.as_str()) > 0,
        "a create makes logs"
    );
    assert!(sb.workflow_logs(careless.as_str()) > 0);

    // Logs first, then the user: nothing is left behind.
    api.delete_user_logs(&careful).await.expect("logs");
    assert_eq!(sb.workflow_logs(careful.as_str()), 0);
    api.delete_user(&careful).await.expect("delete");
    assert_eq!(sb.stats().deleted_with_logs, 0);
    // Deleting them again finds them gone with the user.
    assert_eq!(
        api.delete_user_logs(&careful).await,
        Err(ApiError::NotFound)
    );

    // The user first: its logs stay, out of reach, and are counted.
    api.delete_user(&careless).await.expect("delete");
    assert_eq!(sb.stats().deleted_with_logs, 1);
    assert_eq!(
        api.delete_user_logs(&careless).await,
        Err(ApiError::NotFound)
    );
    assert!(sb.workflow_logs(careless.as_str()) > 0);
    sb.shutdown().await;
}

#[tokio::test]
async fn requests_are_counted_by_route_and_status() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, KEY);
    let id = api
        .create_user(&new_user("ada@example.com", None))
        .await
        .expect("created");
    api.create_users_batch(&[new_user("b@example.com", None)])
        .await
        .expect("batch");
    api.list_users().await.expect("list");
    let held = api.get_user(UserRef::Id(&id)).await.expect("get").profile();
    let update = UserUpdate {
        held,
        username: None,
        full_name: None,
    };
    api.update_user(&id, &update).await.expect("update");
    api.user_token(&id).await.expect("token");
    api.delete_user_logs(&id).await.expect("logs");
    api.delete_user(&id).await.expect("delete");
    assert_eq!(api.delete_user(&id).await, Err(ApiError::NotFound));

    let stats = sb.stats();
    for route in [
        routes::CREATE,
        routes::BATCH,
        routes::LIST,
        routes::GET,
        routes::UPDATE,
        routes::TOKEN,
        routes::DELETE_LOGS,
    ] {
        assert_eq!(stats.count(route, 200), 1, "{route}: {stats:?}");
        assert_eq!(stats.route_total(route), 1, "{route}");
    }
    assert_eq!(stats.count(routes::DELETE, 200), 1);
    assert_eq!(stats.count(routes::DELETE, 404), 1);
    assert_eq!(stats.route_total(routes::DELETE), 2);
    assert_eq!(stats.total_requests, 9);
    assert_eq!(stats.creates, 2);
    assert!(stats.max_received_per_second >= 1);

    sb.reset_stats();
    assert_eq!(sb.stats(), SandboxStats::default());
    assert_eq!(sb.users().len(), 1, "resetting stats keeps users");
    sb.shutdown().await;
}

#[tokio::test]
async fn latency_delays_every_api_request() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    sb.update_faults(FaultUpdate {
        latency_ms: Some(300),
        ..FaultUpdate::default()
    });
    let started = Instant::now();
    assert_eq!(send(raw.api(Method::GET, "/users")).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    sb.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_the_port() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    // Leaves a kept-alive connection in the client's pool.
    assert_eq!(send(raw.api(Method::GET, "/users")).await.0, StatusCode::OK);
    let addr = sb.addr();
    tokio::time::timeout(Duration::from_secs(10), sb.shutdown())
        .await
        .expect("shutdown does not wait for idle connections");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A user the sandbox prints carries a tag of its username, never the
/// username or the name: the same tag for the same username, another for
/// another.
#[test]
fn a_user_prints_a_tag_of_its_username_and_no_name() {
    let user = |username: &str| SandboxUser {
        user_id: "u-1".into(),
        username: username.into(),
        full_name: Some("Ada Lovelace".into()),
    };
    let printed = format!("{:?}", user("Ada@Example.com"));
    assert!(!printed.contains("Ada"), "{printed}");
    assert!(!printed.contains("Example"), "{printed}");
    let tag = |printed: &str| {
        let start = printed.find('#').expect("a tag") + 1;
        printed[start..start + 12].to_owned()
    };
    let ada = tag(&printed);
    assert!(ada.chars().all(|c| c.is_ascii_hexdigit()), "{printed}");
    assert_eq!(ada, tag(&format!("{:?}", user("Ada@Example.com"))));
    assert_ne!(ada, tag(&format!("{:?}", user("bob@example.com"))));
}

// ---------------------------------------------------------------------------
// Every version at once, over one set of users
// ---------------------------------------------------------------------------

impl Raw {
    /// With the key only: what a client of a version in the path sends.
    fn keyed(&self, method: Method, path: &str) -> RequestBuilder {
        self.bare(method, path).bearer_auth(KEY)
    }
}

#[tokio::test]
async fn every_version_serves_the_same_users_and_counts_its_requests() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let (status, created) = send(
        raw.api(Method::POST, "/users/")
            .json(&json!({"username": "ada@example.com", "fullName": "Ada"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let ada = created["userId"].as_str().expect("an id").to_owned();

    // The versions in the path: the shapes of 2025-09, no header.
    for v in ["2024-03", "2023-12"] {
        let (status, user) = send(raw.keyed(Method::GET, &format!("/{v}/users/{ada}"))).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            user,
            json!({"userId": ada, "username": "ada@example.com", "fullName": "Ada"})
        );
        let (status, user) =
            send(raw.keyed(Method::GET, &format!("/{v}/users/ADA@example.com"))).await;
        assert_eq!(
            (status, &user["userId"]),
            (StatusCode::OK, &json!(ada)),
            "{v}"
        );
    }
    // Forge: `_id` and `email`, a user's workflows with it.
    let (status, user) = send(raw.keyed(Method::GET, &format!("/forge/2021-12/user/{ada}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        user,
        json!({"_id": ada, "email": "ada@example.com", "fullName": "Ada", "workflows": []})
    );
    let (status, list) = send(raw.keyed(Method::GET, "/forge/2021-12/user")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        json!({"data": [{"_id": ada, "email": "ada@example.com", "fullName": "Ada"}]})
    );
    // A Forge create is a user of every version.
    let (status, created) = send(
        raw.keyed(Method::POST, "/forge/2021-12/user")
            .json(&json!({"name": "Bob", "email": "bob@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let bob = created["userId"].as_str().expect("an id").to_owned();
    let (status, user) = send(raw.api(Method::GET, "/users/bob@example.com")).await;
    assert_eq!((status, &user["userId"]), (StatusCode::OK, &json!(bob)));
    // A create at /2024-03/users (no slash) and a PATCH of Forge's.
    let (status, _) = send(
        raw.keyed(Method::POST, "/2024-03/users")
            .json(&json!({"username": "cy@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, user) = send(
        raw.keyed(Method::PATCH, &format!("/forge/2021-12/user/{bob}"))
            .json(&json!({"email": "bob@example.com", "fullName": "Robert"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["fullName"], "Robert");
    assert_eq!(sb.users().len(), 3);

    // Counted by call, whatever the version, and by version.
    let stats = sb.stats();
    assert_eq!(stats.count(routes::CREATE, 200), 3);
    assert_eq!(
        stats.count(routes::UPDATE, 200),
        1,
        "Forge's PATCH is the update"
    );
    assert_eq!(stats.version_count("2025-09", routes::CREATE), 1);
    assert_eq!(stats.version_count("2024-03", routes::CREATE), 1);
    assert_eq!(stats.version_count("2021-12", routes::CREATE), 1);
    assert_eq!(stats.version_count("2021-12", routes::UPDATE), 1);
    assert_eq!(stats.version_total("2024-03"), 3);
    assert_eq!(stats.version_total("2023-12"), 2);
    assert_eq!(stats.version_total("2021-12"), 4);
    assert_eq!(stats.version_total("2025-09"), 2);
    assert_eq!(stats.total_requests, 11);
    sb.shutdown().await;
}

#[tokio::test]
async fn each_version_refuses_what_its_documentation_says_it_needs() {
    let sb = sandbox(SandboxOptions::default()).await;
    let raw = Raw::new(&sb);
    let ada = sb.insert_user("ada@example.com", None);
    let refused = |(status, body): (StatusCode, Value), needle: &str| {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(needle), "{message}");
    };

    // 2025-09 needs its header; the versions in the path take none.
    refused(
        send(raw.keyed(Method::GET, "/users")).await,
        "x-api-version",
    );
    for v in ["2024-03", "2023-12"] {
        let with_header = raw
            .api(Method::GET, &format!("/{v}/users"))
            .header("x-api-version", v);
        refused(send(with_header).await, "send no x-api-version");
        let (status, _) = send(raw.keyed(Method::GET, &format!("/{v}/users"))).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        // An unknown route there is that version's 404, not a missing header.
        let (status, _) = send(raw.keyed(Method::GET, &format!("/{v}/workflows"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    }
    refused(
        send(raw.api(Method::GET, "/forge/2021-12/user")).await,
        "send no x-api-version",
    );

    // Forge: a create needs `name` and `email`, a PATCH `email` and `fullName`.
    for body in [
        json!({"email": "new@example.com"}),
        json!({"name": null, "email": "new@example.com"}),
        json!({"name": "New"}),
        json!({"username": "new@example.com", "fullName": "New"}),
    ] {
        let create = raw.keyed(Method::POST, "/forge/2021-12/user").json(&body);
        refused(send(create).await, "name and email are required");
    }
    refused(
        send(
            raw.keyed(Method::POST, "/forge/2021-12/user")
                .json(&json!({"name": "New", "email": "  "})),
        )
        .await,
        "email is required",
    );
    assert_eq!(sb.users().len(), 1, "a refused create makes nothing");
    let (status, _) = send(
        raw.keyed(Method::POST, "/forge/2021-12/user")
            .json(&json!({"name": "", "email": "new@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an empty name is a name");
    for body in [
        json!({"fullName": "Ada"}),
        json!({"email": "ada@example.com"}),
    ] {
        let patch = raw
            .keyed(Method::PATCH, &format!("/forge/2021-12/user/{ada}"))
            .json(&body);
        refused(send(patch).await, "email and fullName are required");
    }
    assert_eq!(
        sb.users()[0].full_name,
        None,
        "a refused PATCH changes nothing"
    );
    // A taken email, in any letter case, with the configured status.
    let (status, body) = send(
        raw.keyed(Method::POST, "/forge/2021-12/user")
            .json(&json!({"name": "Other", "email": "ADA@example.com"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!body.to_string().to_lowercase().contains("ada@"), "{body}");

    // What Forge lacks is no route: by email, batch, logs.
    let not_found = StatusCode::NOT_FOUND;
    for request in [
        raw.keyed(Method::GET, "/forge/2021-12/user/ada@example.com"),
        raw.keyed(Method::DELETE, &format!("/forge/2021-12/user/{ada}/logs")),
        raw.keyed(Method::GET, "/forge/2021-12/users"),
        raw.keyed(Method::GET, &format!("/forge/2021-12/user/{ada}/nothing")),
    ] {
        assert_eq!(send(request).await.0, not_found);
    }
    let (status, _) = send(
        raw.keyed(Method::POST, "/forge/2021-12/user/batch")
            .json(&json!({"users": [{"name": "B", "email": "b@example.com"}]})),
    )
    .await;
    assert!(status.is_client_error(), "{status}");
    assert_eq!(sb.users().len(), 2);

    // The key, on every version.
    for path in ["/2024-03/users", "/2023-12/users", "/forge/2021-12/user"] {
        let status = send(raw.bare(Method::GET, path).bearer_auth("wrong"))
            .await
            .0;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let status = send(raw.bare(Method::GET, path)).await.0;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    sb.shutdown().await;
}

#[tokio::test]
async fn faults_and_the_rate_limit_apply_to_every_version_alike() {
    let sb = sandbox(SandboxOptions {
        fail_rate: 1.0,
        ..SandboxOptions::default()
    })
    .await;
    let raw = Raw::new(&sb);
    for request in [
        raw.api(Method::GET, "/users"),
        raw.keyed(Method::GET, "/2024-03/users"),
        raw.keyed(Method::GET, "/2023-12/users"),
        raw.keyed(Method::GET, "/forge/2021-12/user"),
    ] {
        assert!(send(request).await.0.is_server_error());
    }
    assert_eq!(sb.stats().failed, 4);
    for v in ["2025-09", "2024-03", "2023-12", "2021-12"] {
        assert_eq!(sb.stats().version_total(v), 1, "{v}");
    }

    // One window for all: a limit of 3 a second, spent across versions.
    sb.update_faults(FaultUpdate {
        fail_rate: Some(0.0),
        rate_limit: Some(Some(3)),
        ..FaultUpdate::default()
    });
    sb.reset_stats();
    let statuses = [
        send(raw.keyed(Method::GET, "/forge/2021-12/user")).await.0,
        send(raw.keyed(Method::GET, "/2024-03/users")).await.0,
        send(raw.api(Method::GET, "/users")).await.0,
        send(raw.keyed(Method::GET, "/2023-12/users")).await.0,
    ];
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);

    // A Forge create whose answer is cut was applied.
    sb.update_faults(FaultUpdate {
        rate_limit: Some(None),
        drop_rate: Some(1.0),
        ..FaultUpdate::default()
    });
    let cut = raw
        .keyed(Method::POST, "/forge/2021-12/user")
        .json(&json!({"name": "Cut", "email": "cut@example.com"}))
        .send()
        .await;
    assert!(cut.is_err(), "the connection is cut");
    assert_eq!(sb.users().len(), 1);

    // Requests for one user overlap whichever versions they come by.
    sb.update_faults(FaultUpdate {
        drop_rate: Some(0.0),
        latency_ms: Some(200),
        ..FaultUpdate::default()
    });
    let id = sb.users()[0].user_id.clone();
    let (a, b) = tokio::join!(
        send(raw.keyed(Method::GET, &format!("/2024-03/users/{id}"))),
        send(raw.keyed(Method::GET, &format!("/forge/2021-12/user/{id}"))),
    );
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(sb.stats().overlapping_user_requests, 1);
    assert_eq!(sb.stats().version_count("2021-12", routes::CREATE), 1);
    assert_eq!(sb.stats().count(routes::CREATE, 0), 1, "counted as cut");
    sb.shutdown().await;
}

/// The `sandbox` subcommand's options, parsed on their own.
#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: SandboxArgs,
}

#[test]
fn command_line_options() {
    let cli = Cli::try_parse_from([
        "sandbox",
        "--bind",
        "127.0.0.1:0",
        "--api-key",
        "cli-key",
        "--rate-limit",
        "50",
        "--no-retry-after",
        "--fail-rate",
        "0.1",
        "--drop-rate",
        "0.2",
        "--latency-ms",
        "30",
        "--duplicate-status",
        "422",
        "--refuse-rename",
        "--seed",
        "9",
    ])
    .expect("parses");
    let options = cli.args.options();
    assert_eq!(options.api_key, "cli-key");
    assert_eq!(options.rate_limit, Some(50));
    assert!(!options.retry_after);
    assert_eq!((options.fail_rate, options.drop_rate), (0.1, 0.2));
    assert_eq!(options.latency, Duration::from_millis(30));
    assert_eq!(options.duplicate_status, 422);
    assert!(options.refuse_rename);
    assert_eq!(options.seed, Some(9));
    assert!(
        !format!("{cli:?} {options:?}").contains("cli-key"),
        "the key never prints"
    );

    let defaults = Cli::try_parse_from(["sandbox", "--api-key", "k"]).expect("parses");
    assert_eq!(
        defaults.args.bind,
        "127.0.0.1:8787".parse().expect("address")
    );
    let options = defaults.args.options();
    let default = SandboxOptions::default();
    assert_eq!(options.rate_limit, default.rate_limit);
    assert_eq!(options.retry_after, default.retry_after);
    assert_eq!(options.duplicate_status, default.duplicate_status);
    assert_eq!((options.fail_rate, options.drop_rate), (0.0, 0.0));

    for bad in [
        ["--duplicate-status", "418"],
        ["--fail-rate", "1.5"],
        ["--drop-rate", "-1"],
        ["--rate-limit", "many"],
    ] {
        assert!(
            Cli::try_parse_from(["sandbox", bad[0], bad[1]]).is_err(),
            "accepted {bad:?}"
        );
    }

    let help = Cli::command().render_long_help().to_string();
    for flag in [
        "--rate-limit",
        "--duplicate-status",
        "400, 409, 422",
        "SANDBOX_API_KEY",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

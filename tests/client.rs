//! The Embedded API client against the sandbox, over real HTTP: every call
//! and every outcome the caller must act on.

use std::time::Duration;

mod common;

use common::{answers_lost, new_user};
use secrecy::{ExposeSecret, SecretString};
use user_sync::config::EmbeddedSettings;
use user_sync::domain::{EmbeddedUserId, FullName, Username};
use user_sync::embedded::{
    ApiError, EmbeddedClient, InvalidBatchUser, NewUser, UnavailableCause, UserRef, UserUpdate,
};
use user_sync_sandbox::{FaultUpdate, Sandbox, SandboxOptions};

const KEY: &str = "test-key";

async fn sandbox(options: SandboxOptions) -> Sandbox {
    common::sandbox_accepting(KEY, options).await
}

fn client_with_key(sandbox: &Sandbox, key: &str) -> EmbeddedClient {
    common::client_of(sandbox, key, Some(Duration::from_secs(2)))
}

fn client(sandbox: &Sandbox) -> EmbeddedClient {
    client_with_key(sandbox, KEY)
}

#[tokio::test]
async fn create_get_update_token_logs_delete() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb);

    let id = api
        .create_user(&new_user("Ada@Example.com", Some("Ada Lovelace")))
        .await
        .expect("created");
    let by_id = api.get_user(UserRef::Id(&id)).await.expect("by id");
    assert_eq!(by_id.user_id, id);
    assert_eq!(by_id.username.as_str(), "ada@example.com");
    assert_eq!(
        by_id.full_name.as_ref().map(FullName::as_str),
        Some("Ada Lovelace")
    );

    let username = Username::from_email("ada@example.com").expect("email");
    let by_name = api
        .get_user(UserRef::Username(&username))
        .await
        .expect("by name");
    assert_eq!(by_name.user_id, id);

    let updated = api
        .update_user(
            &id,
            &UserUpdate {
                username: None,
                full_name: FullName::parse_optional(Some("Augusta Ada King")).expect("name"),
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        updated.full_name.as_ref().map(FullName::as_str),
        Some("Augusta Ada King")
    );

    let token = api.user_token(&id).await.expect("token");
    assert_eq!(
        token.expose_secret().split('.').count(),
        3,
        "a JWT-shaped token"
    );
    api.delete_user_logs(&id).await.expect("logs deleted");

    let listed = api.list_users().await.expect("list");
    assert_eq!(listed.len(), 1);

    api.delete_user(&id).await.expect("deleted");
    assert_eq!(api.delete_user(&id).await, Err(ApiError::NotFound));
    assert_eq!(
        api.get_user(UserRef::Id(&id)).await,
        Err(ApiError::NotFound)
    );
    assert!(api.list_users().await.expect("list").is_empty());

    let stats = sb.stats();
    assert_eq!(stats.creates, 1);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_taken_username_is_rejected_with_the_configured_status() {
    for status in [400u16, 409, 422] {
        let sb = sandbox(SandboxOptions {
            duplicate_status: status,
            ..SandboxOptions::default()
        })
        .await;
        let api = client(&sb);
        api.create_user(&new_user("grace@example.com", None))
            .await
            .expect("first create");
        let err = api
            .create_user(&new_user("GRACE@example.com", Some("Grace")))
            .await
            .expect_err("duplicate refused");
        match &err {
            ApiError::Rejected {
                status: got,
                message,
            } => {
                assert_eq!(*got, status);
                assert!(!message.contains("grace@example.com"), "{message}");
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        assert!(!err.is_retryable());
        assert!(!err.to_string().contains("grace@example.com"));
        assert_eq!(sb.stats().duplicate_attempts, 1);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn a_refused_rename_is_rejected_not_retried() {
    let sb = sandbox(SandboxOptions {
        refuse_rename: true,
        ..SandboxOptions::default()
    })
    .await;
    let api = client(&sb);
    let id = api
        .create_user(&new_user("old@example.com", None))
        .await
        .expect("created");
    let err = api
        .update_user(
            &id,
            &UserUpdate {
                username: Some(Username::from_email("new@example.com").expect("email")),
                full_name: None,
            },
        )
        .await
        .expect_err("rename refused");
    assert!(
        matches!(err, ApiError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn batch_create_reports_invalid_users() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb);
    sb.insert_user("taken@example.com", None);
    let outcome = api
        .create_users_batch(&[
            new_user("a@example.com", Some("A")),
            new_user("taken@example.com", None),
            new_user("b@example.com", None),
            new_user("A@example.com", None),
        ])
        .await
        .expect("batch");
    let mut invalid: Vec<String> = outcome
        .invalid
        .iter()
        .map(|u| match u {
            InvalidBatchUser::Username(name) => name.as_str().to_owned(),
            InvalidBatchUser::Unnamed => "<unnamed>".to_owned(),
        })
        .collect();
    invalid.sort();
    assert_eq!(invalid, ["a@example.com", "taken@example.com"]);
    assert_eq!(api.list_users().await.expect("list").len(), 3);

    let err = api
        .create_users_batch(&[new_user("taken@example.com", None)])
        .await
        .expect_err("no valid user");
    assert!(
        matches!(err, ApiError::Rejected { status: 400, .. }),
        "{err:?}"
    );

    let too_many: Vec<NewUser> = (0..1_001)
        .map(|i| new_user(&format!("u{i}@example.com"), None))
        .collect();
    let err = api
        .create_users_batch(&too_many)
        .await
        .expect_err("over 1000");
    assert!(matches!(err, ApiError::InvalidRequest(_)), "{err:?}");
    sb.shutdown().await;
}

#[tokio::test]
async fn a_bad_key_is_unauthorized_and_not_retryable() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client_with_key(&sb, "wrong-key");
    let err = api
        .create_user(&new_user("a@example.com", None))
        .await
        .expect_err("refused");
    assert_eq!(err, ApiError::Unauthorized { status: 401 });
    assert!(err.is_auth() && !err.is_retryable());
    assert!(!format!("{err} {err:?} {api:?}").contains("wrong-key"));
    assert_eq!(sb.stats().creates, 0);

    // Revoked at run time, then restored.
    let good = client(&sb);
    sb.update_faults(FaultUpdate {
        api_key: Some("rotated".into()),
        ..FaultUpdate::default()
    });
    assert!(good.list_users().await.expect_err("revoked").is_auth());
    sb.update_faults(FaultUpdate {
        api_key: Some(KEY.into()),
        ..FaultUpdate::default()
    });
    assert!(good.list_users().await.is_ok());
    sb.shutdown().await;
}

#[tokio::test]
async fn unknown_users_are_not_found() {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb);
    let ghost = EmbeddedUserId::parse("no-such-user").expect("id");
    assert_eq!(
        api.get_user(UserRef::Id(&ghost)).await,
        Err(ApiError::NotFound)
    );
    assert_eq!(api.delete_user(&ghost).await, Err(ApiError::NotFound));
    assert_eq!(
        api.user_token(&ghost).await.map(|_| ()),
        Err(ApiError::NotFound)
    );
    assert_eq!(
        api.update_user(&ghost, &UserUpdate::default())
            .await
            .map(|_| ()),
        Err(ApiError::NotFound)
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_unavailable_and_retryable() {
    let sb = sandbox(SandboxOptions {
        fail_rate: 1.0,
        ..SandboxOptions::default()
    })
    .await;
    let api = client(&sb);
    let err = api
        .create_user(&new_user("a@example.com", None))
        .await
        .expect_err("5xx");
    assert!(
        matches!(
            err,
            ApiError::Unavailable {
                cause: UnavailableCause::ServerError(500..=599)
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(sb.users().is_empty(), "a failed request changes nothing");
    sb.shutdown().await;
}

#[tokio::test]
async fn a_create_whose_answer_is_cut_was_applied_and_can_be_confirmed() {
    let sb = sandbox(answers_lost()).await;
    let api = client(&sb);
    let err = api
        .create_user(&new_user("lost@example.com", Some("Lost Answer")))
        .await
        .expect_err("connection cut");
    assert!(
        matches!(
            err,
            ApiError::Unavailable {
                cause: UnavailableCause::ConnectionCut
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable() && err.outcome_unknown());
    assert_eq!(sb.users().len(), 1, "the sandbox applied the create");
    assert_eq!(sb.stats().dropped, 1);

    sb.update_faults(FaultUpdate {
        drop_rate: Some(0.0),
        ..FaultUpdate::default()
    });
    let username = Username::from_email("lost@example.com").expect("email");
    let found = api
        .get_user(UserRef::Username(&username))
        .await
        .expect("the lost create is visible by username");
    assert_eq!(found.user_id.as_str(), sb.users()[0].user_id);
    sb.shutdown().await;
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let sb = sandbox(common::latency(1_500)).await;
    let mut settings = EmbeddedSettings::local(sb.base_url(), SecretString::from(KEY));
    settings.timeout = Duration::from_millis(300);
    let api = EmbeddedClient::new(&settings).expect("client");
    let err = api.list_users().await.expect_err("timeout");
    assert_eq!(
        err,
        ApiError::Unavailable {
            cause: UnavailableCause::Timeout
        }
    );
    sb.shutdown().await;
}

#[tokio::test]
async fn a_429_storm_is_rate_limited_with_and_without_retry_after() {
    for with_header in [true, false] {
        let sb = sandbox(common::rate_limited(5, with_header)).await;
        let api = client(&sb);
        let results = futures::future::join_all((0..40).map(|_| api.list_users())).await;
        let limited: Vec<&ApiError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert!((1..=10).contains(&ok), "{ok} admitted");
        assert!(limited.len() >= 30, "{} limited", limited.len());
        for err in limited {
            match err {
                ApiError::RateLimited { retry_after } => {
                    assert_eq!(retry_after.is_some(), with_header, "{retry_after:?}");
                    assert!(err.is_retryable());
                }
                other => panic!("expected RateLimited, got {other:?}"),
            }
        }
        let stats = sb.stats();
        assert!(stats.max_admitted_per_second <= 5, "{stats:?}");
        assert!(stats.rate_limited >= 30);
        sb.shutdown().await;
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let url = url::Url::parse(&format!("http://{addr}/")).expect("url");
    let api = EmbeddedClient::new(&EmbeddedSettings::local(url, SecretString::from(KEY)))
        .expect("client");
    let err = api.list_users().await.expect_err("nothing listens");
    assert_eq!(
        err,
        ApiError::Unavailable {
            cause: UnavailableCause::Connect
        }
    );
    assert!(!err.outcome_unknown());
}

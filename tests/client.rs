//! The Embedded API client against the sandbox, over real HTTP: every call
//! and every outcome the caller must act on, on every API version (the
//! sandbox serves them all at once).

use std::time::Duration;

mod common;

use common::{answers_lost, new_user};
use secrecy::{ExposeSecret, SecretString};
use user_sync::config::{ApiVersion, EmbeddedSettings};
use user_sync::domain::{EmbeddedUserId, FullName, Profile, Username};
use user_sync::embedded::{
    ApiError, EmbeddedClient, InvalidBatchUser, NewUser, UnavailableCause, UserRef, UserUpdate,
};
use user_sync_sandbox::{FaultUpdate, Sandbox, SandboxOptions, routes};

const KEY: &str = "test-key";

/// Runs each named test, a function of the [`ApiVersion`], on every
/// version: `name::v2025_09`, `name::v2024_03`, `name::v2023_12`,
/// `name::v2021_12`.
macro_rules! on_each_version {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use user_sync::config::ApiVersion;

                #[tokio::test]
                async fn v2025_09() {
                    super::$name(ApiVersion::V2025_09).await;
                }

                #[tokio::test]
                async fn v2024_03() {
                    super::$name(ApiVersion::V2024_03).await;
                }

                #[tokio::test]
                async fn v2023_12() {
                    super::$name(ApiVersion::V2023_12).await;
                }

                #[tokio::test]
                async fn v2021_12() {
                    super::$name(ApiVersion::V2021_12).await;
                }
            }
        )*
    };
}

on_each_version!(
    create_get_update_token_logs_delete,
    a_taken_username_is_rejected_with_the_configured_status,
    a_refused_rename_is_rejected_not_retried,
    batch_create_reports_invalid_users_where_the_version_has_it,
    a_bad_key_is_unauthorized_and_not_retryable,
    unknown_users_are_not_found,
    server_errors_are_unavailable_and_retryable,
    a_create_whose_answer_is_cut_was_applied_and_can_be_confirmed,
    a_slow_answer_times_out,
    a_429_storm_is_rate_limited_with_and_without_retry_after,
);

async fn sandbox(options: SandboxOptions) -> Sandbox {
    common::sandbox_accepting(KEY, options).await
}

fn client_with_key(sandbox: &Sandbox, key: &str, version: ApiVersion) -> EmbeddedClient {
    common::client_speaking(sandbox, key, version, Some(Duration::from_secs(2)))
}

fn client(sandbox: &Sandbox, version: ApiVersion) -> EmbeddedClient {
    client_with_key(sandbox, KEY, version)
}

/// Every request the sandbox saw came by `version`'s routes.
fn only(sandbox: &Sandbox, version: ApiVersion) {
    let stats = sandbox.stats();
    assert_eq!(
        stats.version_total(version.as_str()),
        stats.total_requests,
        "{:?}",
        stats.versions
    );
}

fn profile(email: &str, name: Option<&str>) -> Profile {
    Profile {
        username: Username::from_email(email).expect("email"),
        full_name: FullName::parse_optional(name).expect("name"),
    }
}

async fn create_get_update_token_logs_delete(version: ApiVersion) {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, version);
    assert_eq!(api.version(), version);

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
                held: by_id.profile(),
                username: None,
                full_name: FullName::parse_optional(Some("Augusta Ada King")).expect("name"),
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        updated.profile(),
        profile("ada@example.com", Some("Augusta Ada King"))
    );
    let renamed = api
        .update_user(
            &id,
            &UserUpdate {
                held: updated.profile(),
                username: Some(Username::from_email("ada@lovelace.org").expect("email")),
                full_name: None,
            },
        )
        .await
        .expect("renamed");
    assert_eq!(
        renamed.profile(),
        profile("ada@lovelace.org", Some("Augusta Ada King")),
        "the name stays as it was, whether sent or not"
    );
    assert_eq!(sb.users()[0].full_name.as_deref(), Some("Augusta Ada King"));

    // A user without a name reads back without one, on every version
    // (Forge's required `name` is sent empty).
    let nameless = api
        .create_user(&new_user("bob@example.com", None))
        .await
        .expect("created");
    let bob = api.get_user(UserRef::Id(&nameless)).await.expect("by id");
    assert_eq!(bob.profile(), profile("bob@example.com", None));

    let token = api.user_token(&id).await.expect("token");
    assert_eq!(
        token.expose_secret().split('.').count(),
        3,
        "a JWT-shaped token"
    );
    let logs = api.delete_user_logs(&id).await;
    if api.offers().delete_logs {
        logs.expect("logs deleted");
        assert_eq!(sb.workflow_logs(id.as_str()), 0);
    } else {
        assert!(matches!(logs, Err(ApiError::InvalidRequest(_))), "{logs:?}");
        assert!(sb.workflow_logs(id.as_str()) > 0, "never sent");
    }

    let listed = api.list_users().await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], renamed);
    let mut stream = api.list_users_stream().await.expect("a stream");
    assert_eq!(stream.next().await, Some(Ok(renamed.clone())));
    assert_eq!(stream.next().await, Some(Ok(bob)));
    assert_eq!(stream.next().await, None);
    api.delete_user(&nameless).await.expect("deleted");

    api.delete_user(&id).await.expect("deleted");
    assert_eq!(api.delete_user(&id).await, Err(ApiError::NotFound));
    assert_eq!(
        api.get_user(UserRef::Id(&id)).await,
        Err(ApiError::NotFound)
    );
    assert!(api.list_users().await.expect("list").is_empty());

    let stats = sb.stats();
    assert_eq!(stats.creates, 2);
    // Forge's update is its PATCH, counted as the update; its lookup by
    // username, a list.
    assert_eq!(stats.count(routes::UPDATE, 200), 2);
    let lists = stats.route_total(routes::LIST);
    assert_eq!(
        lists,
        if api.offers().lookup_by_username {
            3
        } else {
            4
        }
    );
    only(&sb, version);
    sb.shutdown().await;
}

async fn a_taken_username_is_rejected_with_the_configured_status(version: ApiVersion) {
    for status in [400u16, 409, 422] {
        let sb = sandbox(SandboxOptions {
            duplicate_status: status,
            ..SandboxOptions::default()
        })
        .await;
        let api = client(&sb, version);
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
        // The holder is found by its username, whatever the version.
        let grace = Username::from_email("grace@example.com").expect("email");
        let holder = api
            .get_user(UserRef::Username(&grace))
            .await
            .expect("found");
        assert_eq!(holder.user_id.as_str(), sb.users()[0].user_id);
        only(&sb, version);
        sb.shutdown().await;
    }
}

async fn a_refused_rename_is_rejected_not_retried(version: ApiVersion) {
    let sb = sandbox(SandboxOptions {
        refuse_rename: true,
        ..SandboxOptions::default()
    })
    .await;
    let api = client(&sb, version);
    let id = api
        .create_user(&new_user("old@example.com", None))
        .await
        .expect("created");
    let err = api
        .update_user(
            &id,
            &UserUpdate {
                held: profile("old@example.com", None),
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
    assert!(!err.is_retryable());
    assert_eq!(sb.users()[0].username, "old@example.com");
    only(&sb, version);
    sb.shutdown().await;
}

async fn batch_create_reports_invalid_users_where_the_version_has_it(version: ApiVersion) {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, version);
    sb.insert_user("taken@example.com", None);
    if !api.offers().batch_create {
        // Never sent: the backfill creates one by one instead.
        let err = api
            .create_users_batch(&[new_user("a@example.com", None)])
            .await
            .expect_err("no batch create");
        assert!(matches!(err, ApiError::InvalidRequest(_)), "{err:?}");
        assert_eq!(sb.stats().total_requests, 0);
        assert_eq!(sb.users().len(), 1);
        return;
    }
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
    only(&sb, version);
    sb.shutdown().await;
}

async fn a_bad_key_is_unauthorized_and_not_retryable(version: ApiVersion) {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client_with_key(&sb, "wrong-key", version);
    let err = api
        .create_user(&new_user("a@example.com", None))
        .await
        .expect_err("refused");
    assert_eq!(err, ApiError::Unauthorized { status: 401 });
    assert!(err.is_auth() && !err.is_retryable());
    assert!(!format!("{err} {err:?} {api:?}").contains("wrong-key"));
    assert_eq!(sb.stats().creates, 0);

    // Revoked at run time, then restored.
    let good = client(&sb, version);
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
    only(&sb, version);
    sb.shutdown().await;
}

async fn unknown_users_are_not_found(version: ApiVersion) {
    let sb = sandbox(SandboxOptions::default()).await;
    let api = client(&sb, version);
    sb.insert_user("someone@example.com", None);
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
    let update = UserUpdate {
        held: profile("ghost@example.com", None),
        username: None,
        full_name: FullName::parse_optional(Some("Ghost")).expect("name"),
    };
    assert_eq!(
        api.update_user(&ghost, &update).await.map(|_| ()),
        Err(ApiError::NotFound)
    );
    let nobody = Username::from_email("nobody@example.com").expect("email");
    assert_eq!(
        api.get_user(UserRef::Username(&nobody)).await,
        Err(ApiError::NotFound),
        "not found once the whole list is read, where it is listed"
    );
    only(&sb, version);
    sb.shutdown().await;
}

async fn server_errors_are_unavailable_and_retryable(version: ApiVersion) {
    let sb = sandbox(SandboxOptions {
        fail_rate: 1.0,
        ..SandboxOptions::default()
    })
    .await;
    let api = client(&sb, version);
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
    // A lookup by username fails the same way, never as "not found".
    let username = Username::from_email("a@example.com").expect("email");
    let err = api
        .get_user(UserRef::Username(&username))
        .await
        .expect_err("5xx");
    assert!(err.is_retryable(), "{err:?}");
    only(&sb, version);
    sb.shutdown().await;
}

async fn a_create_whose_answer_is_cut_was_applied_and_can_be_confirmed(version: ApiVersion) {
    let sb = sandbox(answers_lost()).await;
    let api = client(&sb, version);
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
    only(&sb, version);
    sb.shutdown().await;
}

async fn a_slow_answer_times_out(version: ApiVersion) {
    let sb = sandbox(common::latency(1_500)).await;
    let api = common::client_speaking(&sb, KEY, version, Some(Duration::from_millis(300)));
    let timeout = ApiError::Unavailable {
        cause: UnavailableCause::Timeout,
    };
    assert_eq!(api.list_users().await.expect_err("timeout"), timeout);
    // A lookup by username too, even where it is a streamed list.
    let username = Username::from_email("a@example.com").expect("email");
    assert_eq!(
        api.get_user(UserRef::Username(&username)).await,
        Err(timeout)
    );
    sb.shutdown().await;
}

async fn a_429_storm_is_rate_limited_with_and_without_retry_after(version: ApiVersion) {
    for with_header in [true, false] {
        let sb = sandbox(common::rate_limited(5, with_header)).await;
        let api = client(&sb, version);
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
        only(&sb, version);
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

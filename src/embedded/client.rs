//! The HTTP client of the Embedded Users API.
//!
//! One pooled `reqwest` client per process, a timeout on every request, and
//! every answer mapped to a typed outcome ([`ApiError`] for everything but
//! success). What differs between API versions (paths, headers) sits behind
//! [`Dialect`], so speaking another version is a new adapter, not a rewrite.
//!
//! Beside the calls, each in a file of its own: the dialects of the versions,
//! the users the calls take and give back, the JSON shapes on the wire with
//! the reading of a failed answer, and [`UserStream`], the users of a
//! streamed `GET /users`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;

use super::dialect::{Dialect, Route, dialect_for};
use super::error::{ApiError, UnavailableCause};
use super::stream::UserStream;
use super::users::{BatchOutcome, EmbeddedUser, InvalidBatchUser, NewUser, UserRef, UserUpdate};
use super::wire::{
    Ignored, WireBatch, WireCreated, WireList, WireNewUser, WireToken, WireUpdate, WireUser,
    error_for, malformed, retry_after, transport_error,
};
use crate::config::EmbeddedSettings;
use crate::domain::{EmbeddedUserId, FullName, Username};

/// The most users one `POST /users/batch` accepts.
pub const MAX_BATCH: usize = 1_000;

/// A client of the Embedded Users API. Cheap to clone: clones share one
/// connection pool.
#[derive(Clone)]
pub struct EmbeddedClient {
    http: reqwest::Client,
    base_url: Url,
    /// Sent as `Authorization: Bearer`, exposed only while building a request.
    api_key: SecretString,
    dialect: Arc<dyn Dialect>,
    /// The configured request timeout; a streamed list applies it to each
    /// read instead of to the whole answer, which may be very large.
    timeout: Duration,
    /// When a call last ended, and whether the API answered it (any answer
    /// but a 5xx): `/readyz` reads this instead of calling while it is
    /// recent. Shared by the clones.
    last_answer: Arc<std::sync::Mutex<Option<(Instant, bool)>>>,
}

impl std::fmt::Debug for EmbeddedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedClient")
            .field("base_url", &self.base_url.as_str())
            .field("version", &self.dialect.version())
            .finish_non_exhaustive()
    }
}

impl EmbeddedClient {
    pub fn new(settings: &EmbeddedSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        let api_key = settings.api_key()?.clone();
        let dialect = dialect_for(&settings.api_version)
            .with_context(|| format!("unsupported API version {}", settings.api_version))?;
        anyhow::ensure!(
            !settings.base_url.cannot_be_a_base(),
            "embedded.base_url cannot be a base URL"
        );
        // reqwest is built without a bundled crypto provider; the process
        // uses ring, like sqlx. A second install attempt is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A create must never be re-sent behind our back: the caller
            // decides, knowing the answer may have been lost.
            .retry(reqwest::retry::never())
            .user_agent(concat!("user-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base_url: settings.base_url.clone(),
            api_key,
            dialect,
            timeout: settings.timeout,
            last_answer: Arc::default(),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// When a call of this client last ended, and whether the API answered
    /// it (`false`: it could not be reached, the connection was cut, or it
    /// answered a 5xx).
    pub fn last_answer(&self) -> Option<(Instant, bool)> {
        *self.last_answer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds, without sending, a request as every call builds it: the base
    /// URL, the key in its header, the version's headers. The error says
    /// what cannot be sent, never the key.
    pub fn check_request(&self) -> Result<(), ApiError> {
        let url = self.dialect.url(&self.base_url, Route::Users);
        let request = self
            .dialect
            .decorate(self.http.get(url).bearer_auth(self.api_key.expose_secret()));
        request.build().map(|_| ()).map_err(|_| {
            ApiError::InvalidRequest(
                "no request can be built with embedded.api_key and embedded.base_url \
                 (a header cannot carry the key)"
                    .into(),
            )
        })
    }

    fn note_answer<T>(&self, result: &Result<T, ApiError>) {
        let answered = match result {
            Ok(_) => true,
            // Not sent: says nothing of the API.
            Err(ApiError::InvalidRequest(_)) => return,
            Err(ApiError::Unavailable { cause }) => *cause == UnavailableCause::MalformedAnswer,
            Err(_) => true,
        };
        *self.last_answer.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), answered));
    }

    /// `POST /users/`: creates a user and returns its id.
    pub async fn create_user(&self, user: &NewUser) -> Result<EmbeddedUserId, ApiError> {
        let created: WireCreated = self
            .call(Method::POST, Route::Create, Some(&WireNewUser::from(user)))
            .await?;
        EmbeddedUserId::parse(&created.user_id).map_err(|_| malformed())
    }

    /// `POST /users/batch`: creates up to [`MAX_BATCH`] users. The API does not
    /// return their ids; learn them with [`Self::list_users`].
    pub async fn create_users_batch(&self, users: &[NewUser]) -> Result<BatchOutcome, ApiError> {
        if users.is_empty() || users.len() > MAX_BATCH {
            return Err(ApiError::InvalidRequest(format!(
                "a batch holds 1 to {MAX_BATCH} users, not {}",
                users.len()
            )));
        }
        #[derive(Serialize)]
        struct Body<'a> {
            users: Vec<WireNewUser<'a>>,
        }
        let body = Body {
            users: users.iter().map(WireNewUser::from).collect(),
        };
        let answer: WireBatch = self
            .call(Method::POST, Route::UsersBatch, Some(&body))
            .await?;
        Ok(BatchOutcome {
            invalid: answer
                .invalid_users
                .into_iter()
                .map(|u| match u.username {
                    Some(name) if !name.trim().is_empty() => {
                        InvalidBatchUser::Username(Username::from_api(&name))
                    }
                    _ => InvalidBatchUser::Unnamed,
                })
                .collect(),
        })
    }

    /// `GET /users`: every user of the account.
    pub async fn list_users(&self) -> Result<Vec<EmbeddedUser>, ApiError> {
        let list: WireList = self.call(Method::GET, Route::Users, None::<&()>).await?;
        list.data.into_iter().map(EmbeddedUser::try_from).collect()
    }

    /// `GET /users`, read as a stream: the API documents no pagination, so
    /// the answer may hold every user of the account. Users are parsed one
    /// at a time as their bytes arrive; memory holds one user, not the list.
    pub async fn list_users_stream(&self) -> Result<UserStream, ApiError> {
        let url = self.dialect.url(&self.base_url, Route::Users);
        let request = self
            .dialect
            .decorate(self.http.get(url).bearer_auth(self.api_key.expose_secret()))
            // Each read has its own timeout (below); the whole answer may
            // take long.
            .timeout(LIST_STREAM_LIMIT);
        let started = Instant::now();
        let opened = async {
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            let bytes = response.bytes().await.map_err(transport_error)?;
            Err(error_for(status, retry_after, &bytes))
        }
        .await;
        let status_label = match &opened {
            Ok(_) => "2xx".to_owned(),
            Err(e) => status_label(e),
        };
        metrics::histogram!(
            "user_sync_api_request_duration_seconds",
            "method" => "GET",
            "route" => Route::Users.template(),
            "status" => status_label,
        )
        .record(started.elapsed().as_secs_f64());
        self.note_answer(&opened);
        Ok(UserStream::new(opened?, self.timeout))
    }

    /// `GET /users/{userId}`, by id or by username.
    pub async fn get_user(&self, user: UserRef<'_>) -> Result<EmbeddedUser, ApiError> {
        let wire: WireUser = self
            .call(Method::GET, Route::User(user.segment()), None::<&()>)
            .await?;
        EmbeddedUser::try_from(wire)
    }

    /// `PUT /users/{userId}`: changes the username and/or the full name.
    pub async fn update_user(
        &self,
        id: &EmbeddedUserId,
        update: &UserUpdate,
    ) -> Result<EmbeddedUser, ApiError> {
        let body = WireUpdate {
            username: update.username.as_ref().map(Username::as_str),
            full_name: update.full_name.as_ref().map(FullName::as_str),
        };
        let wire: WireUser = self
            .call(Method::PUT, Route::User(id.as_str()), Some(&body))
            .await?;
        EmbeddedUser::try_from(wire)
    }

    /// `DELETE /users/{userId}`. `NotFound` is the caller's to read as success.
    pub async fn delete_user(&self, id: &EmbeddedUserId) -> Result<(), ApiError> {
        let _: Ignored = self
            .call(Method::DELETE, Route::User(id.as_str()), None::<&()>)
            .await?;
        Ok(())
    }

    /// `GET /users/{userId}/token`: a short-lived token for the Embedded modal.
    /// Never cache it: it lives at most 30 minutes.
    pub async fn user_token(&self, id: &EmbeddedUserId) -> Result<SecretString, ApiError> {
        let wire: WireToken = self
            .call(Method::GET, Route::UserToken(id.as_str()), None::<&()>)
            .await?;
        Ok(SecretString::from(wire.token))
    }

    /// `DELETE /users/{userId}/logs`: removes the user's workflow logs.
    pub async fn delete_user_logs(&self, id: &EmbeddedUserId) -> Result<(), ApiError> {
        let _: Ignored = self
            .call(Method::DELETE, Route::UserLogs(id.as_str()), None::<&()>)
            .await?;
        Ok(())
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        route: Route<'_>,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        let url = self.dialect.url(&self.base_url, route);
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(self.api_key.expose_secret());
        request = self.dialect.decorate(request);
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let result = self.exchange(request).await;
        let status_label = match &result {
            Ok(_) => "2xx".to_owned(),
            Err(e) => status_label(e),
        };
        metrics::histogram!(
            "user_sync_api_request_duration_seconds",
            "method" => method.as_str().to_owned(),
            "route" => route.template(),
            "status" => status_label,
        )
        .record(started.elapsed().as_secs_f64());
        self.note_answer(&result);
        result
    }

    async fn exchange<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ApiError> {
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = response.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|_| malformed());
        }
        Err(error_for(status, retry_after, &bytes))
    }
}

/// The longest a streamed `GET /users` may take in all.
const LIST_STREAM_LIMIT: Duration = Duration::from_secs(3600);

fn status_label(error: &ApiError) -> String {
    match error {
        ApiError::RateLimited { .. } => "429".into(),
        ApiError::Unauthorized { status } | ApiError::Rejected { status, .. } => status.to_string(),
        ApiError::NotFound => "404".into(),
        ApiError::Unavailable {
            cause: UnavailableCause::ServerError(status),
        } => status.to_string(),
        ApiError::Unavailable { .. } => "network".into(),
        ApiError::InvalidRequest(_) => "not_sent".into(),
    }
}

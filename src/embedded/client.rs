//! The HTTP client of the Embedded Users API.
//!
//! One pooled `reqwest` client per process, a timeout on every request, and
//! every answer mapped to a typed outcome ([`ApiError`] for everything but
//! success). What differs between API versions (routes, headers, the shapes
//! of requests and answers) sits behind [`Dialect`]; what a version lacks
//! ([`Offers`]), the client makes up for here, the same way whatever the
//! version, so that nothing above it knows which version it talks to:
//!
//! - no lookup by username: [`EmbeddedClient::get_user`] by username reads
//!   the list of users, streamed, and counts it in
//!   `user_sync_api_lookups_by_listing_total` (a lost create's confirmation
//!   and a refused create's holder cost one list each);
//! - no batch create, no workflow-logs call: the call is refused before
//!   anything is sent ([`ApiError::InvalidRequest`]); the backfill and the
//!   erasure read [`EmbeddedClient::offers`] and never make it.
//!
//! Beside the calls, each in a file of its own: the dialects of the versions,
//! the users the calls take and give back, the answers every version shapes
//! alike with the reading of a failed answer, and [`UserStream`], the users
//! of a streamed `GET /users`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::dialect::{Call, Dialect, Offers, Request, dialect_for};
use super::error::{ApiError, UnavailableCause};
use super::stream::{UserStream, read_list};
use super::users::{BatchOutcome, EmbeddedUser, NewUser, UserRef, UserUpdate};
use super::wire::{Ignored, error_for, parse, retry_after, transport_error};
use crate::config::{ApiVersion, EmbeddedSettings};
use crate::domain::{EmbeddedUserId, Username};

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
    /// The configured request timeout; a streamed list applies it to its
    /// answer's headers and to each read instead of to the whole answer,
    /// which may be very large.
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
            .field("version", &self.dialect.version().as_str())
            .finish_non_exhaustive()
    }
}

impl EmbeddedClient {
    pub fn new(settings: &EmbeddedSettings) -> anyhow::Result<Self> {
        use anyhow::Context;
        let api_key = settings.api_key()?.clone();
        let dialect = dialect_for(settings.api_version);
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

    /// The version this client speaks.
    pub fn version(&self) -> ApiVersion {
        self.dialect.version()
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
        let request = self.request(&Call::List)?;
        self.build(request).build().map(|_| ()).map_err(|_| {
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

    /// What the version offers beyond the calls every version has.
    pub fn offers(&self) -> Offers {
        self.dialect.offers()
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, user: &NewUser) -> Result<EmbeddedUserId, ApiError> {
        let body = self.call(&Call::Create(user)).await?;
        self.dialect.read_created(&body)
    }

    /// Creates up to [`MAX_BATCH`] users, where the version offers a batch
    /// create ([`Offers::batch_create`]). The API does not return their
    /// ids; learn them with [`Self::list_users`].
    pub async fn create_users_batch(&self, users: &[NewUser]) -> Result<BatchOutcome, ApiError> {
        if users.is_empty() || users.len() > MAX_BATCH {
            return Err(ApiError::InvalidRequest(format!(
                "a batch holds 1 to {MAX_BATCH} users, not {}",
                users.len()
            )));
        }
        let body = self.call(&Call::CreateBatch(users)).await?;
        self.dialect.read_batch(&body)
    }

    /// Every user of the account, read whole.
    pub async fn list_users(&self) -> Result<Vec<EmbeddedUser>, ApiError> {
        let body = self.call(&Call::List).await?;
        read_list(self.dialect.as_ref(), &body)
    }

    /// Every user of the account, read as a stream: the API documents no
    /// pagination, so the answer may hold every user of the account. Users
    /// are parsed one at a time as their bytes arrive; memory holds one
    /// user, not the list.
    pub async fn list_users_stream(&self) -> Result<UserStream, ApiError> {
        let request = self.request(&Call::List)?;
        let template = request.template;
        let method = request.method.clone();
        let builder = self
            .build(request)
            // Each read has its own timeout (in the stream); the whole
            // answer may take long.
            .timeout(LIST_STREAM_LIMIT);
        let started = Instant::now();
        let opened = async {
            let response = tokio::time::timeout(self.timeout, builder.send())
                .await
                .map_err(|_| ApiError::Unavailable {
                    cause: UnavailableCause::Timeout,
                })?
                .map_err(transport_error)?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = retry_after(response.headers());
            let bytes = response.bytes().await.map_err(transport_error)?;
            Err(error_for(status, retry_after, &bytes))
        }
        .await;
        record(&method, template, opened.as_ref().map(|_| ()), started);
        self.note_answer(&opened);
        Ok(UserStream::new(opened?, self.dialect.clone(), self.timeout))
    }

    /// A user by id, or by username. A version with no lookup by username
    /// ([`Offers::lookup_by_username`]) reads the list instead: one
    /// request still, but all the account's users in its answer.
    pub async fn get_user(&self, user: UserRef<'_>) -> Result<EmbeddedUser, ApiError> {
        if let UserRef::Username(username) = user
            && !self.offers().lookup_by_username
        {
            return self.find_in_list(username).await;
        }
        let body = self.call(&Call::Get(user)).await?;
        self.dialect.read_user(&body)
    }

    /// The user holding `username`, from the streamed list; `NotFound`
    /// only once the whole list was read (a cut list is an error).
    async fn find_in_list(&self, username: &Username) -> Result<EmbeddedUser, ApiError> {
        metrics::counter!(
            "user_sync_api_lookups_by_listing_total",
            "version" => self.version().as_str(),
        )
        .increment(1);
        let mut users = self.list_users_stream().await?;
        while let Some(user) = users.next().await {
            let user = user?;
            if &user.username == username {
                return Ok(user);
            }
        }
        Err(ApiError::NotFound)
    }

    /// Changes the username and/or the full name.
    pub async fn update_user(
        &self,
        id: &EmbeddedUserId,
        update: &UserUpdate,
    ) -> Result<EmbeddedUser, ApiError> {
        let body = self.call(&Call::Update(id, update)).await?;
        self.dialect.read_updated(&body, id, update)
    }

    /// Deletes the user. `NotFound` is the caller's to read as success.
    pub async fn delete_user(&self, id: &EmbeddedUserId) -> Result<(), ApiError> {
        let body = self.call(&Call::Delete(id)).await?;
        parse::<Ignored>(&body).map(|_| ())
    }

    /// A short-lived token for the Embedded modal. Never cache it: it
    /// lives at most 30 minutes.
    pub async fn user_token(&self, id: &EmbeddedUserId) -> Result<SecretString, ApiError> {
        let body = self.call(&Call::Token(id)).await?;
        self.dialect.read_token(&body)
    }

    /// Removes the user's workflow logs, where the version offers it
    /// ([`Offers::delete_logs`]).
    pub async fn delete_user_logs(&self, id: &EmbeddedUserId) -> Result<(), ApiError> {
        let body = self.call(&Call::DeleteLogs(id)).await?;
        parse::<Ignored>(&body).map(|_| ())
    }

    /// The version's request for `call`, or `InvalidRequest` for a call it
    /// does not offer: nothing is sent.
    fn request(&self, call: &Call<'_>) -> Result<Request, ApiError> {
        self.dialect.request(&self.base_url, call).ok_or_else(|| {
            ApiError::InvalidRequest(format!("API version {} has no such call", self.version()))
        })
    }

    fn build(&self, request: Request) -> RequestBuilder {
        let mut builder = self
            .http
            .request(request.method, request.url)
            .bearer_auth(self.api_key.expose_secret());
        builder = self.dialect.decorate(builder);
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        builder
    }

    /// Sends `call` and returns the body of a successful answer.
    async fn call(&self, call: &Call<'_>) -> Result<Vec<u8>, ApiError> {
        let request = self.request(call)?;
        let template = request.template;
        let method = request.method.clone();
        let builder = self.build(request);
        let started = Instant::now();
        let result = exchange(builder).await;
        record(&method, template, result.as_ref().map(|_| ()), started);
        self.note_answer(&result);
        result
    }
}

async fn exchange(request: RequestBuilder) -> Result<Vec<u8>, ApiError> {
    let response = request.send().await.map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let bytes = response.bytes().await.map_err(transport_error)?;
    if status.is_success() {
        return Ok(bytes.to_vec());
    }
    Err(error_for(status, retry_after, &bytes))
}

/// The request's duration, by method, route and how it ended.
fn record(
    method: &reqwest::Method,
    template: &'static str,
    result: Result<(), &ApiError>,
    started: Instant,
) {
    let status_label = match result {
        Ok(()) => "2xx".to_owned(),
        Err(e) => status_label(e),
    };
    metrics::histogram!(
        "user_sync_api_request_duration_seconds",
        "method" => method.as_str().to_owned(),
        "route" => template,
        "status" => status_label,
    )
    .record(started.elapsed().as_secs_f64());
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

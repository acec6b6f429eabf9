//! The HTTP client of the Embedded Users API.
//!
//! One pooled `reqwest` client per process, a timeout on every request, and
//! every answer mapped to a typed outcome ([`ApiError`] for everything but
//! success). What differs between API versions (paths, headers) sits behind
//! [`Dialect`], so speaking another version is a new adapter, not a rewrite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use url::Url;

use super::error::{ApiError, UnavailableCause};
use crate::config::EmbeddedSettings;
use crate::domain::{EmbeddedUserId, FullName, Profile, Username, redact_emails};

/// The most users one `POST /users/batch` accepts.
pub const MAX_BATCH: usize = 1_000;

/// A user route, independent of how a version spells it.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// `POST /users/`, documented with a trailing slash.
    Create,
    Users,
    UsersBatch,
    /// A user by id, or by username where the API allows it.
    User(&'a str),
    UserToken(&'a str),
    UserLogs(&'a str),
}

impl Route<'_> {
    /// A label with no user data in it, for metrics.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Create => "/users/",
            Route::Users => "/users",
            Route::UsersBatch => "/users/batch",
            Route::User(_) => "/users/{id}",
            Route::UserToken(_) => "/users/{id}/token",
            Route::UserLogs(_) => "/users/{id}/logs",
        }
    }
}

/// How one version of the API spells its routes and headers.
pub trait Dialect: Send + Sync + std::fmt::Debug {
    /// The version this dialect speaks, as configured (`embedded.api_version`).
    fn version(&self) -> &'static str;
    /// The full URL of a route under the configured base URL.
    fn url(&self, base: &Url, route: Route<'_>) -> Url;
    /// Adds the version's own headers to a request.
    fn decorate(&self, request: RequestBuilder) -> RequestBuilder;
}

/// Version 2025-09: no version in the path, an `x-api-version` header.
#[derive(Debug, Clone, Copy, Default)]
pub struct V2025_09;

impl Dialect for V2025_09 {
    fn version(&self) -> &'static str {
        "2025-09"
    }

    fn url(&self, base: &Url, route: Route<'_>) -> Url {
        let mut url = base.clone();
        {
            // A base URL always has path segments: `Settings` refuses
            // cannot-be-a-base URLs, and so does `EmbeddedClient::new`.
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty();
                match route {
                    Route::Create => {
                        segments.extend(["users", ""]);
                    }
                    Route::Users => {
                        segments.push("users");
                    }
                    Route::UsersBatch => {
                        segments.extend(["users", "batch"]);
                    }
                    Route::User(id) => {
                        segments.extend(["users", id]);
                    }
                    Route::UserToken(id) => {
                        segments.extend(["users", id, "token"]);
                    }
                    Route::UserLogs(id) => {
                        segments.extend(["users", id, "logs"]);
                    }
                }
            }
        }
        url
    }

    fn decorate(&self, request: RequestBuilder) -> RequestBuilder {
        request.header("x-api-version", self.version())
    }
}

/// The dialect for a configured version.
pub fn dialect_for(version: &str) -> Option<Arc<dyn Dialect>> {
    match version {
        "2025-09" => Some(Arc::new(V2025_09)),
        _ => None,
    }
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub username: Username,
    pub full_name: Option<FullName>,
}

impl From<&Profile> for NewUser {
    fn from(profile: &Profile) -> Self {
        Self {
            username: profile.username.clone(),
            full_name: profile.full_name.clone(),
        }
    }
}

/// A change to an existing user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub username: Option<Username>,
    pub full_name: Option<FullName>,
}

/// A user as the API holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedUser {
    pub user_id: EmbeddedUserId,
    pub username: Username,
    pub full_name: Option<FullName>,
}

/// How to name a user in a lookup.
#[derive(Debug, Clone, Copy)]
pub enum UserRef<'a> {
    Id(&'a EmbeddedUserId),
    Username(&'a Username),
}

impl UserRef<'_> {
    fn segment(&self) -> &str {
        match self {
            UserRef::Id(id) => id.as_str(),
            UserRef::Username(u) => u.as_str(),
        }
    }
}

/// One entry of a batch's `invalidUsers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidBatchUser {
    /// The API named the username: taken, or otherwise refused.
    Username(Username),
    /// The API gave no username (the docs show `{"fullName": "Missing Username"}`).
    Unnamed,
}

/// What a batch create answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub invalid: Vec<InvalidBatchUser>,
}

#[derive(Serialize)]
struct WireNewUser<'a> {
    username: &'a str,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
}

impl<'a> From<&'a NewUser> for WireNewUser<'a> {
    fn from(user: &'a NewUser) -> Self {
        Self {
            username: user.username.as_str(),
            full_name: user.full_name.as_ref().map(FullName::as_str),
        }
    }
}

#[derive(Serialize)]
struct WireUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(rename = "fullName", skip_serializing_if = "Option::is_none")]
    full_name: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireUser {
    #[serde(rename = "userId")]
    user_id: String,
    username: String,
    #[serde(rename = "fullName", default)]
    full_name: Option<String>,
}

impl TryFrom<WireUser> for EmbeddedUser {
    type Error = ApiError;
    fn try_from(wire: WireUser) -> Result<Self, ApiError> {
        Ok(Self {
            user_id: EmbeddedUserId::parse(&wire.user_id).map_err(|_| malformed())?,
            username: Username::from_api(&wire.username),
            full_name: wire.full_name.as_deref().map(FullName::from_api),
        })
    }
}

#[derive(Deserialize)]
struct WireCreated {
    #[serde(rename = "userId")]
    user_id: String,
}

#[derive(Deserialize)]
struct WireList {
    data: Vec<WireUser>,
}

#[derive(Deserialize)]
struct WireBatch {
    #[serde(rename = "invalidUsers", default)]
    invalid_users: Vec<WireInvalid>,
}

#[derive(Deserialize)]
struct WireInvalid {
    #[serde(default)]
    username: Option<String>,
}

#[derive(Deserialize)]
struct WireToken {
    token: String,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    message: Option<String>,
}

/// Any JSON body, for calls whose answer carries nothing we need.
#[derive(Deserialize)]
struct Ignored {}

fn malformed() -> ApiError {
    ApiError::Unavailable {
        cause: UnavailableCause::MalformedAnswer,
    }
}

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
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base_url
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
        Ok(UserStream {
            response: opened?,
            read_timeout: self.timeout,
            scanner: ListScanner::default(),
            ready: std::collections::VecDeque::new(),
            done: false,
        })
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

/// The users of a `GET /users` answer, one at a time.
pub struct UserStream {
    response: reqwest::Response,
    read_timeout: Duration,
    scanner: ListScanner,
    ready: std::collections::VecDeque<Result<EmbeddedUser, ApiError>>,
    done: bool,
}

impl UserStream {
    /// The next user; `None` at the end of a complete answer. A cut or
    /// truncated answer ends in an error, never in a silent short list.
    pub async fn next(&mut self) -> Option<Result<EmbeddedUser, ApiError>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if item.is_err() {
                    self.done = true;
                    self.ready.clear();
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            let chunk = match tokio::time::timeout(self.read_timeout, self.response.chunk()).await {
                Err(_) => Err(ApiError::Unavailable {
                    cause: UnavailableCause::Timeout,
                }),
                Ok(Err(e)) => Err(transport_error(e)),
                Ok(Ok(chunk)) => Ok(chunk),
            };
            match chunk {
                Ok(Some(bytes)) => {
                    let ready = &mut self.ready;
                    if let Err(e) = self.scanner.feed(&bytes, &mut |element| {
                        ready.push_back(
                            serde_json::from_slice::<WireUser>(element)
                                .map_err(|_| malformed())
                                .and_then(EmbeddedUser::try_from),
                        );
                    }) {
                        self.ready.push_back(Err(e));
                    }
                }
                Ok(None) => {
                    self.done = true;
                    if !self.scanner.complete() {
                        return Some(Err(malformed()));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// An incremental reader of `{"data": [ {...}, {...} ], ...}`: hands over
/// the bytes of each element of the top-level `data` array as soon as the
/// element is complete, and skips every other member whatever it holds.
#[derive(Default)]
struct ListScanner {
    /// Bytes of the element being read (only inside `data`).
    element: Vec<u8>,
    /// Open `{`/`[` count; the top-level object is depth 1.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The last string read at depth 1, to know which member comes next.
    key: Vec<u8>,
    /// Reading a depth-1 string (a key or a value).
    reading_key: bool,
    /// Inside the `data` array (depth 2 is its level).
    in_data: bool,
    /// `data` was seen and closed.
    data_seen: bool,
    /// The top-level object closed.
    closed: bool,
}

impl ListScanner {
    fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&[u8])) -> Result<(), ApiError> {
        for &b in bytes {
            if self.closed {
                if b.is_ascii_whitespace() {
                    continue;
                }
                return Err(malformed());
            }
            let capturing = self.in_data && self.depth >= 3;
            if capturing {
                self.element.push(b);
            }
            if self.in_string {
                if self.reading_key && !self.escaped && b != b'"' && b != b'\\' {
                    self.key.push(b);
                }
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    self.reading_key = false;
                }
                continue;
            }
            match b {
                b'"' => {
                    if self.in_data && self.depth == 2 {
                        return Err(malformed());
                    }
                    self.in_string = true;
                    if self.depth == 1 {
                        self.reading_key = true;
                        self.key.clear();
                    }
                }
                b'{' | b'[' => {
                    if self.depth == 0 && b != b'{' {
                        return Err(malformed());
                    }
                    self.depth += 1;
                    if self.depth == 2 && b == b'[' && self.key == b"data" {
                        self.in_data = true;
                    }
                    if self.in_data && self.depth == 3 {
                        if b != b'{' {
                            return Err(malformed());
                        }
                        self.element.clear();
                        self.element.push(b);
                    }
                }
                b'}' | b']' => {
                    if self.depth == 0 {
                        return Err(malformed());
                    }
                    self.depth -= 1;
                    if self.in_data && self.depth == 2 {
                        emit(&self.element);
                        self.element.clear();
                    } else if self.in_data && self.depth == 1 {
                        self.in_data = false;
                        self.data_seen = true;
                    } else if self.depth == 0 {
                        self.closed = true;
                    }
                }
                _ => {
                    let element_level = self.in_data && self.depth == 2;
                    if (self.depth == 0 || element_level) && !b.is_ascii_whitespace() && b != b',' {
                        // Only objects are users; nothing stands outside
                        // the top-level object.
                        return Err(malformed());
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the answer was a whole object with a `data` array.
    fn complete(&self) -> bool {
        self.closed && self.data_seen
    }
}

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

fn transport_error(error: reqwest::Error) -> ApiError {
    let cause = if error.is_timeout() {
        UnavailableCause::Timeout
    } else if error.is_connect() {
        UnavailableCause::Connect
    } else {
        UnavailableCause::ConnectionCut
    };
    ApiError::Unavailable { cause }
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Maps a non-2xx answer to its outcome.
fn error_for(status: StatusCode, retry_after: Option<Duration>, body: &[u8]) -> ApiError {
    match status.as_u16() {
        429 => ApiError::RateLimited { retry_after },
        401 | 403 => ApiError::Unauthorized {
            status: status.as_u16(),
        },
        404 => ApiError::NotFound,
        500..=599 => ApiError::Unavailable {
            cause: UnavailableCause::ServerError(status.as_u16()),
        },
        code => {
            let message = serde_json::from_slice::<WireMessage>(body)
                .ok()
                .and_then(|m| m.message)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
            let message: String = redact_emails(&message).chars().take(200).collect();
            ApiError::Rejected {
                status: code,
                message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_version_2025_09() {
        let base = Url::parse("https://production.runalloy.com").unwrap();
        let d = V2025_09;
        assert_eq!(
            d.url(&base, Route::Users).as_str(),
            "https://production.runalloy.com/users"
        );
        assert_eq!(
            d.url(&base, Route::Create).as_str(),
            "https://production.runalloy.com/users/"
        );
        assert_eq!(
            d.url(&base, Route::User("ada+x@example.com")).as_str(),
            "https://production.runalloy.com/users/ada+x@example.com"
        );
        let nested = Url::parse("http://127.0.0.1:8787/prefix/").unwrap();
        assert_eq!(
            d.url(&nested, Route::UserToken("u1")).as_str(),
            "http://127.0.0.1:8787/prefix/users/u1/token"
        );
        assert_eq!(
            d.url(&base, Route::User("a/b?c")).as_str(),
            "https://production.runalloy.com/users/a%2Fb%3Fc"
        );
    }

    fn scan(chunks: &[&str]) -> (Vec<String>, Result<(), ApiError>, bool) {
        let mut scanner = ListScanner::default();
        let mut out = Vec::new();
        for chunk in chunks {
            let result = scanner.feed(chunk.as_bytes(), &mut |e| {
                out.push(String::from_utf8_lossy(e).into_owned())
            });
            if result.is_err() {
                return (out, result, false);
            }
        }
        let complete = scanner.complete();
        (out, Ok(()), complete)
    }

    #[test]
    fn a_list_is_read_element_by_element_across_chunk_boundaries() {
        let body = r#" {"meta": {"data": [1]}, "data" : [ {"userId":"u1","username":"a\"}[{@x.io","fullName":null},
            {"userId":"u2","username":"b@x.io","extra":{"k":[1,{"z":"]"}]}} ], "next": "[{"} "#;
        // Every split point must give the same elements.
        for cut in 0..body.len() {
            if !body.is_char_boundary(cut) {
                continue;
            }
            let (elements, result, complete) = scan(&[&body[..cut], &body[cut..]]);
            assert_eq!(result, Ok(()));
            assert!(complete, "cut at {cut}");
            assert_eq!(elements.len(), 2, "cut at {cut}: {elements:?}");
            let first: WireUser = serde_json::from_str(&elements[0]).unwrap();
            assert_eq!(first.username, "a\"}[{@x.io");
            let second: WireUser = serde_json::from_str(&elements[1]).unwrap();
            assert_eq!(second.user_id, "u2");
        }
    }

    #[test]
    fn a_truncated_or_foreign_list_is_not_complete() {
        let (elements, _, complete) = scan(&[r#"{"data":[{"userId":"u1","username":"a"}"#]);
        assert_eq!(elements.len(), 1);
        assert!(!complete, "the array never closed");
        let (_, _, complete) = scan(&[r#"{"items":[]}"#]);
        assert!(!complete, "no data member");
        let (_, result, _) = scan(&[r#"{"data":[1,2]}"#]);
        assert!(result.is_err(), "elements must be objects");
        let (_, result, _) = scan(&[r#"[{"data":[]}]"#]);
        assert!(result.is_err());
    }

    #[test]
    fn error_mapping() {
        let e = error_for(
            StatusCode::CONFLICT,
            None,
            br#"{"message":"ada@example.com is taken"}"#,
        );
        match e {
            ApiError::Rejected { status, message } => {
                assert_eq!(status, 409);
                assert!(!message.contains("ada@example.com"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            error_for(StatusCode::FORBIDDEN, None, b""),
            ApiError::Unauthorized { status: 403 }
        );
        assert_eq!(
            error_for(StatusCode::BAD_GATEWAY, None, b"<html>"),
            ApiError::Unavailable {
                cause: UnavailableCause::ServerError(502)
            }
        );
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}

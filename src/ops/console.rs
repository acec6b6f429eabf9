//! The operator console: the API under `/api/v1` (in `api`) and the page at
//! `/console` that drives it, served by `user-sync run` when a token is set
//! (`[console]`).
//!
//! Safety against other sites: the token travels only in an
//! `Authorization` header that the page's own script adds (it keeps the
//! token in `sessionStorage`, never in a cookie), so a request another site
//! makes a browser send carries no credential. No CORS header is ever sent,
//! changes are `POST` only and take `application/json` alone (which no
//! cross-site form can send), and every answer forbids framing, sniffing,
//! caching and referrers. The page runs no inline script: its CSP allows
//! only this server's own files.

mod api;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::queue::JobQueue;
use crate::ratelimit::ApiGate;
use crate::storage::Store;

use super::reconcile::Resolve;

/// What the API acts on: the process's storage, queue and gate, and the
/// conflicts' resolution with the process's own locks.
pub struct Console {
    /// The token's digest; the token itself is not kept.
    token: TokenDigest,
    store: Arc<dyn Store>,
    queue: Arc<dyn JobQueue>,
    gate: Arc<ApiGate>,
    conflicts: Arc<dyn Resolve>,
}

impl Console {
    pub fn new(
        token: &SecretString,
        store: Arc<dyn Store>,
        queue: Arc<dyn JobQueue>,
        gate: Arc<ApiGate>,
        conflicts: Arc<dyn Resolve>,
    ) -> Self {
        Self {
            token: TokenDigest::of(token.expose_secret().as_bytes()),
            store,
            queue,
            gate,
            conflicts,
        }
    }
}

/// A SHA-256 digest of the token.
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Whether `presented` is the token: both sides are hashed, and every
    /// byte of the digests is compared, so the time taken says nothing of
    /// how much of a guess was right, nor of the token's length.
    fn accepts(&self, presented: &[u8]) -> bool {
        let presented = Self::of(presented);
        let differences = self
            .0
            .iter()
            .zip(presented.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(differences) == 0
    }
}

/// `/api/v1/*` (token required) and `/console` (the page, which asks for
/// the token), both with the security headers.
pub fn router(console: Arc<Console>) -> Router {
    let api = api::routes()
        .layer(middleware::from_fn_with_state(
            console.clone(),
            require_token,
        ))
        .with_state(console);
    Router::new()
        .nest("/api/v1", api)
        .route("/console", get(page))
        .route("/console/", get(page))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .layer(middleware::from_fn(security_headers))
}

/// Refuses a request without the token, with a JSON error; the token is
/// never logged or repeated.
async fn require_token(
    State(console): State<Arc<Console>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match presented {
        Some(token) if console.token.accepts(token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = api::error(
                StatusCode::UNAUTHORIZED,
                "a valid console token is required: send Authorization: Bearer <token>",
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The headers of every answer of the console and its API.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The page, its script and its style: files of this crate, compiled in
/// (nothing is fetched from elsewhere, and there is no build step).
const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_itself_is_accepted() {
        let token = TokenDigest::of(b"s3cret-token");
        assert!(token.accepts(b"s3cret-token"));
        for wrong in [&b""[..], b"s3cret-toke", b"s3cret-token ", b"S3CRET-TOKEN"] {
            assert!(!token.accepts(wrong), "{wrong:?}");
        }
    }
}

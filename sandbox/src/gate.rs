//! The gate every API request passes, whatever its version: latency, the
//! rate limit, injected 5xx, auth and the version check before the route,
//! the drop fault after it; and the count of requests in flight per user.
//! Each version's routes have a gate of their own, which knows the version.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::accept::ConnectionCut;
use crate::api::message;
use crate::routes;
use crate::state::{Credentials, Refusal, Shared};
use crate::version::Version;

/// The state of one version's gate.
#[derive(Clone)]
pub(crate) struct Versioned {
    pub(crate) shared: Arc<Shared>,
    pub(crate) version: Version,
}

/// Applies latency, the rate limit, injected 5xx, auth, the version check,
/// and after the route, the drop fault.
pub(crate) async fn gate(
    State(Versioned { shared, version }): State<Versioned>,
    request: Request,
    next: Next,
) -> Response {
    let route = routes::template(
        version,
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let _in_flight = InFlight::enter(&shared, version, request.uri().path());
    let latency = shared.latency.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_nanos(latency)).await;
    }
    let admitted = shared
        .lock()
        .admit(version, route, &Credentials::of(request.headers()));
    if let Err(refusal) = admitted {
        return refusal_response(refusal);
    }
    let cut = request.extensions().get::<ConnectionCut>().cloned();
    let response = next.run(request).await;
    let drop_it = shared
        .lock()
        .finish(version, route, response.status().as_u16(), cut.is_some());
    if let (true, Some(ConnectionCut(token))) = (drop_it, cut) {
        token.cancel();
        // The connection task drops this future with the socket.
        return std::future::pending().await;
    }
    response
}

/// Marks a request for one user as in flight until it is answered or its
/// connection is cut (the future is dropped either way).
struct InFlight {
    shared: Arc<Shared>,
    user: Option<String>,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>, version: Version, path: &str) -> Self {
        // A nested router sees its path without the version's prefix.
        let user = path
            .strip_prefix(version.prefix())
            .unwrap_or(path)
            .strip_prefix('/')
            .and_then(|rest| rest.strip_prefix(version.collection()))
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.split('/').next())
            .filter(|user| !user.is_empty() && *user != "batch")
            .map(str::to_ascii_lowercase);
        if let Some(user) = &user {
            let mut state = shared.lock();
            let count = state.in_flight.entry(user.clone()).or_default();
            *count += 1;
            if *count > 1 {
                state.stats.overlapping_user_requests += 1;
            }
        }
        Self {
            shared: shared.clone(),
            user,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(user) = self.user.take() {
            let mut state = self.shared.lock();
            if let Some(count) = state.in_flight.get_mut(&user) {
                *count -= 1;
                if *count == 0 {
                    state.in_flight.remove(&user);
                }
            }
        }
    }
}

fn refusal_response(refusal: Refusal) -> Response {
    match refusal {
        Refusal::RateLimited { retry_after } => {
            let mut response = message(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        // What a proxy in front of the API would answer.
        Refusal::ServerError(StatusCode::BAD_GATEWAY) => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        Refusal::ServerError(status) => message(status, "Internal server error"),
        Refusal::Unauthorized => message(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Refusal::MissingVersion => message(
            StatusCode::BAD_REQUEST,
            "Missing x-api-version header: these routes speak version 2025-09 \
             (older versions are under /2024-03/, /2023-12/ and /forge/2021-12/)",
        ),
        Refusal::UnknownVersion => message(
            StatusCode::BAD_REQUEST,
            "Unsupported x-api-version: these routes speak version 2025-09 \
             (older versions are under /2024-03/, /2023-12/ and /forge/2021-12/)",
        ),
        Refusal::UnexpectedHeader(version) => message(
            StatusCode::BAD_REQUEST,
            &format!(
                "Version {} is in the path: send no x-api-version",
                version.as_str()
            ),
        ),
    }
}

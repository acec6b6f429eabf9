//! `/healthz`, `/readyz` and `/metrics` of `user-sync run`, and the
//! console's routes when it is on.
//!
//! # What a client can hold
//!
//! The port is opened for probes and scrapes (`http.bind = 0.0.0.0` in a
//! cluster), so what any client, or hundreds of them, can hold is bounded:
//!
//! - a connection that has not sent a whole request head within
//!   `http.header_read_timeout_ms` is closed (hyper's own timer: axum's
//!   `serve` sets none, so the connections are served here, below it);
//! - a request not answered within `http.request_timeout_ms` is answered
//!   `503`;
//! - at most `http.max_connections` connections are served at once, and
//!   one more is closed as soon as it is accepted;
//! - the routes that read the database (`/metrics`, `/readyz`, the
//!   console's API) do so through a pool of their own
//!   (`http.database_connections`), apart from the pipeline's: scrapes wait
//!   for each other, never jobs for them.
//!
//! The server runs as a part of the process: one that stops for good stops
//! the process (see `app`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::config::HttpSettings;
use crate::queue::JobQueue;
use crate::storage::Reports;

use super::readiness::ApiCheck;

/// How long connections under way get to finish after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After an error accepting a connection (out of file descriptors), the
/// accept loop pauses this long rather than spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What the endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    /// The ops server's own pool (`http.database_connections`).
    pub store: Arc<dyn Reports>,
    pub queue: Arc<dyn JobQueue>,
    /// What `/readyz` says of the Embedded API.
    pub api: Arc<ApiCheck>,
    /// The operator API and the page, when `[console]` serves them; without
    /// it their paths answer 404.
    pub console: Option<Arc<super::console::Console>>,
}

#[derive(Serialize)]
struct Readiness {
    database: bool,
    queue: bool,
    api_key: bool,
    api: bool,
}

pub fn router(state: OpsState) -> Router {
    let console = state.console.clone();
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    match console {
        Some(console) => ops.merge(super::console::router(console)),
        None => ops,
    }
}

/// Takes `http.bind`; fails naming the key when it cannot.
pub async fn bind(settings: &HttpSettings) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("cannot listen on http.bind {}", settings.bind))
}

/// Serves on `listener` until `shutdown` is cancelled, then lets the
/// connections under way finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    state: OpsState,
    settings: HttpSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(state).layer(TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        settings.request_timeout,
    ));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "the ops server could not accept a connection");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("user_sync_ops_connections_refused_total").increment(1);
            tracing::debug!(%peer, "ops server at http.max_connections: connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let served = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = served.await {
                // A client that went away, or was too slow with its head.
                tracing::debug!(%peer, %error, "ops connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("ops connections cut at shutdown");
    }
    Ok(())
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let (database, queue, api) = tokio::join!(
        state.store.ping(),
        state.queue.ping(),
        state.api.readiness()
    );
    let (database, queue) = (database.is_ok(), queue.is_ok());
    let ready = Readiness {
        database,
        queue,
        api_key: api.api_key,
        api: api.api,
    };
    let status = if database && queue && api.api_key && api.api {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(ready))
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    // Gauges of the tables and the queue are read at scrape time: an idle
    // worker then costs no queries between scrapes.
    if let Ok(status) = state.store.status().await {
        metrics::gauge!("user_sync_pending_events").set(status.pending_events as f64);
        metrics::gauge!("user_sync_outbox_lag_seconds").set(status.outbox_lag_seconds);
        metrics::gauge!("user_sync_open_conflicts").set(status.open_conflicts as f64);
        metrics::gauge!("user_sync_failed_events").set(status.failed_events as f64);
        metrics::gauge!("user_sync_pending_erasures").set(status.pending_erasures as f64);
        metrics::gauge!("user_sync_erasure_oldest_pending_seconds")
            .set(status.oldest_pending_erasure_seconds);
        // What retention removed across the deployment (the process's own
        // share is user_sync_retention_removed_total).
        let removed = &status.retention;
        for (table, count) in [
            ("events", removed.events),
            ("conflicts", removed.conflicts),
            ("erasures", removed.erasures),
            ("webhooks", removed.webhooks),
        ] {
            metrics::gauge!("user_sync_retention_removed_rows", "table" => table).set(count as f64);
        }
        if let Some(at) = removed.last_pass_at {
            metrics::gauge!("user_sync_retention_last_pass_timestamp_seconds")
                .set(at.timestamp() as f64);
        }
    }
    if let Ok(depth) = state.queue.depth().await {
        metrics::gauge!("user_sync_queue_depth").set(depth as f64);
    }
    match super::metrics::recorder() {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable\n".to_owned(),
        ),
    }
}

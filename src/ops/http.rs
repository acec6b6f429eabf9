//! `/healthz`, `/readyz` and `/metrics` of `user-sync run`, and the
//! console's routes when it is on.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::queue::JobQueue;
use crate::ratelimit::ApiGate;
use crate::storage::Reports;

/// What the endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    pub store: Arc<dyn Reports>,
    pub queue: Arc<dyn JobQueue>,
    pub gate: Arc<ApiGate>,
    /// The operator API and the page, when `[console]` serves them; without
    /// it their paths answer 404.
    pub console: Option<Arc<super::console::Console>>,
}

#[derive(Serialize)]
struct Readiness {
    database: bool,
    queue: bool,
    api_key: bool,
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

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    bind: SocketAddr,
    state: OpsState,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on http.bind {bind}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "ops HTTP server stopped");
        }
    });
    Ok(addr)
}

async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let database = state.store.ping().await.is_ok();
    let queue = state.queue.ping().await.is_ok();
    let api_key = !state.gate.auth_paused();
    let status = if database && queue && api_key {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            database,
            queue,
            api_key,
        }),
    )
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

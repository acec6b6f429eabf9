//! The operator API: the commands' operations over HTTP, JSON in and out,
//! on the same storage and reconciliation calls as `user-sync status`,
//! `show`, `events`, `retry`, `conflicts`, `pause` and `resume`.
//!
//! Every route is behind the token (see the parent module). Errors are
//! `{"error": "..."}` with their status: 400 for a bad parameter or body,
//! 404 for what does not exist, 409 for an action refused, 415 for a change
//! not sent as JSON, 500 (the cause logged, not shown) when the database
//! fails. Events carry ids, states and reasons only; usernames are masked on
//! a user's page unless asked for, and shown on conflicts, which the people
//! resolving them need.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::domain::{ConflictStatus, EventFilter, Pause, RetryTarget, Status};
use crate::ops::{Action, describe_done, erasures_csv, user_json};
use crate::storage::Operator;

use super::Console;

type Shared = State<Arc<Console>>;

pub(super) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/status", get(status))
        .route("/activity", get(activity))
        .route("/users/{host_user_id}", get(user))
        .route("/events", get(events))
        .route("/events/retry", post(retry))
        .route("/conflicts", get(conflicts))
        .route("/conflicts/{id}/resolve", post(resolve))
        .route("/erasures", get(erasures))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route under /api/v1") })
}

/// An answer that is an error: `{"error": message}`.
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Why a request did not succeed.
struct Failure {
    status: StatusCode,
    message: String,
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure {
        status: StatusCode::BAD_REQUEST,
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> Failure {
    Failure {
        status: StatusCode::NOT_FOUND,
        message: message.into(),
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error(self.status, &self.message)
    }
}

/// A failure of the database or the API behind a request: logged here
/// with its cause chain, answered without it.
impl From<anyhow::Error> for Failure {
    fn from(cause: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{cause:#}"), "an operator API request failed");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the request failed inside the worker: see its logs".into(),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(cause: sqlx::Error) -> Self {
        anyhow::Error::from(cause).into()
    }
}

type Answer<T> = Result<T, Failure>;

/// The body of a change: `Content-Type: application/json` required (a
/// cross-site form cannot send it), an empty body read as `{}`.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Failure;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Failure {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: "send the body as JSON, with Content-Type: application/json".into(),
            });
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| bad_request(rejection.body_text()))?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|e| bad_request(format!("the body is not what this route takes: {e}")))
    }
}

/// Query parameters as text, read here so that a bad one is a JSON error
/// that names it.
type Params = Query<BTreeMap<String, String>>;

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(|value| value.trim())
        .filter(|value| !value.is_empty())
}

fn number(params: &Params, name: &str, default: i64, max: i64) -> Answer<i64> {
    match param(params, name) {
        None => Ok(default),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad_request(format!(
                "{name} must be a number from 1 to {max}"
            ))),
        },
    }
}

fn flag(params: &Params, name: &str) -> Answer<bool> {
    match param(params, name) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(bad_request(format!("{name} must be true or false"))),
    }
}

/// The states an event can be in.
const EVENT_STATES: [&str; 6] = [
    "pending",
    "applied",
    "superseded",
    "conflict",
    "failed",
    "invalid",
];

fn event_state(text: &str) -> Answer<String> {
    EVENT_STATES
        .contains(&text)
        .then(|| text.to_owned())
        .ok_or_else(|| bad_request(format!("state must be one of {}", EVENT_STATES.join(", "))))
}

/// The pipeline at a glance: `user-sync status`, with the queue and the
/// rate gate of this process.
#[derive(Serialize)]
struct Overview {
    #[serde(flatten)]
    status: Status,
    /// Jobs waiting in the queue; `None` when the queue did not answer.
    queue_depth: Option<u64>,
    rate_limit: RateLimit,
}

/// This process's rate gate.
#[derive(Serialize)]
struct RateLimit {
    /// Requests a second it allows now.
    allowed_rps: f64,
    /// Calls it let through since the process started: two readings give
    /// the rate in use.
    calls_granted: u64,
    /// Whether the API refuses the key (all calls wait for it).
    api_key_refused: bool,
}

async fn status(State(console): Shared) -> Answer<Json<Overview>> {
    let status = console.store.status().await?;
    let queue_depth = console.queue.depth().await.ok();
    Ok(Json(Overview {
        status,
        queue_depth,
        rate_limit: RateLimit {
            allowed_rps: console.gate.allowed_rate(),
            calls_granted: console.gate.calls_granted(),
            api_key_refused: console.gate.auth_paused(),
        },
    }))
}

/// One minute of the chart: how many events ended in each state.
#[derive(Serialize)]
struct Minute {
    minute: DateTime<Utc>,
    counts: BTreeMap<String, i64>,
}

/// `GET /activity?minutes=60`: events finished per minute by final state,
/// every minute listed (oldest first), the empty ones too.
async fn activity(State(console): Shared, params: Params) -> Answer<Json<serde_json::Value>> {
    let minutes = number(&params, "minutes", 60, 24 * 60)?;
    let now = Utc::now()
        .duration_trunc(TimeDelta::minutes(1))
        .map_err(anyhow::Error::from)?;
    let since = now - TimeDelta::minutes(minutes - 1);
    let rows = console.store.finished_per_minute(since).await?;
    let mut chart: Vec<Minute> = (0..minutes)
        .map(|i| Minute {
            minute: since + TimeDelta::minutes(i),
            counts: BTreeMap::new(),
        })
        .collect();
    for row in rows {
        let index = (row.minute - since).num_minutes();
        if let Some(minute) = usize::try_from(index).ok().and_then(|i| chart.get_mut(i)) {
            *minute.counts.entry(row.state).or_default() += row.events;
        }
    }
    Ok(Json(
        serde_json::json!({ "since": since, "minutes": chart }),
    ))
}

/// `GET /users/{id}?reveal=&events=`: `user-sync show`.
async fn user(
    State(console): Shared,
    Path(host_user_id): Path<String>,
    params: Params,
) -> Answer<Json<crate::domain::UserRecord>> {
    let host = host_user_id.trim();
    if host.is_empty() {
        return Err(bad_request("say which host user"));
    }
    let reveal = flag(&params, "reveal")?;
    let recent = number(&params, "events", 20, 10_000)?;
    let record = console.store.user_record(host, recent).await?;
    if record.mapping.is_none()
        && record.events.is_empty()
        && record.conflicts.is_empty()
        && record.erasures.is_empty()
    {
        return Err(not_found(format!(
            "host user {host} is not known: no event, row, conflict or erasure names it"
        )));
    }
    Ok(Json(user_json(&record, reveal)))
}

/// `GET /events?state=&host_user_id=&since=&limit=`: `user-sync events`.
async fn events(
    State(console): Shared,
    params: Params,
) -> Answer<Json<Vec<crate::domain::EventRow>>> {
    let state = param(&params, "state").map(event_state).transpose()?;
    let since = param(&params, "since")
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| bad_request("since must be a time like 2026-11-30T00:00:00Z"))
        })
        .transpose()?;
    let filter = EventFilter {
        state,
        host_user_id: param(&params, "host_user_id").map(str::to_owned),
        since,
        limit: number(&params, "limit", 100, 10_000)?,
    };
    Ok(Json(console.store.events(&filter).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    state: Option<String>,
    host_user_ids: Option<Vec<String>>,
}

/// `POST /events/retry` with `{"state": "failed"}` or `{"host_user_ids":
/// [...]}`: `user-sync retry`.
async fn retry(State(console): Shared, JsonBody(body): JsonBody<RetryBody>) -> Answer<Response> {
    let target = match (body.state, body.host_user_ids) {
        (Some(state), None) => RetryTarget::State(event_state(state.trim())?),
        (None, Some(hosts)) => {
            let hosts: Vec<String> = hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
            if hosts.is_empty() || hosts.len() > 10_000 {
                return Err(bad_request("host_user_ids takes 1 to 10000 ids"));
            }
            RetryTarget::Hosts(hosts)
        }
        _ => {
            return Err(bad_request(
                "say what to retry: {\"state\": \"failed\"} or {\"host_user_ids\": [...]}",
            ));
        }
    };
    let retried = console.store.retry_events(&target).await?;
    tracing::info!(retried, "events sent again from the operator API");
    Ok(Json(serde_json::json!({ "retried": retried })).into_response())
}

/// `GET /conflicts?status=open|resolved|all`: `user-sync conflicts`.
async fn conflicts(
    State(console): Shared,
    params: Params,
) -> Answer<Json<Vec<crate::domain::ConflictRow>>> {
    let status = match param(&params, "status") {
        None | Some("open") => ConflictStatus::Open,
        Some("resolved") => ConflictStatus::Resolved,
        Some("all") => ConflictStatus::All,
        Some(_) => return Err(bad_request("status must be open, resolved or all")),
    };
    Ok(Json(console.store.conflicts(status).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    action: String,
    note: Option<String>,
    by: Option<String>,
}

/// Text an operator typed: trimmed, `None` when empty, refused when longer
/// than `max` characters.
fn typed(name: &str, text: Option<String>, max: usize) -> Answer<Option<String>> {
    let text = text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    match text {
        Some(t) if t.chars().count() > max => Err(bad_request(format!(
            "{name} takes at most {max} characters"
        ))),
        other => Ok(other),
    }
}

/// Who acts, when the request does not say.
const CONSOLE_OPERATOR: &str = "console";

/// `POST /conflicts/{id}/resolve` with `{"action": "adopt|retry|ignore",
/// "note": ..., "by": ...}`: `user-sync conflicts resolve`.
async fn resolve(
    State(console): Shared,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ResolveBody>,
) -> Answer<Response> {
    let id: i64 = id
        .trim()
        .parse()
        .map_err(|_| bad_request("a conflict id is a number"))?;
    let action = match body.action.trim() {
        "adopt" => Action::Adopt,
        "retry" => Action::Retry,
        "ignore" => Action::Ignore,
        _ => return Err(bad_request("action must be adopt, retry or ignore")),
    };
    let note = typed("note", body.note, 2000)?;
    let by = typed("by", body.by, 200)?.unwrap_or_else(|| CONSOLE_OPERATOR.into());
    if console.store.conflict(id).await?.is_none() {
        return Err(not_found(format!("there is no conflict {id}")));
    }
    let operator = Operator {
        by: &by,
        note: note.as_deref(),
    };
    match console.conflicts.resolve(id, action, operator).await? {
        Ok(done) => {
            tracing::info!(conflict_id = id, action = ?action, by = %by, resolved = done.resolved(), "conflict resolved from the operator API");
            Ok(Json(serde_json::json!({
                "id": id,
                "resolved": done.resolved(),
                "message": describe_done(id, &done),
            }))
            .into_response())
        }
        Err(refused) => Err(Failure {
            status: StatusCode::CONFLICT,
            message: refused.to_string(),
        }),
    }
}

/// `GET /erasures?limit=&format=json|csv`: the proofs of erasure, newest
/// first.
async fn erasures(State(console): Shared, params: Params) -> Answer<Response> {
    let limit = number(&params, "limit", 1000, 1_000_000)?;
    let csv = match param(&params, "format") {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(bad_request("format must be json or csv")),
    };
    let rows = console.store.erasures(limit).await?;
    if !csv {
        return Ok(Json(rows).into_response());
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"erasures.csv\"",
            ),
        ],
        erasures_csv(&rows)?,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    reason: Option<String>,
    by: Option<String>,
}

/// `POST /pause` with `{"reason": ...}`: `user-sync pause`.
async fn pause(
    State(console): Shared,
    JsonBody(body): JsonBody<PauseBody>,
) -> Answer<Json<serde_json::Value>> {
    let reason = typed("reason", body.reason, 500)?;
    let by = typed("by", body.by, 200)?.unwrap_or_else(|| CONSOLE_OPERATOR.into());
    let paused: Pause = console.store.pause(&by, reason.as_deref()).await?;
    tracing::warn!(by = %by, "paused from the operator API");
    Ok(Json(serde_json::json!({ "paused": paused })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {}

/// `POST /resume`: `user-sync resume`; says which pause was lifted (`null`
/// when there was none).
async fn resume(
    State(console): Shared,
    JsonBody(ResumeBody {}): JsonBody<ResumeBody>,
) -> Answer<Json<serde_json::Value>> {
    let lifted = console.store.resume().await?;
    tracing::info!(
        was_paused = lifted.is_some(),
        "resumed from the operator API"
    );
    Ok(Json(serde_json::json!({ "resumed": lifted })))
}

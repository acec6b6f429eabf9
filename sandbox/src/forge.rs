//! Version 2021-12 ("Forge"), under `/forge/2021-12/`: `/user` (singular),
//! users shown as `{_id, email, fullName}` over the same users as every
//! other version (Forge's `email` is their `username`, its `name` their
//! `fullName`).
//!
//! What it needs, and refuses without: a create takes `name` and `email`,
//! both required (`name` may be empty); a `PATCH` takes `email` and
//! `fullName`, both. What it lacks answers `404` like any unknown route: a
//! lookup by email (a user is found by its `_id` only), a batch create, the
//! workflow-logs call.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::SandboxUser;
use crate::api::{
    WireCreated, WireUpdate, bad_body, delete_user, message, not_found, user_token_route,
};
use crate::options::present;
use crate::state::{Shared, Taken, UpdateRefusal};

/// The answer to a taken email. It never names the email.
const EMAIL_TAKEN: &str = "A user with this email already exists";

/// Forge's routes, relative to `/forge/2021-12`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/user", post(create_user).get(list_users))
        // Delete and token answer as 2025-09's do, by id alike.
        .route(
            "/user/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/user/{id}/token", get(user_token_route))
}

/// A user as Forge lists it.
#[derive(Serialize)]
struct ForgeUser<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    email: &'a str,
    #[serde(rename = "fullName")]
    full_name: Option<&'a str>,
}

impl<'a> From<&'a SandboxUser> for ForgeUser<'a> {
    fn from(user: &'a SandboxUser) -> Self {
        Self {
            id: &user.user_id,
            email: &user.username,
            full_name: user.full_name.as_deref(),
        }
    }
}

/// A user as Forge's `GET /user/{userId}` shows it: with its workflows
/// (the sandbox runs none).
#[derive(Serialize)]
struct ForgeDetail<'a> {
    #[serde(flatten)]
    user: ForgeUser<'a>,
    workflows: Vec<serde_json::Value>,
}

fn detail(user: &SandboxUser) -> Response {
    Json(ForgeDetail {
        user: ForgeUser::from(user),
        workflows: Vec::new(),
    })
    .into_response()
}

async fn create_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Create {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        email: Option<String>,
    }
    let Ok(create) = serde_json::from_slice::<Create>(&body) else {
        return bad_body();
    };
    let (Some(name), Some(email)) = (create.name, create.email) else {
        return message(StatusCode::BAD_REQUEST, "name and email are required");
    };
    if email.trim().is_empty() {
        return message(StatusCode::BAD_REQUEST, "email is required");
    }
    let mut state = shared.lock();
    match state.create(&email, Some(name)) {
        Ok(id) => Json(WireCreated { user_id: &id }).into_response(),
        Err(Taken) => message(state.faults.duplicate_status, EMAIL_TAKEN),
    }
}

async fn list_users(State(shared): State<Arc<Shared>>) -> Response {
    #[derive(Serialize)]
    struct List<'a> {
        data: Vec<ForgeUser<'a>>,
    }
    let state = shared.lock();
    Json(List {
        data: state
            .users
            .ordered()
            .into_iter()
            .map(ForgeUser::from)
            .collect(),
    })
    .into_response()
}

/// By `_id` only: Forge documents no lookup by email.
async fn get_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let state = shared.lock();
    match state.users.by_id.get(&id) {
        Some(stored) => detail(&stored.user),
        None => not_found(),
    }
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    struct Patch {
        #[serde(default, deserialize_with = "present")]
        email: Option<Option<String>>,
        #[serde(rename = "fullName", default, deserialize_with = "present")]
        full_name: Option<Option<String>>,
    }
    let Ok(patch) = serde_json::from_slice::<Patch>(&body) else {
        return bad_body();
    };
    let (Some(email), Some(full_name)) = (patch.email, patch.full_name) else {
        return message(StatusCode::BAD_REQUEST, "email and fullName are required");
    };
    let mut state = shared.lock();
    let duplicate_status = state.faults.duplicate_status;
    let update = WireUpdate {
        username: Some(email),
        full_name: Some(full_name),
    };
    match state.update(&id, update) {
        Ok(user) => detail(user),
        Err(UpdateRefusal::NotFound) => not_found(),
        Err(UpdateRefusal::BlankUsername) => message(StatusCode::BAD_REQUEST, "email is required"),
        Err(UpdateRefusal::RenameRefused) => message(
            StatusCode::BAD_REQUEST,
            "email cannot be changed after creation",
        ),
        Err(UpdateRefusal::Taken) => message(duplicate_status, EMAIL_TAKEN),
    }
}

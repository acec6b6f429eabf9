//! The axum app: every version's routes and the admin routes, the handlers
//! of 2025-09 and of the versions in the path (which share its shapes) and
//! the shapes of their JSON. Forge's own are in `forge.rs`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::SandboxUser;
use crate::directory::Directory;
use crate::forge;
use crate::gate::{Versioned, gate};
use crate::ids::user_token;
use crate::options::{FaultUpdate, present};
use crate::state::{Shared, Taken, UpdateRefusal};
use crate::version::Version;

/// The most users one batch create may hold, as the API documents.
const MAX_BATCH: usize = 1_000;
/// The answer to a taken username. It never names the username.
const USERNAME_TAKEN: &str = "A user with this username already exists";

pub(crate) fn app(shared: Arc<Shared>, admin_token: Option<String>) -> Router {
    // Each version's routes behind a gate of its own, which knows the
    // version; each with its own fallback, so that an unknown route under a
    // version's prefix is that version's 404.
    let gated = |routes: Router<Arc<Shared>>, version: Version| {
        routes
            .fallback(unknown_route)
            .layer(middleware::from_fn_with_state(
                Versioned {
                    shared: shared.clone(),
                    version,
                },
                gate,
            ))
    };
    let api = gated(users_routes(Version::V2025_09), Version::V2025_09)
        .nest(
            Version::V2024_03.prefix(),
            gated(users_routes(Version::V2024_03), Version::V2024_03),
        )
        .nest(
            Version::V2023_12.prefix(),
            gated(users_routes(Version::V2023_12), Version::V2023_12),
        )
        .nest(
            Version::V2021_12.prefix(),
            gated(forge::routes(), Version::V2021_12),
        );
    let admin = Router::new()
        .route("/_admin/stats", get(admin_stats))
        .route("/_admin/users", get(admin_users).post(admin_insert_user))
        .route("/_admin/faults", put(admin_faults))
        .route("/_admin/reset", post(admin_reset))
        .layer(middleware::from_fn(json_writes_only))
        .layer(middleware::from_fn_with_state(
            Arc::new(admin_token),
            admin_token_checked,
        ));
    admin.merge(api).with_state(shared)
}

/// The routes of 2025-09 and of the versions in the path, which share its
/// shapes; those create at `/users` as well as at `/users/`.
fn users_routes(version: Version) -> Router<Arc<Shared>> {
    let mut routes = Router::new()
        .route("/users/", post(create_user))
        .route("/users/batch", post(create_batch))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/users/{id}/token", get(user_token_route))
        .route("/users/{id}/logs", axum::routing::delete(delete_logs));
    routes = if version == Version::V2025_09 {
        routes.route("/users", get(list_users))
    } else {
        routes.route("/users", get(list_users).post(create_user))
    };
    routes
}

/// The admin routes change what the sandbox holds and how it fails: a write
/// must say it is JSON. A web page cannot send that content type to another
/// origin without the browser asking first (which nothing here answers), so
/// no page open on the developer's machine can wipe or reconfigure the
/// sandbox by a cross-site form post.
async fn json_writes_only(request: axum::extract::Request, next: middleware::Next) -> Response {
    let reads = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let json = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if reads || json {
        next.run(request).await
    } else {
        message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "admin writes take Content-Type: application/json",
        )
    }
}

/// With an admin token configured, the admin routes ask for it.
async fn admin_token_checked(
    State(token): State<Arc<Option<String>>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let Some(token) = token.as_deref() else {
        return next.run(request).await;
    };
    let sent = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    if sent == Some(token) {
        next.run(request).await
    } else {
        message(StatusCode::UNAUTHORIZED, "Unauthorized")
    }
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

pub(crate) fn message(status: StatusCode, text: &str) -> Response {
    (status, Json(Message { message: text })).into_response()
}

pub(crate) fn not_found() -> Response {
    message(StatusCode::NOT_FOUND, "User not found")
}

pub(crate) fn bad_body() -> Response {
    message(
        StatusCode::BAD_REQUEST,
        "The request body is not the JSON this route expects",
    )
}

#[derive(Deserialize)]
struct WireNewUser {
    #[serde(default)]
    username: Option<String>,
    #[serde(rename = "fullName", default)]
    full_name: Option<String>,
}

impl WireNewUser {
    /// The username, unless missing or blank.
    fn username(&self) -> Option<&str> {
        self.username.as_deref().filter(|u| !u.trim().is_empty())
    }
}

#[derive(Deserialize)]
pub(crate) struct WireUpdate {
    /// `Some(None)`: `null` was sent.
    #[serde(default, deserialize_with = "present")]
    pub(crate) username: Option<Option<String>>,
    /// `Some(None)` clears the name.
    #[serde(rename = "fullName", default, deserialize_with = "present")]
    pub(crate) full_name: Option<Option<String>>,
}

#[derive(Serialize)]
pub(crate) struct WireCreated<'a> {
    #[serde(rename = "userId")]
    pub(crate) user_id: &'a str,
}

#[derive(Serialize)]
struct WireSuccess {
    success: bool,
}

async fn create_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(mut user) = serde_json::from_slice::<WireNewUser>(&body) else {
        return bad_body();
    };
    let full_name = user.full_name.take();
    let Some(username) = user.username() else {
        return message(StatusCode::BAD_REQUEST, "username is required");
    };
    let mut state = shared.lock();
    match state.create(username, full_name) {
        Ok(id) => Json(WireCreated { user_id: &id }).into_response(),
        Err(Taken) => message(state.faults.duplicate_status, USERNAME_TAKEN),
    }
}

async fn list_users(State(shared): State<Arc<Shared>>) -> Response {
    #[derive(Serialize)]
    struct List<'a> {
        data: Vec<&'a SandboxUser>,
    }
    let state = shared.lock();
    Json(List {
        data: state.users.ordered(),
    })
    .into_response()
}

async fn create_batch(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Batch {
        users: Vec<WireNewUser>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Invalid {
        Named {
            username: String,
        },
        Unnamed {
            #[serde(rename = "fullName")]
            full_name: &'static str,
        },
    }
    #[derive(Serialize)]
    struct Answer {
        message: &'static str,
        #[serde(rename = "invalidUsers")]
        invalid_users: Vec<Invalid>,
    }
    let Ok(batch) = serde_json::from_slice::<Batch>(&body) else {
        return bad_body();
    };
    if batch.users.is_empty() || batch.users.len() > MAX_BATCH {
        return message(StatusCode::BAD_REQUEST, "A batch holds 1 to 1000 users");
    }
    let mut invalid_users = Vec::new();
    let mut created = 0usize;
    let mut state = shared.lock();
    for mut user in batch.users {
        let full_name = user.full_name.take();
        let Some(username) = user.username() else {
            // The documented shape: the reason where the name would be.
            invalid_users.push(Invalid::Unnamed {
                full_name: "Missing Username",
            });
            continue;
        };
        // Earlier entries are created first, so a name repeated within the
        // batch is taken by the time its second entry comes.
        match state.create(username, full_name) {
            Ok(_) => created += 1,
            Err(Taken) => invalid_users.push(Invalid::Named {
                username: username.to_owned(),
            }),
        }
    }
    drop(state);
    if created == 0 {
        return message(StatusCode::BAD_REQUEST, "No valid users provided");
    }
    Json(Answer {
        message: "success",
        invalid_users,
    })
    .into_response()
}

async fn get_user(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let state = shared.lock();
    match state.users.find(&id) {
        Some(user) => Json(user).into_response(),
        None => not_found(),
    }
}

async fn update_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(update) = serde_json::from_slice::<WireUpdate>(&body) else {
        return bad_body();
    };
    let mut state = shared.lock();
    let duplicate_status = state.faults.duplicate_status;
    match state.update(&id, update) {
        Ok(user) => Json(user).into_response(),
        Err(UpdateRefusal::NotFound) => not_found(),
        Err(UpdateRefusal::BlankUsername) => {
            message(StatusCode::BAD_REQUEST, "username cannot be blank")
        }
        Err(UpdateRefusal::RenameRefused) => message(
            StatusCode::BAD_REQUEST,
            "username cannot be changed after creation",
        ),
        Err(UpdateRefusal::Taken) => message(duplicate_status, USERNAME_TAKEN),
    }
}

pub(crate) async fn delete_user(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    if shared.lock().delete(&id) {
        Json(WireSuccess { success: true }).into_response()
    } else {
        not_found()
    }
}

pub(crate) async fn user_token_route(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    #[derive(Serialize)]
    struct Token {
        token: String,
    }
    let mut state = shared.lock();
    if !state.users.by_id.contains_key(&id) {
        return not_found();
    }
    let token = user_token(&mut state.id_rng, &id);
    Json(Token { token }).into_response()
}

async fn delete_logs(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if shared.lock().delete_logs(&id) {
        message(StatusCode::OK, "Success")
    } else {
        not_found()
    }
}

async fn unknown_route() -> Response {
    message(StatusCode::NOT_FOUND, "No such route")
}

async fn admin_stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(&shared.lock().stats).into_response()
}

async fn admin_users(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().users.ordered()).into_response()
}

async fn admin_insert_user(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    struct Seed {
        username: String,
        #[serde(rename = "fullName", default)]
        full_name: Option<String>,
        /// When the user was made, in seconds since the epoch (now when
        /// absent): the time its id carries.
        #[serde(rename = "createdAt", default)]
        created_at: Option<u64>,
    }
    let Ok(seed) = serde_json::from_slice::<Seed>(&body) else {
        return message(
            StatusCode::BAD_REQUEST,
            r#"expected {"username": "...", "fullName": "...", "createdAt": <seconds since the epoch>}"#,
        );
    };
    let id = shared
        .lock()
        .seed_user(&seed.username, seed.full_name, seed.created_at);
    Json(WireCreated { user_id: &id }).into_response()
}

async fn admin_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let update = match serde_json::from_slice::<FaultUpdate>(&body) {
        Ok(update) => update,
        Err(e) => {
            return message(
                StatusCode::BAD_REQUEST,
                &format!("invalid fault update: {e}"),
            );
        }
    };
    match shared.try_update_faults(&update) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => message(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

async fn admin_reset(State(shared): State<Arc<Shared>>) -> Response {
    let mut state = shared.lock();
    state.users = Directory::default();
    state.workflow_logs.clear();
    state.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

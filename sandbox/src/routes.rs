//! Route templates, as keys of [`SandboxStats::requests`]. They carry no
//! user data.
//!
//! [`SandboxStats::requests`]: crate::SandboxStats::requests

use axum::http::Method;

pub const CREATE: &str = "POST /users/";
pub const LIST: &str = "GET /users";
pub const BATCH: &str = "POST /users/batch";
pub const GET: &str = "GET /users/{id}";
pub const UPDATE: &str = "PUT /users/{id}";
pub const DELETE: &str = "DELETE /users/{id}";
pub const TOKEN: &str = "GET /users/{id}/token";
pub const DELETE_LOGS: &str = "DELETE /users/{id}/logs";
/// Any request that matched no API route (unknown path or method).
pub const OTHER: &str = "other";

/// The template of a request, from its method and matched axum path.
pub(crate) fn template(method: &Method, matched: Option<&str>) -> &'static str {
    match (method.as_str(), matched.unwrap_or("")) {
        ("POST", "/users/") => CREATE,
        ("GET", "/users") => LIST,
        ("POST", "/users/batch") => BATCH,
        ("GET", "/users/{id}") => GET,
        ("PUT", "/users/{id}") => UPDATE,
        ("DELETE", "/users/{id}") => DELETE,
        ("GET", "/users/{id}/token") => TOKEN,
        ("DELETE", "/users/{id}/logs") => DELETE_LOGS,
        _ => OTHER,
    }
}

/// Routes that change state, and so may be cut after applying it.
pub(crate) fn is_mutating(template: &str) -> bool {
    matches!(template, CREATE | BATCH | UPDATE | DELETE | DELETE_LOGS)
}

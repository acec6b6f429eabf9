//! Route templates, as keys of [`SandboxStats::requests`]: each names a
//! call as 2025-09 spells it, whichever version's path it came by. They
//! carry no user data.
//!
//! [`SandboxStats::requests`]: crate::SandboxStats::requests

use axum::http::Method;

use crate::Version;

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

/// The template of a request to `version`, from its method and matched
/// axum path (with or without the version's prefix). Every version's
/// routes are keyed by the call they make, as 2025-09 spells it: Forge's
/// `PATCH /forge/2021-12/user/{id}` counts as [`UPDATE`], with its version
/// in [`SandboxStats::versions`](crate::SandboxStats::versions).
pub(crate) fn template(version: Version, method: &Method, matched: Option<&str>) -> &'static str {
    let matched = matched.unwrap_or("");
    let path = matched.strip_prefix(version.prefix()).unwrap_or(matched);
    match version {
        Version::V2021_12 => match (method.as_str(), path) {
            ("POST", "/user") => CREATE,
            ("GET", "/user") => LIST,
            ("GET", "/user/{id}") => GET,
            ("PATCH", "/user/{id}") => UPDATE,
            ("DELETE", "/user/{id}") => DELETE,
            ("GET", "/user/{id}/token") => TOKEN,
            _ => OTHER,
        },
        Version::V2025_09 | Version::V2024_03 | Version::V2023_12 => {
            match (method.as_str(), path) {
                ("POST", "/users/") => CREATE,
                // The versions in the path create without the slash too.
                ("POST", "/users") if version != Version::V2025_09 => CREATE,
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
    }
}

/// Routes that change state, and so may be cut after applying it.
pub(crate) fn is_mutating(template: &str) -> bool {
    matches!(template, CREATE | BATCH | UPDATE | DELETE | DELETE_LOGS)
}

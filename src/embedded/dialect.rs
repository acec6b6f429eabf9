//! The versions of the Embedded API: how each spells its routes and headers.
//!
//! The client names a route ([`Route`]) and leaves its spelling to a
//! [`Dialect`], so speaking another version of the API is one more adapter
//! here, not a change to the calls.

use std::sync::Arc;

use reqwest::RequestBuilder;
use url::Url;

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
}

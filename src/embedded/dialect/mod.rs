//! The versions of the Embedded API: how each spells a call (route, method,
//! headers, the JSON it sends) and reads its answer.
//!
//! The client names a [`Call`] in the crate's own types and leaves the rest
//! to a [`Dialect`]; what a version lacks it says in its [`Offers`], and
//! the client makes up for it the same way whatever the version (see
//! `client.rs`). Speaking another version is one more adapter here, not a
//! change to the calls or to anything above the client.
//!
//! - `users_api.rs`: 2025-09, 2024-03 and 2023-12: one set of shapes, the
//!   version in a header or in the path;
//! - `forge.rs`: 2021-12 ("Forge"): its own routes and shapes, users named
//!   by their email.

mod forge;
mod users_api;

use std::sync::Arc;

use reqwest::{Method, RequestBuilder};
use secrecy::SecretString;
use url::Url;

use super::error::ApiError;
use super::users::{BatchOutcome, EmbeddedUser, NewUser, UserRef, UserUpdate};
use super::wire::{WireCreated, WireToken, malformed, parse};
use crate::config::ApiVersion;
use crate::domain::EmbeddedUserId;

pub use forge::Forge;
pub use users_api::UsersApi;

/// One call of the client, independent of how a version spells it.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    Create(&'a NewUser),
    /// At most `MAX_BATCH` users; only where [`Offers::batch_create`].
    CreateBatch(&'a [NewUser]),
    List,
    /// A user by id, or by username where [`Offers::lookup_by_username`].
    Get(UserRef<'a>),
    Update(&'a EmbeddedUserId, &'a UserUpdate),
    Delete(&'a EmbeddedUserId),
    Token(&'a EmbeddedUserId),
    /// Only where [`Offers::delete_logs`].
    DeleteLogs(&'a EmbeddedUserId),
}

/// A call as one version spells it.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    /// The route with no user data in it, for metrics (`/users/{id}`).
    pub template: &'static str,
    pub body: Option<serde_json::Value>,
}

/// What a version offers beyond the calls every version has (create, list,
/// get by id, update, delete, token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offers {
    /// `GET` of a user by its username. Without it, a lookup by username
    /// reads the list of users.
    pub lookup_by_username: bool,
    /// `POST /users/batch`. Without it, the backfill creates one user at a
    /// time.
    pub batch_create: bool,
    /// `DELETE /users/{id}/logs`. Without it, an erasure deletes the user
    /// only, and its record says why the logs were not deleted.
    pub delete_logs: bool,
}

/// How one version of the API spells its calls and reads its answers.
pub trait Dialect: Send + Sync + std::fmt::Debug {
    /// The version this dialect speaks.
    fn version(&self) -> ApiVersion;
    fn offers(&self) -> Offers;
    /// The request for `call` under `base`; `None` for a call the version
    /// does not offer (the client never sends it).
    fn request(&self, base: &Url, call: &Call<'_>) -> Option<Request>;
    /// Adds the version's own headers to a request.
    fn decorate(&self, request: RequestBuilder) -> RequestBuilder {
        request
    }
    /// The id in the answer to a create: `{userId}` in every version so
    /// far.
    fn read_created(&self, body: &[u8]) -> Result<EmbeddedUserId, ApiError> {
        let created: WireCreated = parse(body)?;
        EmbeddedUserId::parse(&created.user_id).map_err(|_| malformed())
    }
    /// A user: the answer to a get, and each element of a list's `data`.
    fn read_user(&self, body: &[u8]) -> Result<EmbeddedUser, ApiError>;
    /// The answer to an update of `update` on `id`.
    fn read_updated(
        &self,
        body: &[u8],
        id: &EmbeddedUserId,
        update: &UserUpdate,
    ) -> Result<EmbeddedUser, ApiError>;
    /// The answer to a batch create.
    fn read_batch(&self, body: &[u8]) -> Result<BatchOutcome, ApiError>;
    /// The token in the answer to a token call: `{token}` in every version
    /// so far.
    fn read_token(&self, body: &[u8]) -> Result<SecretString, ApiError> {
        let wire: WireToken = parse(body)?;
        Ok(SecretString::from(wire.token))
    }
}

/// The dialect of a configured version: every [`ApiVersion`] has one.
pub fn dialect_for(version: ApiVersion) -> Arc<dyn Dialect> {
    match version {
        ApiVersion::V2025_09 => Arc::new(UsersApi::V2025_09),
        ApiVersion::V2024_03 => Arc::new(UsersApi::V2024_03),
        ApiVersion::V2023_12 => Arc::new(UsersApi::V2023_12),
        ApiVersion::V2021_12 => Arc::new(Forge),
    }
}

/// `base` with `segments` appended, each percent-encoded as one segment (a
/// `/` or `?` in an id cannot change the route).
fn under(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // A base URL always has path segments: `Settings` refuses
    // cannot-be-a-base URLs, and so does `EmbeddedClient::new`.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_version_has_its_dialect() {
        for version in ApiVersion::ALL {
            assert_eq!(dialect_for(version).version(), version);
        }
    }

    #[test]
    fn segments_are_encoded_one_by_one() {
        let base = Url::parse("https://production.runalloy.com").unwrap();
        assert_eq!(
            under(&base, &["users", "a/b?c"]).as_str(),
            "https://production.runalloy.com/users/a%2Fb%3Fc"
        );
        let nested = Url::parse("http://127.0.0.1:8787/prefix/").unwrap();
        assert_eq!(
            under(&nested, &["users", ""]).as_str(),
            "http://127.0.0.1:8787/prefix/users/"
        );
    }
}
